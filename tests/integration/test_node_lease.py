"""Real ``twistd -n jr-node`` processes sharing a name and a storage: one works it, the other
waits and runs nothing; a killed node's replacement on SQLite starts at once; a node the
distributor refuses takes nothing up from its storage."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from jobreactor import Distributor
from jobreactor.model import Job, Status
from jobreactor.storage import SQLiteStorage
from tests.storage.conftest import RedisServer

from .conftest import NodeProcesses, bounded, port_of

pytestmark = pytest.mark.integration

WAITING = "storage of node keeper is in use by another process; waiting for it"


async def until(predicate: Any, seconds: float = 15) -> None:
    for _ in range(int(seconds * 20)):
        if predicate():
            return
        await deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"not true within {seconds} s")


async def pause(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


@pytest.fixture(params=["sqlite", "redis"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:{tmp_path / 'node.db'}"
        return
    server = RedisServer(tmp_path / "redis", appendonly=False)
    server.start()
    yield f"{server.url}?prefix=lease&timeout=2"
    server.stop()


def runs_logged(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


@pytest_twisted.ensureDeferred
async def test_a_second_process_with_the_same_name_and_storage_runs_nothing(
    distributor: Distributor, nodes: NodeProcesses, tmp_path: Path, storage_url: str
) -> None:
    port = port_of(distributor)
    real = nodes.start("keeper", port, "--storage", storage_url)
    await bounded(distributor.when_nodes(names=["keeper"]))
    runs = tmp_path / "runs.txt"
    stored = distributor.enqueue("log_run", {"log": str(runs), "n": 1}, after=3)
    await until(lambda: distributor.nodes()[0].holding == 1)

    nodes.start("keeper", port, "--storage", storage_url)
    await until(lambda: WAITING in nodes.log("keeper"))
    await bounded(stored.deferred)
    await pause(1.0)  # time for a second run, if there were one

    assert runs_logged(runs) == ["1"], "the stored job ran exactly once"
    log = nodes.log("keeper")
    assert log.count(WAITING) == 1, "said once, not every second"
    assert "refused node keeper" not in log, "the waiting process dialled no distributor"
    assert real.poll() is None
    assert [info.name for info in distributor.nodes()] == ["keeper"]


@pytest_twisted.ensureDeferred
async def test_a_node_killed_and_restarted_on_sqlite_takes_its_jobs_up_at_once(
    distributor: Distributor, nodes: NodeProcesses, tmp_path: Path
) -> None:
    storage = f"sqlite:{tmp_path / 'node.db'}"
    port = port_of(distributor)
    first = nodes.start("keeper", port, "--storage", storage)
    await bounded(distributor.when_nodes(names=["keeper"]))
    delayed = distributor.enqueue("stamp", {}, after=3)
    await until(lambda: distributor.nodes()[0].holding == 1)
    first.send_signal(signal.SIGKILL)
    await bounded(deferToThread(first.wait, 10))

    second = nodes.start("keeper", port, "--storage", storage)
    await until(lambda: "took up 1 stored jobs" in nodes.log("keeper"), 5)
    stamped = await bounded(delayed.deferred)

    log = nodes.log("keeper")
    assert "in use by another process" not in log, "the kernel dropped the dead one's lock"
    assert log.index("joined distributor") < log.index("took up 1 stored jobs")
    assert stamped["thread"] == "MainThread"
    assert second.poll() is None


@pytest_twisted.ensureDeferred
async def test_a_refused_node_runs_nothing_from_its_storage(
    distributor: Distributor, nodes: NodeProcesses, tmp_path: Path
) -> None:
    port = port_of(distributor)
    nodes.start("keeper", port, "--storage", f"sqlite:{tmp_path / 'real.db'}")
    await bounded(distributor.when_nodes(names=["keeper"]))
    runs = tmp_path / "runs.txt"
    other = tmp_path / "other.db"
    storage = SQLiteStorage(str(other))
    await storage.open()
    job = Job(
        id="stored-on-the-other",
        name="log_run",
        args={"log": str(runs), "n": 1},
        status=Status.QUEUED,
        distributor=f"tcp:host=127.0.0.1:port={port}",
    )
    await storage.save("keeper", job)
    await storage.close()

    nodes.start("keeper", port, "--storage", f"sqlite:{other}")
    await until(lambda: "refused node keeper" in nodes.log("keeper"))
    await pause(1.0)  # time for the stored job to run, if it were taken up

    assert runs_logged(runs) == []
    storage = SQLiteStorage(str(other))
    await storage.open()
    try:
        kept = await storage.load("keeper", job.id)
    finally:
        await storage.close()
    assert kept is not None and kept.status is Status.QUEUED, "left in storage untouched"


@pytest_twisted.ensureDeferred
async def test_a_node_whose_redis_lease_is_taken_stops_taking_jobs(
    distributor: Distributor, nodes: NodeProcesses, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path / "redis", appendonly=False)
    server.start()
    try:
        url = f"{server.url}?prefix=taken&timeout=2"
        node = nodes.start(
            "keeper", port_of(distributor), "--storage", url,
            "--setting", "storage_lease_seconds=1.5",
        )  # fmt: skip
        await bounded(distributor.when_nodes(names=["keeper"]))
        key = "taken:node:keeper:lease"
        assert server.cli("GET", key).strip().split(":")[1] == str(node.pid)

        server.cli("SET", key, "another-process", "PX", "60000")  # as if it expired and was taken
        await until(lambda: "lost its storage lease to another process" in nodes.log("keeper"))
        await until(lambda: distributor.nodes() == [], 5)

        assert server.cli("GET", key).strip() == "another-process", "not deleted by the loser"
        assert node.poll() is None, "the process stays up; its node service stopped"
    finally:
        server.stop()
