"""Each kind of job across real processes: delayed, periodic, thread, retried, cancelled."""

from __future__ import annotations

import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer

from jobreactor import Distributor, JobCancelled, JobFailed, Status

from .conftest import NodeProcesses, bounded, port_of


async def one_node(distributor: Distributor, nodes: NodeProcesses, slots: int = 30) -> None:
    nodes.start("worker_1", port_of(distributor), slots=slots)
    await bounded(distributor.when_nodes(names=["worker_1"]))


@pytest_twisted.ensureDeferred
async def test_after_and_run_at_run_once_not_before(
    distributor: Distributor, nodes: NodeProcesses
) -> None:
    await one_node(distributor, nodes)
    enqueued = time.time()
    after = distributor.enqueue("stamp", {}, after=0.6)
    at = distributor.enqueue("stamp", {}, run_at=enqueued + 0.8)
    ran_after, ran_at = await bounded(defer.gatherResults([after.deferred, at.deferred]))
    assert ran_after["at"] >= enqueued + 0.6
    assert ran_at["at"] >= enqueued + 0.8


@pytest.mark.parametrize("defer_job", [False, True], ids=["reactor", "thread"])
@pytest_twisted.ensureDeferred
async def test_periodic_feedback_every_run_until_cancel_job(
    distributor: Distributor, nodes: NodeProcesses, defer_job: bool
) -> None:
    await one_node(distributor, nodes)
    seen: list[dict[str, Any]] = []
    handle = distributor.enqueue(
        "count_runs", {"stop_after": 3}, period=0.2, defer=defer_job, success=seen.append
    )
    final = await bounded(handle.deferred)
    assert [args["runs"] for args in seen] == [1, 2, 3, 3]
    assert final == {"stop_after": 3, "runs": 3}


@pytest.mark.parametrize("defer_job", [False, True], ids=["reactor", "thread"])
@pytest_twisted.ensureDeferred
async def test_cancel_job_in_errback_gives_error_feedback(
    distributor: Distributor, nodes: NodeProcesses, defer_job: bool
) -> None:
    await one_node(distributor, nodes)
    errors: list[dict[str, Any]] = []
    handle = distributor.enqueue("fail_then_cancel", {}, defer=defer_job, error=errors.append)
    with pytest.raises(JobFailed) as caught:
        await bounded(handle.deferred)
    assert caught.value.status == Status.CANCELLED
    assert errors == [{"error": "always", "error_type": "ValueError", "stopped": True}]


@pytest_twisted.ensureDeferred
async def test_thread_jobs_run_in_parallel_while_reactor_jobs_go_on(
    distributor: Distributor, nodes: NodeProcesses
) -> None:
    await one_node(distributor, nodes)
    blocking = [distributor.enqueue("blocking", {"seconds": 1.0}, defer=True) for _ in range(10)]
    quick = distributor.enqueue("stamp", {})
    results = await bounded(defer.gatherResults([h.deferred for h in blocking]))
    quick_result = await bounded(quick.deferred)
    assert all(result["thread"] != "MainThread" for result in results)
    assert len({result["thread"] for result in results}) == 10, "ten threads at once"
    assert max(r["started"] for r in results) < min(r["ended"] for r in results), "overlap"
    assert quick_result["thread"] == "MainThread"
    assert quick_result["at"] < min(r["ended"] for r in results), "the reactor was not blocked"


@pytest_twisted.ensureDeferred
async def test_cancel_and_timeout_on_a_real_node(
    distributor: Distributor, nodes: NodeProcesses
) -> None:
    await one_node(distributor, nodes)
    timed = distributor.enqueue("forever", {}, timeout=0.3, max_attempt=1)
    waiting = distributor.enqueue("stamp", {}, after=3600)
    running = distributor.enqueue("forever", {})
    with pytest.raises(JobFailed) as caught:
        await bounded(timed.deferred)
    assert caught.value.error_type == "TimeoutError"
    waiting.cancel()
    running.cancel()
    for handle in (waiting, running):
        with pytest.raises(JobCancelled):
            await bounded(handle.deferred)
    assert distributor.pending == 0
