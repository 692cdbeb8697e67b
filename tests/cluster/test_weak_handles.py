"""The handle ``Distributor.enqueue`` returns is held weakly while only its caller holds it:
a job enqueued with feedbacks whose handle is dropped costs no handle while it waits, and
every handle (or Deferred of one) that someone still holds gets its outcome."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.defer import Deferred

from jobreactor import Config, JobCancelled, JobFailed, JobRegistry, job
from jobreactor.definitions import registering_into
from jobreactor.enqueueing import build_job
from jobreactor.testing import LocalCluster


class Jobs:
    def __init__(self) -> None:
        self.registry = JobRegistry()
        self.pending: list[Deferred[Any]] = []
        with registering_into(self.registry):

            @job("held")
            def held(args: dict[str, Any]) -> Deferred[Any]:
                waiting: Deferred[Any] = Deferred()
                self.pending.append(waiting)
                return waiting.addCallback(lambda value: {"value": value})

            @job("broken")
            def broken(args: dict[str, Any]) -> None:
                raise ValueError("broken")


@pytest.fixture
def jobs() -> Jobs:
    return Jobs()


@pytest.fixture
def cluster(jobs: Jobs) -> Iterator[LocalCluster]:
    cluster = LocalCluster(jobs.registry, config=Config(max_attempt=1))
    yield cluster
    cluster.stop()


def finish_all(cluster: LocalCluster, jobs: Jobs) -> None:
    cluster.run()
    while jobs.pending:
        jobs.pending.pop(0).callback(1)
    cluster.run()


def test_a_dropped_handle_costs_nothing_and_the_feedback_still_fires(
    cluster: LocalCluster, jobs: Jobs
) -> None:
    seen: list[dict[str, Any]] = []
    for _ in range(3):
        cluster.distributor.enqueue("held", {}, success=seen.append)
    gc.collect()
    assert len(cluster.distributor._handles) == 0
    assert all(entry.handle is None for entry in cluster.distributor._owned.values())
    cluster.add_node("n1")
    finish_all(cluster, jobs)
    assert seen == [{"value": 1}] * 3
    assert cluster.distributor.pending == 0


def test_only_the_deferred_is_held_and_it_fires(cluster: LocalCluster, jobs: Jobs) -> None:
    held: list[Any] = []
    broken: list[Any] = []
    submitted: list[Any] = []
    cluster.distributor.enqueue("held", {}).deferred.addBoth(held.append)
    cluster.distributor.enqueue("broken", {}).deferred.addBoth(broken.append)
    made = build_job("held", {"n": 2}, {}, now=0.0, max_args_bytes=1000)
    cluster.distributor.submit(made).deferred.addBoth(submitted.append)
    gc.collect()
    cluster.add_node("n1")
    finish_all(cluster, jobs)
    assert held == [{"value": 1}]
    assert len(broken) == 1 and isinstance(broken[0].value, JobFailed)
    assert submitted == [{"n": 2, "value": 1}]


def test_a_held_handle_gets_its_outcome_and_can_cancel(cluster: LocalCluster, jobs: Jobs) -> None:
    kept = cluster.distributor.enqueue("held", {})
    cancelled = cluster.distributor.enqueue("held", {})
    gc.collect()
    assert set(cluster.distributor._handles) == {kept.id, cancelled.id}
    cancelled.cancel()
    assert cancelled.done and isinstance(cancelled._outcome.value, JobCancelled)
    cluster.add_node("n1")
    finish_all(cluster, jobs)
    assert kept.done and kept._outcome == {"value": 1}
    assert len(cluster.distributor._handles) == 0


def test_a_unique_key_follower_gets_a_handle_after_the_first_was_dropped(
    cluster: LocalCluster, jobs: Jobs
) -> None:
    first_id = cluster.distributor.enqueue("held", {}, unique_key="k").id
    gc.collect()
    second = cluster.distributor.enqueue("held", {}, unique_key="k")
    assert second.id == first_id
    assert cluster.distributor.enqueue("held", {}, unique_key="k") is second
    cluster.add_node("n1")
    finish_all(cluster, jobs)
    assert second.done and second._outcome == {"value": 1}


def test_a_unique_key_follower_gets_the_very_handle_while_it_is_held(
    cluster: LocalCluster, jobs: Jobs
) -> None:
    first = cluster.distributor.enqueue("held", {}, unique_key="k")
    assert cluster.distributor.enqueue("held", {}, unique_key="k") is first
    cluster.add_node("n1")
    finish_all(cluster, jobs)
    assert first.done


def test_a_handle_of_a_job_run_again_does_not_take_the_new_runs_place(
    cluster: LocalCluster, jobs: Jobs
) -> None:
    cluster.add_node("n1")
    first = cluster.distributor.enqueue("held", {})
    finish_all(cluster, jobs)
    assert first.done
    retried: list[Any] = []
    cluster.distributor.retry(first.id).addBoth(retried.append)
    cluster.run()
    assert retried == [first.id]
    seen: list[Any] = []
    first.deferred.addBoth(seen.append)  # the first run's handle, used only now
    assert seen == [{"value": 1}]
    # The new run's entry did not take the old handle for its own.
    assert cluster.distributor._owned[first.id].handle is None
    jobs.pending.pop(0).callback(2)
    cluster.run()
    assert cluster.distributor.pending == 0
    assert first._outcome == {"value": 1}  # settled once, by its own run
