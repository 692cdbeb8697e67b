"""The monitor: its Python API over every storage, and the ``jr`` command as users run it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor

from jobreactor.model import Job, Status
from jobreactor.monitor import Monitor, parse_status
from jobreactor.storage import IJobStorage, SQLiteStorage

from .conftest import WAIT, RedisServer, free_port
from .test_behaviour import full_job, wait

JR = str(Path(sys.executable).parent / "jr")


def sample_jobs() -> dict[str, list[Job]]:
    return {
        "node-1": [
            full_job(id="q-late", status=Status.QUEUED, run_at=2_000_000_000.0),
            full_job(id="q-soon", status=Status.QUEUED, run_at=1_000_000_000.0),
            full_job(id="e-1", status=Status.ERROR, run_at=1_500_000_000.0),
        ],
        "node-2": [full_job(id="f-1", status=Status.FAILED, last_error="x" * 100)],
    }


async def fill(storage: IJobStorage) -> None:
    for node, jobs in sample_jobs().items():
        for job in jobs:
            await wait(storage.save(node, job))


# -- the Python API ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_monitor_lists_shows_and_counts(storage: IJobStorage) -> None:
    await fill(storage)
    monitor = Monitor(storage)
    assert await wait(monitor.nodes()) == ["node-1", "node-2"]
    listed = await wait(monitor.jobs_for("node-1"))
    assert [job.id for job in listed] == ["q-soon", "e-1", "q-late"]  # due first
    assert [job.id for job in await wait(monitor.jobs_for("node-1", "queued"))] == [
        "q-soon",
        "q-late",
    ]
    by_two = await wait(monitor.jobs_for("node-1", [Status.ERROR, "failed"]))
    assert [job.id for job in by_two] == ["e-1"]
    assert (await wait(monitor.load("node-2", "f-1"))) == sample_jobs()["node-2"][0]
    assert await wait(monitor.load("node-2", "q-soon")) is None
    assert await wait(monitor.counts()) == {
        "node-1": {Status.QUEUED: 2, Status.ERROR: 1},
        "node-2": {Status.FAILED: 1},
    }


@pytest_twisted.ensureDeferred
async def test_monitor_destroys(storage: IJobStorage) -> None:
    await fill(storage)
    monitor = Monitor(storage)
    assert await wait(monitor.destroy("node-1", "e-1")) is True
    assert await wait(monitor.destroy("node-1", "e-1")) is False
    assert await wait(storage.load("node-1", "e-1")) is None
    assert await wait(monitor.destroy_all_jobs_for("node-1")) == 2
    assert await wait(monitor.destroy_all_jobs_for("node-1")) == 0
    assert await wait(monitor.nodes()) == ["node-2"]
    assert await wait(monitor.counts()) == {"node-2": {Status.FAILED: 1}}


def test_parse_status() -> None:
    assert parse_status("in progress") is Status.IN_PROGRESS
    assert parse_status("IN_PROGRESS") is Status.IN_PROGRESS
    assert parse_status("in-progress") is Status.IN_PROGRESS
    assert parse_status(Status.QUEUED) is Status.QUEUED
    with pytest.raises(ValueError, match="statuses are 'new', 'queued'"):
        parse_status("done")


# -- the jr command --------------------------------------------------------------------------


@attrs.define
class Jr:
    """Runs ``jr --storage URL ...`` as a separate process."""

    url: str

    def __call__(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return run_jr("--storage", self.url, *args, stdin=stdin)


def run_jr(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "JR_STORAGE"}
    return subprocess.run(
        [JR, *args],
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


def one_line_error(done: subprocess.CompletedProcess[str], status: int, text: str) -> None:
    assert done.returncode == status, done
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("jr: error: ") and text in lines[0], lines[0]


@pytest_twisted.async_yield_fixture(params=["sqlite", "redis"])
async def filled(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    """(storage, Jr) for an opened storage holding sample_jobs(), and the jr bound to it."""
    storage: Any
    if request.param == "sqlite":
        storage = SQLiteStorage(str(tmp_path / "jobs.db"))
        url = f"sqlite:{storage.path}"
    else:
        server: RedisServer = request.getfixturevalue("shared_redis")
        storage = server.storage()
        url = f"{server.url}?prefix={storage.prefix}&timeout=2"
    await wait(storage.open())
    await fill(storage)
    yield storage, Jr(url)
    await storage.close().addTimeout(WAIT, reactor)


def test_help_lists_the_commands() -> None:
    done = run_jr("--help")
    assert done.returncode == 0
    for command in ("list", "show", "destroy", "destroy-all", "counts", "--json", "--storage"):
        assert command in done.stdout


@pytest_twisted.ensureDeferred
async def test_jr_list(filled: Any) -> None:
    _, jr = filled
    done = jr("list", "node-1")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "NAME", "STATUS", "ATTEMPT"]
    assert [line.split()[0] for line in lines[1:]] == ["q-soon", "e-1", "q-late"]
    assert "2001-09-09T01:46:40Z" in lines[1]  # run_at as UTC time

    done = jr("--json", "list", "node-1", "--status", "queued")
    assert done.returncode == 0, done.stderr
    listed = [Job.from_wire(data) for data in json.loads(done.stdout)]
    assert listed == [job for job in sample_jobs()["node-1"] if job.status is Status.QUEUED][::-1]

    done = jr("list", "node-1", "--status", "failed")
    assert (done.returncode, done.stdout) == (0, "node node-1 has no jobs in status failed\n")
    assert jr("--json", "list", "nobody").stdout.strip() == "[]"


@pytest_twisted.ensureDeferred
async def test_jr_show(filled: Any) -> None:
    _, jr = filled
    job = sample_jobs()["node-1"][2]
    done = jr("show", "node-1", job.id)
    assert done.returncode == 0, done.stderr
    fields = dict(line.split(None, 1) for line in done.stdout.splitlines())
    assert fields["id"] == job.id and fields["status"] == "error"
    assert json.loads(fields["args"]) == job.args
    assert fields["run_at"].startswith("2017-07-14T02:40:00Z")

    done = jr("--json", "show", "node-1", job.id)
    assert Job.from_wire(json.loads(done.stdout)) == job

    one_line_error(jr("show", "node-2", job.id), 1, "node node-2 has no job e-1")


@pytest_twisted.ensureDeferred
async def test_jr_counts(filled: Any) -> None:
    _, jr = filled
    done = jr("counts")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["NODE", "QUEUED", "ERROR", "FAILED", "TOTAL"]
    assert lines[1].split() == ["node-1", "2", "1", "0", "3"]
    assert lines[2].split() == ["node-2", "0", "0", "1", "1"]
    done = jr("--json", "counts")
    assert json.loads(done.stdout) == {
        "node-1": {"queued": 2, "error": 1},
        "node-2": {"failed": 1},
    }


@pytest_twisted.ensureDeferred
async def test_jr_destroy(filled: Any) -> None:
    storage, jr = filled
    done = jr("destroy", "node-1", "e-1")
    assert (done.returncode, done.stdout) == (0, "destroyed job e-1 of node node-1\n")
    assert await wait(storage.load("node-1", "e-1")) is None
    one_line_error(jr("destroy", "node-1", "e-1"), 1, "node node-1 has no job e-1")
    done = jr("--json", "destroy", "node-1", "q-soon")
    assert json.loads(done.stdout) == {"node": "node-1", "id": "q-soon", "destroyed": True}


@pytest_twisted.ensureDeferred
async def test_jr_destroy_all_asks_first(filled: Any) -> None:
    storage, jr = filled
    for refusal in (None, "n\n", "\n", "whatever\n"):
        done = jr("destroy-all", "node-1", stdin=refusal)
        assert done.returncode == 1, done
        assert "Destroy all 3 job(s) of node node-1? [y/N]" in done.stderr
        assert "nothing destroyed" in done.stderr
        assert len(await wait(storage.jobs_for("node-1"))) == 3

    done = jr("destroy-all", "node-1", stdin="y\n")
    assert (done.returncode, done.stdout) == (0, "destroyed 3 job(s) of node node-1\n")
    assert await wait(storage.jobs_for("node-1")) == []

    done = jr("--json", "destroy-all", "node-2", "--yes")
    assert done.returncode == 0 and done.stderr == ""
    assert json.loads(done.stdout) == {"node": "node-2", "destroyed": 1}
    assert await wait(storage.nodes()) == []
    assert jr("counts").stdout == "no jobs stored\n"


def test_jr_storage_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "none-yet.db"
    env = dict(os.environ, JR_STORAGE=f"sqlite:{path}")
    done = subprocess.run(
        [JR, "counts"], capture_output=True, text=True, timeout=30, env=env, check=False
    )
    one_line_error(done, 1, f"no SQLite database at {path}")
    assert not path.exists()  # the monitor never creates a database


@pytest.mark.parametrize(
    ("args", "status", "text"),
    [
        (("--storage", "bogus://x", "counts"), 2, "storage 'bogus://x' is not understood"),
        (("--storage", "redis://h/x", "counts"), 2, "the database must be a number"),
        (("--storage", "sqlite:", "counts"), 2, "names no file"),
        (("--storage", "sqlite:/no/such/dir/jobs.db", "counts"), 1, "no SQLite database at"),
    ],
)
def test_jr_bad_storage_is_one_line(args: tuple[str, ...], status: int, text: str) -> None:
    one_line_error(run_jr(*args), status, text)


def test_jr_unreachable_redis_is_one_line() -> None:
    # Nothing listens on the port: said at once, not after the 20 s timeout.
    started = time.monotonic()
    done = run_jr("--storage", f"redis://127.0.0.1:{free_port()}/0?timeout=20", "counts")
    one_line_error(done, 1, "connecting: connection refused")
    assert time.monotonic() - started < 10


def test_jr_silent_redis_is_one_line() -> None:
    """A server that accepts the connection and never answers: the timeout ends the wait."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        started = time.monotonic()
        done = run_jr("--storage", f"redis://127.0.0.1:{port}/0?timeout=1", "counts")
    one_line_error(done, 1, "connecting: no answer within 1 s")
    assert time.monotonic() - started < 10


@pytest_twisted.ensureDeferred
async def test_jr_options_go_before_or_after_the_command(filled: Any) -> None:
    _, jr = filled
    counts = {"node-1": {"queued": 2, "error": 1}, "node-2": {"failed": 1}}
    for args in (
        ("--storage", jr.url, "--json", "counts"),
        ("--storage", jr.url, "counts", "--json"),
        ("counts", "--storage", jr.url, "--json"),
        ("--json", "counts", "--storage", jr.url),
        # Given on both sides, the one after the command wins.
        ("--storage", "sqlite:/no/such/jobs.db", "counts", "--storage", jr.url, "--json"),
    ):
        done = run_jr(*args)
        assert done.returncode == 0, (args, done.stderr)
        assert json.loads(done.stdout) == counts, args
    listed = run_jr("list", "node-2", "--json", "--storage", jr.url, "--status", "failed")
    assert [job["id"] for job in json.loads(listed.stdout)] == ["f-1"]
    shown = run_jr("show", "--storage", jr.url, "node-2", "f-1", "--json")
    assert json.loads(shown.stdout)["id"] == "f-1"
    destroyed = run_jr("destroy", "node-2", "nope", "--json", "--storage", jr.url)
    assert destroyed.returncode == 1
    assert json.loads(destroyed.stdout) == {"node": "node-2", "id": "nope", "destroyed": False}
    gone = run_jr("destroy-all", "node-2", "--yes", "--json", "--storage", jr.url)
    assert json.loads(gone.stdout) == {"node": "node-2", "destroyed": 1}
    done = run_jr("counts", "--json")  # no storage anywhere: a usage error
    assert done.returncode == 2 and "--storage" in done.stderr


@pytest_twisted.ensureDeferred
async def test_jr_shows_times_no_date_can_hold(filled: Any) -> None:
    """``enqueue(after=1e12)`` is valid: such a run_at is shown as the number it is."""
    storage, jr = filled
    far = full_job(id="far", status=Status.QUEUED, run_at=time.time() + 1e12)
    early = full_job(id="early", status=Status.QUEUED, run_at=-1e13)
    for job in (far, early):
        await wait(storage.save("node-3", job))
    done = jr("list", "node-3")
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines()[1:]}
    assert repr(far.run_at) in rows["far"] and repr(early.run_at) in rows["early"]

    done = jr("show", "node-3", "far")
    assert done.returncode == 0, done.stderr
    fields = dict(line.split(None, 1) for line in done.stdout.splitlines())
    assert fields["run_at"] == repr(far.run_at)
    assert Job.from_wire(json.loads(jr("--json", "show", "node-3", "far").stdout)) == far


def test_jr_usage_errors() -> None:
    done = run_jr("counts")
    assert done.returncode == 2 and "--storage" in done.stderr
    done = run_jr("--storage", "memory", "list", "n", "--status", "done")
    assert done.returncode == 2 and "not a job status" in done.stderr
    done = run_jr("--storage", "sqlite:/x.db", "list", "n", "--status", "done")
    assert done.returncode == 2 and "not a job status" in done.stderr


@pytest.mark.parametrize("command", [("counts",), ("list",), ("show", "n", "1")])
def test_jr_explains_that_memory_storage_cannot_be_seen(command: tuple[str, ...]) -> None:
    one_line_error(
        run_jr("--storage", "memory", *command),
        2,
        "memory storage lives inside each node's process and ends with it, so jr cannot see "
        "it; to inspect jobs, run the nodes with --storage sqlite:/path/jobs.db or "
        "redis://host:6379/0 and give jr the same URL",
    )


@pytest_twisted.ensureDeferred
async def test_jr_list_without_a_node_lists_every_node(filled: Any) -> None:
    _, jr = filled
    done = jr("list")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:3] == ["NODE", "ID", "NAME"]
    assert [line.split()[:2] for line in lines[1:]] == [
        ["node-1", "q-soon"],
        ["node-1", "e-1"],
        ["node-1", "q-late"],
        ["node-2", "f-1"],
    ]
    listed = json.loads(jr("list", "--json", "--status", "failed").stdout)
    assert [(job["stored_on"], job["id"]) for job in listed] == [("node-2", "f-1")]
    done = jr("list", "--status", "new")
    assert (done.returncode, done.stdout) == (0, "no jobs stored in status new\n")


@pytest_twisted.ensureDeferred
async def test_jr_show_with_only_an_id_finds_the_job_on_its_node(filled: Any) -> None:
    _, jr = filled
    done = jr("show", "f-1")
    assert done.returncode == 0, done.stderr
    fields = dict(line.split(None, 1) for line in done.stdout.splitlines())
    assert (fields["stored_on"], fields["id"], fields["status"]) == ("node-2", "f-1", "failed")
    shown = json.loads(jr("show", "e-1", "--json").stdout)
    assert (shown["stored_on"], shown["id"]) == ("node-1", "e-1")
    one_line_error(
        jr("show", "nope"), 1, "no node has a job nope (looked at 2 node(s): node-1, node-2)"
    )


@pytest_twisted.ensureDeferred
async def test_jr_escapes_terminal_codes_in_ids_names_and_errors(tmp_path: Path) -> None:
    """Case 11 of issue 12: a job id or name is whatever its sender chose; ``jr`` must not
    hand escape codes to the terminal."""
    storage = SQLiteStorage(str(tmp_path / "jobs.db"))
    await wait(storage.open())
    hostile = full_job(
        id="evil\x1b[2J", name="\x1b]0;pwned\x07", status=Status.FAILED, last_error="a\rb\x9b"
    )
    await wait(storage.save("node-1", hostile))
    await storage.close().addTimeout(WAIT, reactor)
    jr = Jr(f"sqlite:{storage.path}")
    for args in (["list", "node-1"], ["show", "node-1", hostile.id]):
        done = jr(*args)
        assert done.returncode == 0, done.stderr
        assert not any((ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) < 0xA0 for c in done.stdout)
        assert "evil\\x1b[2J" in done.stdout and "\\x1b]0;pwned\\x07" in done.stdout
    done = jr("--json", "list", "node-1")
    assert json.loads(done.stdout)[0]["id"] == hostile.id
    assert "\x1b" not in done.stdout and "\x9b" not in done.stdout
