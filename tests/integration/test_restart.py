"""A node with persistent storage killed with SIGKILL and restarted: it finds its unfinished
jobs and runs each at its due time; finished ones stay finished."""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from jobreactor import Config, Distributor
from jobreactor.monitor import Monitor
from jobreactor.storage import open_storage
from tests.storage.conftest import RedisServer

from .conftest import NodeProcesses, bounded, port_of


@pytest.fixture
def patient_distributor() -> Any:
    """A grace period long enough for the node to come back."""
    distributor = Distributor(
        "tcp:0:interface=127.0.0.1", config=Config(node_grace_period=30.0), reactor=reactor
    )
    distributor.startService()
    pytest_twisted.blockon(distributor.when_listening().addTimeout(5, reactor))
    yield distributor
    pytest_twisted.blockon(distributor.stopService())


async def until(predicate: Any, seconds: float = 30) -> None:
    for _ in range(int(seconds * 10)):
        if predicate():
            return
        await deferLater(reactor, 0.1, lambda: None)
    raise AssertionError(f"not true within {seconds} s")


@pytest.fixture(params=["sqlite", "redis"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:{tmp_path / 'node.db'}"
        return
    server = RedisServer(tmp_path / "redis", appendonly=True)
    server.start()
    yield f"{server.url}?prefix=restart&timeout=2"
    server.stop()


async def stored_job_statuses(storage_url: str) -> dict[str, str]:
    """Job id -> status of node keeper's stored jobs, read through the storage's own API."""
    storage = open_storage(storage_url)
    await storage.open()
    try:
        jobs = await Monitor(storage).jobs_for("keeper")
    finally:
        await storage.close()
    return {job.id: job.status.value for job in jobs}


@pytest_twisted.ensureDeferred
async def test_node_restarted_after_sigkill_runs_its_unfinished_jobs(
    patient_distributor: Distributor, nodes: NodeProcesses, tmp_path: Path, storage_url: str
) -> None:
    distributor = patient_distributor
    port = port_of(distributor)
    storage = storage_url
    # On Redis a killed node's lease lasts until it expires: keep that wait short here.
    lease = ("--setting", "storage_lease_seconds=2")
    first = nodes.start("keeper", port, "--storage", storage, *lease)
    await bounded(distributor.when_nodes(names=["keeper"]))
    done = distributor.enqueue("my_job", {})
    await bounded(done.deferred)
    periodic_runs: Counter[int] = Counter()
    started = time.time()
    running = distributor.enqueue("sleepy", {"seconds": 3.0})
    delayed = distributor.enqueue("stamp", {}, after=4)
    periodic = distributor.enqueue(
        "count_runs", {}, period=1.0, success=lambda a: periodic_runs.update([a["runs"]])
    )
    retrying = distributor.enqueue("failing", {"n": 1})  # max_attempt=2, retry_delay=0.2
    await until(lambda: distributor.nodes()[0].holding == 4)
    await until(lambda: len(periodic_runs) >= 1)
    first.send_signal(signal.SIGKILL)
    await bounded(deferToThread(first.wait, 10))
    second = nodes.start("keeper", port, "--storage", storage, *lease)
    sleepy_result = await bounded(running.deferred)
    assert sleepy_result["pid"] == second.pid, "the running job ran again on the restarted node"
    stamped = await bounded(delayed.deferred)
    assert stamped["at"] >= started + 4, "not before its time"
    with pytest.raises(Exception, match="broken 1"):
        await bounded(retrying.deferred)
    await until(lambda: max(periodic_runs) >= 3, 10)
    assert set(periodic_runs.values()) == {1}, "each periodic run fed back once"
    statuses = await stored_job_statuses(storage_url)
    assert done.id not in statuses, "a finished job stays finished (remove_done_jobs)"
    assert statuses.get(retrying.id) == "failed", "failed jobs are kept (remove_failed_jobs)"
    periodic.cancel()
    await bounded(defer.DeferredList([periodic.deferred], consumeErrors=True))
    assert "keeper" in [info.name for info in distributor.nodes()]


@pytest_twisted.ensureDeferred
async def test_redis_outage_is_survived_and_loses_no_acknowledged_job(
    patient_distributor: Distributor, nodes: NodeProcesses, tmp_path: Path
) -> None:
    distributor = patient_distributor
    server = RedisServer(tmp_path / "redis", appendonly=True)
    server.start()
    try:
        url = f"{server.url}?prefix=outage&timeout=1"
        node = nodes.start("keeper", port_of(distributor), "--storage", url)
        await bounded(distributor.when_nodes(names=["keeper"]))
        assert (await bounded(distributor.enqueue("my_job", {}).deferred))["result"] == "Yay!"
        started = time.time()
        acknowledged = distributor.enqueue("stamp", {}, after=6)  # stored before the outage
        await until(lambda: distributor.nodes()[0].holding == 1)
        await deferLater(reactor, 0.3, lambda: None)  # its save reached the AOF (everysec)
        await deferLater(reactor, 1.0, lambda: None)
        server.stop(signal.SIGKILL)
        during = distributor.enqueue("my_job", {"during": "outage"})
        await deferLater(reactor, 3, lambda: None)
        assert node.poll() is None, "the node is still up"
        assert not during.done, "a job the node cannot store is not acknowledged, not lost"
        assert distributor.pending == 2
        server.start()  # same port, same AOF
        result = await bounded(during.deferred)
        assert result["during"] == "outage"
        stamped = await bounded(acknowledged.deferred)
        assert stamped["at"] >= started + 6
    finally:
        server.stop()


@pytest_twisted.ensureDeferred
async def test_node_started_before_redis_waits_for_it(
    patient_distributor: Distributor, nodes: NodeProcesses, tmp_path: Path
) -> None:
    distributor = patient_distributor
    server = RedisServer(tmp_path / "redis", appendonly=False)
    try:
        url = f"{server.url}?prefix=late&timeout=1"
        node = nodes.start("keeper", port_of(distributor), "--storage", url)
        await until(lambda: "storage not available" in nodes.log("keeper"), 15)
        assert distributor.nodes() == [], "it takes no job it could not keep"
        server.start()
        await bounded(distributor.when_nodes(names=["keeper"]))
        assert (await bounded(distributor.enqueue("my_job", {}).deferred))["result"] == "Yay!"
        assert node.poll() is None
    finally:
        server.stop()
