"""One behaviour suite that every storage passes: memory, SQLite and Redis alike."""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults

from jobreactor.errors import ConfigError
from jobreactor.model import Job, Status
from jobreactor.storage import IJobStorage, MemoryStorage, SQLiteStorage, StorageError, open_storage

from .conftest import WAIT


async def wait(deferred: Deferred[Any]) -> Any:
    return await deferred.addTimeout(WAIT, reactor)


def full_job(**changes: Any) -> Job:
    """A job with every field set to something other than its default."""
    job = Job(
        id=str(uuid.uuid4()),
        name="mail.send",
        args={
            "to": "ada@example.com",
            "count": 3,
            "ratio": 1.5,
            "whole_float": 2.0,
            "flag": True,
            "nothing": None,
            "numeric_string": "42",
            "float_string": "1.50",
            "unicode": "żółw ✓ 猫",
            "nested": {"list": [1, "2", 3.0, False, None], "empty": {}},
        },
        status=Status.ERROR,
        attempt=2,
        run=3,
        run_at=1_700_000_000.25,
        period=60.0,
        defer=True,
        node="node-1",
        not_node=("node-2", "node-3"),
        max_attempt=5,
        retry_delay=2.5,
        timeout=30.0,
        failed_at=1_700_000_001.5,
        last_error="ValueError: boom 1",
        last_error_type="ValueError",
        make_after=12.0,
        distributor="tcp:127.0.0.1:5000",
        enqueued_at=1_699_999_999.125,
        priority=7,
        unique_key="nightly-report",
        unique_for=600.0,
        cron="*/15 9-17 * * mon-fri",
        timezone="Europe/Berlin",
        missed="run_once",
        depends_on=("a-job", "b-job"),
        on_dependency_failure="run",
    )
    return attrs.evolve(job, **changes)


def test_full_job_sets_every_field() -> None:
    """Guards the round-trip test: a field added to Job must be set in full_job too."""
    defaults = Job(id="x", name="y", args={})
    job = full_job()
    unset = [f.name for f in attrs.fields(Job) if getattr(job, f.name) == getattr(defaults, f.name)]
    assert unset == []


def assert_same(loaded: Job | None, job: Job) -> None:
    assert loaded == job
    assert loaded is not None
    for field in attrs.fields(Job):
        value, expected = getattr(loaded, field.name), getattr(job, field.name)
        assert type(value) is type(expected), field.name
    # repr tells 42 from "42" and 2.0 from 2 all the way down, which == does not.
    assert repr(loaded.args) == repr(job.args)


@pytest_twisted.ensureDeferred
async def test_round_trip_keeps_every_field_and_type(storage: IJobStorage) -> None:
    job = full_job()
    await wait(storage.save("node-1", job))
    assert_same(await wait(storage.load("node-1", job.id)), job)
    [listed] = await wait(storage.jobs_for("node-1"))
    assert_same(listed, job)
    [by_status] = await wait(storage.jobs_for("node-1", [Status.ERROR]))
    assert_same(by_status, job)


@pytest_twisted.ensureDeferred
async def test_round_trip_of_a_minimal_job(storage: IJobStorage) -> None:
    job = Job(id="minimal", name="noop", args={})
    await wait(storage.save("node-1", job))
    assert_same(await wait(storage.load("node-1", "minimal")), job)


@pytest_twisted.ensureDeferred
async def test_every_status_round_trips(storage: IJobStorage) -> None:
    jobs = [full_job(id=f"job-{status.name}", status=status) for status in Status]
    for job in jobs:
        await wait(storage.save("node-1", job))
    for job in jobs:
        assert_same(await wait(storage.load("node-1", job.id)), job)
        assert await wait(storage.jobs_for("node-1", {job.status})) == [job]


@pytest_twisted.ensureDeferred
async def test_load_of_a_missing_job_is_none(storage: IJobStorage) -> None:
    assert await wait(storage.load("node-1", "nope")) is None
    await wait(storage.save("node-1", full_job(id="here")))
    assert await wait(storage.load("node-2", "here")) is None


@pytest_twisted.ensureDeferred
async def test_nodes_do_not_see_each_others_jobs(storage: IJobStorage) -> None:
    # The same id on two nodes, and node names that embed another's key text.
    names = ["node-1", "node-2", "node-1:jobs", "node-1:status:queued", "nœud ✓"]
    for index, node in enumerate(names):
        await wait(storage.save(node, full_job(id="same", status=Status.QUEUED, attempt=index)))
        await wait(storage.save(node, full_job(id=f"own-{index}", status=Status.QUEUED)))
    for index, node in enumerate(names):
        jobs = await wait(storage.jobs_for(node))
        assert sorted(job.id for job in jobs) == sorted(["same", f"own-{index}"])
        queued = await wait(storage.jobs_for(node, [Status.QUEUED]))
        assert len(queued) == 2
        loaded = await wait(storage.load(node, "same"))
        assert loaded is not None and loaded.attempt == index

    await wait(storage.remove("node-1", "same"))
    assert await wait(storage.load("node-1", "same")) is None
    assert (await wait(storage.load("node-2", "same"))).attempt == 1
    assert len(await wait(storage.jobs_for("node-1:jobs"))) == 2


@pytest_twisted.ensureDeferred
async def test_jobs_for_filters_by_status(storage: IJobStorage) -> None:
    statuses = [Status.QUEUED, Status.QUEUED, Status.IN_PROGRESS, Status.ERROR, Status.COMPLETE]
    for index, status in enumerate(statuses):
        await wait(storage.save("node-1", full_job(id=f"job-{index}", status=status)))

    def ids(jobs: list[Job]) -> list[str]:
        return sorted(job.id for job in jobs)

    assert ids(await wait(storage.jobs_for("node-1"))) == [f"job-{i}" for i in range(5)]
    assert ids(await wait(storage.jobs_for("node-1", None))) == [f"job-{i}" for i in range(5)]
    assert ids(await wait(storage.jobs_for("node-1", [Status.QUEUED]))) == ["job-0", "job-1"]
    unfinished = {Status.QUEUED, Status.IN_PROGRESS, Status.ERROR}
    assert ids(await wait(storage.jobs_for("node-1", unfinished))) == [
        "job-0",
        "job-1",
        "job-2",
        "job-3",
    ]
    assert await wait(storage.jobs_for("node-1", [Status.FAILED])) == []
    assert await wait(storage.jobs_for("node-1", [])) == []
    assert await wait(storage.jobs_for("nobody")) == []
    assert await wait(storage.jobs_for("nobody", [Status.QUEUED])) == []


@pytest_twisted.ensureDeferred
async def test_save_overwrites_and_moves_the_status_index(storage: IJobStorage) -> None:
    job = full_job(status=Status.QUEUED, attempt=0)
    await wait(storage.save("node-1", job))
    running = attrs.evolve(job, status=Status.IN_PROGRESS, attempt=1, args={"step": 2})
    await wait(storage.save("node-1", running))
    assert_same(await wait(storage.load("node-1", job.id)), running)
    assert await wait(storage.jobs_for("node-1")) == [running]
    assert await wait(storage.jobs_for("node-1", [Status.QUEUED])) == []
    assert await wait(storage.jobs_for("node-1", [Status.IN_PROGRESS])) == [running]


@pytest_twisted.ensureDeferred
async def test_saves_issued_together_land_in_order(storage: IJobStorage) -> None:
    """A node does not wait between two saves of one job: the later one must win."""
    job = full_job(status=Status.QUEUED)
    versions = [
        attrs.evolve(job, attempt=n, status=Status.IN_PROGRESS if n % 2 else Status.ERROR)
        for n in range(1, 31)
    ]
    await wait(gatherResults([storage.save("node-1", v) for v in versions]))
    assert await wait(storage.load("node-1", job.id)) == versions[-1]
    assert await wait(storage.jobs_for("node-1", [Status.ERROR])) == [versions[-1]]
    assert await wait(storage.jobs_for("node-1", [Status.IN_PROGRESS])) == []


@pytest_twisted.ensureDeferred
async def test_removing_a_missing_job_is_fine(storage: IJobStorage) -> None:
    await wait(storage.remove("node-1", "never-saved"))
    job = full_job()
    await wait(storage.save("node-1", job))
    await wait(storage.remove("node-1", job.id))
    await wait(storage.remove("node-1", job.id))
    assert await wait(storage.load("node-1", job.id)) is None
    assert await wait(storage.jobs_for("node-1")) == []
    assert await wait(storage.jobs_for("node-1", [job.status])) == []


@pytest_twisted.ensureDeferred
async def test_nodes_lists_the_nodes_that_have_jobs(storage: IJobStorage) -> None:
    assert await wait(storage.nodes()) == []
    await wait(storage.save("b-node", full_job(id="1")))
    await wait(storage.save("a-node", full_job(id="2")))
    await wait(storage.save("a-node", full_job(id="3")))
    assert await wait(storage.nodes()) == ["a-node", "b-node"]
    await wait(storage.remove("a-node", "2"))
    assert await wait(storage.nodes()) == ["a-node", "b-node"]
    await wait(storage.remove("a-node", "3"))
    assert await wait(storage.nodes()) == ["b-node"]


@pytest_twisted.ensureDeferred
async def test_many_jobs(storage: IJobStorage) -> None:
    jobs = [full_job(id=f"job-{n:04}", status=Status.QUEUED) for n in range(500)]
    await wait(gatherResults([storage.save("node-1", job) for job in jobs]))
    await wait(storage.save("node-1", full_job(id="done", status=Status.COMPLETE)))
    queued = await wait(storage.jobs_for("node-1", [Status.QUEUED]))
    assert sorted(queued, key=lambda job: job.id) == jobs
    assert len(await wait(storage.jobs_for("node-1"))) == 501


# -- choosing a storage by URL -------------------------------------------------------------


def test_open_storage_memory_and_instances() -> None:
    assert isinstance(open_storage("memory"), MemoryStorage)
    assert isinstance(open_storage("memory_storage"), MemoryStorage)
    given = MemoryStorage()
    assert open_storage(given) is given


def test_open_storage_sqlite_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    absolute = open_storage("sqlite:/var/lib/jr/jobs.db")
    assert isinstance(absolute, SQLiteStorage)
    assert (absolute.path, absolute.create, absolute.synchronous) == (
        "/var/lib/jr/jobs.db",
        True,
        "full",
    )
    assert open_storage("sqlite:///var/lib/jr/jobs.db").path == "/var/lib/jr/jobs.db"
    # A relative path is fixed now, from the current directory: a later chdir cannot move it.
    assert open_storage("sqlite:jobs.db").path == str(tmp_path / "jobs.db")
    assert open_storage("sqlite:data/jobs.db").path == str(tmp_path / "data" / "jobs.db")
    assert open_storage("sqlite:jobs.db?synchronous=normal").synchronous == "normal"
    assert open_storage("sqlite:jobs.db", create=False).create is False


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("sqlite:", "names no file"),
        ("sqlite://host/jobs.db", "names a file, not a host ('host')"),
        ("sqlite:jobs.db?mode=ro", "unknown option 'mode'"),
        ("sqlite:jobs.db?synchronous=off", "synchronous must be one of full, normal"),
        ("mysql://localhost/jobs", "is not understood; use 'memory', 'sqlite:"),
        ("jobs.db", "is not understood"),
    ],
)
def test_open_storage_refuses_what_it_cannot_read(spec: str, complaint: str) -> None:
    with pytest.raises(ConfigError) as info:
        open_storage(spec)
    assert complaint in str(info.value)


def test_open_storage_refuses_other_objects() -> None:
    with pytest.raises(ConfigError, match="not 42"):
        open_storage(42)


@pytest_twisted.ensureDeferred
async def test_sqlite_persists_across_reopen_and_is_wal(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    first = SQLiteStorage(str(path))
    await wait(first.open())
    await wait(first.save("node-1", full_job(id="kept")))
    await wait(first.close())
    second = SQLiteStorage(str(path), create=False)
    await wait(second.open())
    try:
        assert await wait(second.load("node-1", "kept")) == full_job(id="kept")
    finally:
        await wait(second.close())
    with contextlib.closing(sqlite3.connect(path)) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        plan = connection.execute(
            "EXPLAIN QUERY PLAN SELECT data FROM jobs WHERE node = ? AND status IN (?, ?)",
            ("node-1", "queued", "error"),
        ).fetchall()
        # An index finds the node's rows (never a scan of the whole table).
        assert "SEARCH jobs USING" in str(plan) and "SCAN" not in str(plan)


@pytest_twisted.ensureDeferred
async def test_sqlite_without_create_refuses_a_missing_file(tmp_path: Path) -> None:
    storage = SQLiteStorage(str(tmp_path / "missing.db"), create=False)
    with pytest.raises(StorageError, match="no SQLite database at"):
        await wait(storage.open())
    assert not (tmp_path / "missing.db").exists()
    with pytest.raises(StorageError, match="not open"):
        await wait(storage.save("node-1", full_job()))


@pytest_twisted.ensureDeferred
async def test_sqlite_in_a_missing_directory_fails_clearly(tmp_path: Path) -> None:
    storage = SQLiteStorage(str(tmp_path / "no" / "such" / "jobs.db"))
    with pytest.raises(ConfigError, match="no directory"):
        await wait(storage.open())
    await wait(storage.close())
