"""A node with persistent storage killed with SIGKILL and restarted: it finds its unfinished
jobs and runs each at its due time; finished ones stay finished."""

from __future__ import annotations

import signal
import sqlite3
import time
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from jobreactor import Config, Distributor

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


@pytest_twisted.ensureDeferred
async def test_sqlite_node_restarted_after_sigkill_runs_its_unfinished_jobs(
    patient_distributor: Distributor, nodes: NodeProcesses, tmp_path: Path
) -> None:
    distributor = patient_distributor
    port = port_of(distributor)
    storage = f"sqlite:{tmp_path / 'node.db'}"
    first = nodes.start("keeper", port, "--storage", storage)
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
    second = nodes.start("keeper", port, "--storage", storage)
    sleepy_result = await bounded(running.deferred)
    assert sleepy_result["pid"] == second.pid, "the running job ran again on the restarted node"
    stamped = await bounded(delayed.deferred)
    assert stamped["at"] >= started + 4, "not before its time"
    with pytest.raises(Exception, match="broken 1"):
        await bounded(retrying.deferred)
    await until(lambda: max(periodic_runs) >= 3, 10)
    assert set(periodic_runs.values()) == {1}, "each periodic run fed back once"
    with closing(sqlite3.connect(tmp_path / "node.db")) as db:
        statuses = dict(db.execute("SELECT id, status FROM jobs WHERE node = 'keeper'"))
    assert done.id not in statuses, "a finished job stays finished (remove_done_jobs)"
    assert statuses.get(retrying.id) == "failed", "failed jobs are kept (remove_failed_jobs)"
    periodic.cancel()
    await bounded(defer.DeferredList([periodic.deferred], consumeErrors=True))
    assert "keeper" in [info.name for info in distributor.nodes()]
