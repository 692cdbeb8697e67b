"""Unique jobs under a Clock: one job per key, for the embedded API and remote clients."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.defer import Deferred

from jobreactor import InvalidJobError, JobCancelled, JobRegistry, job
from jobreactor.definitions import registering_into
from jobreactor.testing import LocalCluster


class Jobs:
    def __init__(self) -> None:
        self.registry = JobRegistry()
        self.pending: list[Deferred[Any]] = []
        self.runs: list[dict[str, Any]] = []
        with registering_into(self.registry):

            @job("report")
            def report(args: dict[str, Any]) -> Deferred[Any]:
                self.runs.append(dict(args))
                waiting: Deferred[Any] = Deferred()
                self.pending.append(waiting)
                return waiting.addCallback(lambda _: {**args, "done": True})


@pytest.fixture
def jobs() -> Jobs:
    return Jobs()


@pytest.fixture
def cluster(jobs: Jobs) -> Iterator[LocalCluster]:
    cluster = LocalCluster(jobs.registry)
    cluster.add_node("n1")
    yield cluster
    cluster.stop()


def outcome_of(handle: Any) -> Any:
    """The handle's outcome (args, or a Failure), read again for every handle of a job."""
    return handle._outcome if handle.done else None


def finish_all(cluster: LocalCluster, jobs: Jobs) -> None:
    while jobs.pending:
        jobs.pending.pop(0).callback(None)
    cluster.run()


def test_second_enqueue_with_the_key_gets_the_existing_job(
    cluster: LocalCluster, jobs: Jobs
) -> None:
    enqueue = cluster.distributor.enqueue
    seen: list[dict[str, Any]] = []
    first = enqueue("report", {"n": 1}, unique_key="nightly", success=seen.append)
    cluster.run()  # held by the node and running
    second = enqueue("report", {"n": 2}, unique_key="nightly", success=seen.append)
    other = enqueue("report", {"n": 3}, unique_key="hourly")
    cluster.run()
    assert second.id == first.id
    assert [run["n"] for run in jobs.runs] == [1, 3]  # one job per key
    finish_all(cluster, jobs)
    assert outcome_of(second) == outcome_of(first) == {"n": 1, "done": True}
    assert seen == [{"n": 1, "done": True}] * 2  # both callers' feedbacks fired
    assert outcome_of(other)["n"] == 3
    third = enqueue("report", {"n": 4}, unique_key="nightly")  # ended: a new job
    cluster.run()
    assert third.id != first.id and jobs.runs[-1]["n"] == 4


def test_a_waiting_job_holds_its_key_too(jobs: Jobs) -> None:
    cluster = LocalCluster(jobs.registry)  # no node yet: the job waits in the distributor
    handles = [cluster.distributor.enqueue("report", {}, unique_key="k") for _ in range(5)]
    assert {h.id for h in handles} == {handles[0].id}
    assert cluster.distributor.waiting == 1
    handles[3].cancel()  # any handle stands for the one job
    cluster.run()
    assert all(isinstance(outcome_of(h).value, JobCancelled) for h in handles)
    cluster.stop()


def test_unique_for_refuses_duplicates_for_a_while_after_the_end(
    cluster: LocalCluster, jobs: Jobs
) -> None:
    enqueue = cluster.distributor.enqueue
    first = enqueue("report", {"n": 1}, unique_key="daily", unique_for=60)
    cluster.run()
    finish_all(cluster, jobs)
    cluster.advance(59)
    seen: list[dict[str, Any]] = []
    again = enqueue("report", {"n": 2}, unique_key="daily", unique_for=60, success=seen.append)
    assert again.id == first.id
    assert outcome_of(again) == {"n": 1, "done": True}
    assert seen == [{"n": 1, "done": True}]
    cluster.advance(2)
    later = enqueue("report", {"n": 3}, unique_key="daily", unique_for=60)
    cluster.run()
    assert later.id != first.id
    assert [run["n"] for run in jobs.runs] == [1, 3]


def test_remote_clients_get_the_existing_job_and_its_outcome(
    cluster: LocalCluster, jobs: Jobs
) -> None:
    one = cluster.add_client("app_1")
    two = cluster.add_client("app_2")
    seen: list[tuple[str, dict[str, Any]]] = []
    first = one.enqueue("report", {"n": 1}, unique_key="k", success=lambda a: seen.append(("1", a)))
    cluster.run()
    again = one.enqueue("report", {"n": 2}, unique_key="k")  # the same client twice
    other = two.enqueue("report", {"n": 3}, unique_key="k", success=lambda a: seen.append(("2", a)))
    local = cluster.distributor.enqueue("report", {"n": 4}, unique_key="k")
    cluster.run()
    assert again.id == other.id == local.id == first.id  # the handles name the existing job
    assert [run["n"] for run in jobs.runs] == [1]
    finish_all(cluster, jobs)
    for handle in (first, again, other, local):
        assert outcome_of(handle) == {"n": 1, "done": True}
    assert sorted(who for who, _ in seen) == ["1", "2"]
    assert one.pending == two.pending == 0


def test_a_follower_that_reconnects_still_gets_the_outcome(
    cluster: LocalCluster, jobs: Jobs
) -> None:
    one = cluster.add_client("app_1")
    two = cluster.add_client("app_2")
    first = one.enqueue("report", {}, unique_key="k")
    cluster.run()
    other = two.enqueue("report", {}, unique_key="k")
    cluster.run()
    cluster.disconnect("app_2")
    cluster.connect_client("app_2")  # resends its pending job, now under the existing id
    finish_all(cluster, jobs)
    assert len(jobs.runs) == 1
    assert outcome_of(other) == outcome_of(first) == {"done": True}


def test_bad_unique_options_are_refused(cluster: LocalCluster) -> None:
    enqueue = cluster.distributor.enqueue
    with pytest.raises(InvalidJobError, match="unique_key must be a non-empty string"):
        enqueue("report", {}, unique_key="")
    with pytest.raises(InvalidJobError, match="unique_for needs a unique_key"):
        enqueue("report", {}, unique_for=5)
    with pytest.raises(InvalidJobError, match="unique_for must be above 0"):
        enqueue("report", {}, unique_key="k", unique_for=0)
