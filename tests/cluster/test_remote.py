"""Enqueueing from another process: remote clients and nodes that enqueue for other nodes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.defer import Deferred

from jobreactor import Client, Config, JobCancelled, JobFailed, JobRegistry, current_node, job
from jobreactor.definitions import registering_into
from jobreactor.testing import LocalCluster


class Jobs:
    def __init__(self) -> None:
        self.registry = JobRegistry()
        self.pending: list[Deferred[Any]] = []
        self.fanned_out: list[dict[str, Any]] = []
        with registering_into(self.registry):

            @job("double")
            def double(args: dict[str, Any]) -> dict[str, Any]:
                return {"result": args["x"] * 2, "ran_on": args["job_itself"]["node"]}

            @job("slow")
            def slow(args: dict[str, Any]) -> Deferred[Any]:
                waiting: Deferred[Any] = Deferred()
                self.pending.append(waiting)
                return waiting

            @job("fail")
            def fail(args: dict[str, Any]) -> None:
                raise KeyError("missing")

            @job("fan_out")
            def fan_out(args: dict[str, Any]) -> None:
                node = current_node()
                for x in args["xs"]:
                    node.enqueue(
                        "double",
                        {"x": x},
                        not_node=args["job_itself"]["node"],
                        success=self.fanned_out.append,
                    )


@pytest.fixture
def jobs() -> Jobs:
    return Jobs()


@pytest.fixture
def cluster(jobs: Jobs) -> Iterator[LocalCluster]:
    config = Config(merge_job_itself_to_args=True, max_attempt=1)
    cluster = LocalCluster(jobs.registry, config=config)
    cluster.add_node("worker_1")
    yield cluster
    cluster.stop()


def outcome_of(handle: Any) -> Any:
    seen: list[Any] = []
    handle.deferred.addBoth(seen.append)
    return seen[0] if seen else None


def test_client_enqueue_gives_handle_deferred_and_feedbacks(cluster: LocalCluster) -> None:
    client = cluster.add_client("app")
    successes: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    good = client.enqueue("double", {"x": 21}, success=successes.append, error=errors.append)
    bad = client.enqueue("fail", {}, success=successes.append, error=errors.append)
    cluster.run()
    assert successes == [{"x": 21, "result": 42, "ran_on": "worker_1"}]
    assert outcome_of(good) == successes[0]
    assert errors[0]["error_type"] == "KeyError"
    assert outcome_of(bad).check(JobFailed)
    assert client.pending == 0
    assert [info.name for info in cluster.distributor.nodes()] == ["worker_1"], (
        "a client is no node"
    )


def test_jobs_enqueued_before_the_connection_wait_in_the_client(jobs: Jobs) -> None:
    cluster = LocalCluster(jobs.registry, config=Config(merge_job_itself_to_args=True))
    cluster.add_node("worker_1")
    client = cluster.add_client("app")
    cluster.disconnect("app")
    handle = client.enqueue("double", {"x": 1})
    cluster.advance(10)
    assert not handle.done
    cluster.connect_client("app")
    cluster.run()
    assert outcome_of(handle)["result"] == 2
    cluster.stop()


def test_client_back_after_a_blip_collects_outcomes_of_the_meantime(
    cluster: LocalCluster, jobs: Jobs
) -> None:
    client = cluster.add_client("app")
    seen: list[dict[str, Any]] = []
    handle = client.enqueue("slow", {"n": 1}, success=seen.append)
    cluster.run()
    cluster.disconnect("app")
    jobs.pending[0].callback({"finished": True})
    cluster.advance(30)
    assert seen == [] and not handle.done
    cluster.connect_client("app")
    cluster.run()
    assert seen == [{"n": 1, "finished": True}]
    assert outcome_of(handle) == seen[0]
    cluster.disconnect("app")
    cluster.connect_client("app")  # nothing is delivered twice
    cluster.run()
    assert len(seen) == 1


def test_client_cancel_reaches_the_node(cluster: LocalCluster, jobs: Jobs) -> None:
    client = cluster.add_client("app")
    handle = client.enqueue("slow", {})
    cluster.run()
    handle.cancel()
    cluster.run()
    assert jobs.pending[0].called
    assert outcome_of(handle).check(JobCancelled)


def test_client_gets_a_clear_refusal_for_a_bad_job(cluster: LocalCluster) -> None:
    client = cluster.add_client("app")
    with pytest.raises(ValueError, match="unknown"):
        client.enqueue("double", {"x": 1}, bogus=1)


def test_a_node_enqueues_for_other_nodes_and_gets_the_feedback(
    cluster: LocalCluster, jobs: Jobs
) -> None:
    cluster.add_node("worker_2")
    cluster.distributor.enqueue("fan_out", {"xs": [1, 2, 3]}, node="worker_1")
    cluster.run()
    assert sorted(args["result"] for args in jobs.fanned_out) == [2, 4, 6]
    assert {args["ran_on"] for args in jobs.fanned_out} == {"worker_2"}


def test_cancel_while_disconnected_is_sent_when_back(cluster: LocalCluster, jobs: Jobs) -> None:
    client = cluster.add_client("app")
    handle = client.enqueue("slow", {})
    cluster.run()
    cluster.disconnect("app")
    handle.cancel()
    cluster.run()
    assert not jobs.pending[0].called
    cluster.connect_client("app")
    cluster.run()
    assert jobs.pending[0].called
    assert outcome_of(handle).check(JobCancelled)


def test_outcomes_kept_for_a_previous_process_reach_on_unknown_outcome(
    cluster: LocalCluster, jobs: Jobs
) -> None:
    first = cluster.add_client("app")
    first.enqueue("slow", {"n": 7})
    cluster.run()
    cluster.disconnect("app")
    del cluster.clients["app"]
    jobs.pending[0].callback(None)
    cluster.run()
    orphans: list[dict[str, Any]] = []
    # a new process, same client name
    cluster.clients["app"] = Client(
        "memory:", name="app", clock=cluster.clock, on_unknown_outcome=orphans.append
    )
    cluster.connect_client("app")
    assert [report["args"]["n"] for report in orphans] == [7]


def test_cancel_of_a_sent_but_unanswered_job_reaches_the_distributor(
    cluster: LocalCluster, jobs: Jobs
) -> None:
    client = cluster.add_client("app")
    handle = client.enqueue("slow", {})
    pump = cluster._pumps["app"]
    pump.pump()  # the Enqueue box reaches the distributor ...
    cluster.disconnect("app")  # ... and the link breaks before the answer is read
    handle.cancel()
    cluster.run()
    assert not handle.done, "it may run on a node: only the distributor can cancel it"
    cluster.connect_client("app")
    cluster.run()
    assert jobs.pending and all(waiting.called for waiting in jobs.pending)
    assert outcome_of(handle).check(JobCancelled)
