"""The distributor and nodes joined in memory under one Clock: routing, outcomes, feedbacks."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.python.failure import Failure

from jobreactor import CancelJob, Config, JobFailed, JobRegistry, job, job_callback, job_errback
from jobreactor.definitions import registering_into
from jobreactor.testing import LocalCluster


def outcome_of(handle: Any) -> Any:
    seen: list[Any] = []
    handle.deferred.addBoth(seen.append)
    assert seen, f"{handle} has no outcome yet"
    return seen[0]


@pytest.fixture
def registry() -> JobRegistry:
    registry = JobRegistry()
    with registering_into(registry):

        @job("my_job")
        def my_job(args: dict[str, Any]) -> None:
            args["result"] = "Yay!"

        @job_callback("my_job", "second")
        def second(args: dict[str, Any]) -> dict[str, Any]:
            return {"steps": [*args.get("steps", []), "second"]}

        @job("failing", max_attempt=3)
        def failing(args: dict[str, Any]) -> None:
            args["half_done"] = True
            raise ValueError(f"cannot do {args['what']}")

        @job_errback("failing", "first_errback")
        def first_errback(args: dict[str, Any]) -> None:
            raise RuntimeError("errback broke")

        @job_errback("failing", "second_errback")
        def second_errback(args: dict[str, Any]) -> None:
            args["second_errback_ran"] = True

        @job("where")
        def where(args: dict[str, Any]) -> dict[str, Any]:
            return {"ran_on": args["job_itself"]["node"]}

        @job("stopper")
        def stopper(args: dict[str, Any]) -> None:
            raise CancelJob()

    return registry


@pytest.fixture
def cluster(registry: JobRegistry) -> Any:
    cluster = LocalCluster(registry)
    yield cluster
    cluster.stop()


def test_feedback_gets_args_as_the_node_left_them(cluster: LocalCluster) -> None:
    cluster.add_node("worker_1")
    successes: list[dict[str, Any]] = []
    handle = cluster.distributor.enqueue("my_job", {"arg1": 1}, success=successes.append)
    cluster.run()
    expected = {"arg1": 1, "result": "Yay!", "steps": ["second"]}
    assert successes == [expected]
    assert outcome_of(handle) == expected
    assert cluster.distributor.pending == 0


def test_jobs_wait_without_a_node_and_go_when_one_connects(cluster: LocalCluster) -> None:
    successes: list[dict[str, Any]] = []
    for number in range(5):
        cluster.distributor.enqueue("my_job", {"n": number}, success=successes.append)
    cluster.advance(60)
    assert successes == []
    assert cluster.distributor.waiting == 5
    assert cluster.clock.getDelayedCalls() == [], "waiting must not spin a timer"
    cluster.add_node("worker_1")
    cluster.run()
    assert [args["n"] for args in successes] == [0, 1, 2, 3, 4]


def test_failure_retries_then_fails_with_errbacks_and_error_feedback(
    cluster: LocalCluster,
) -> None:
    cluster.add_node("worker_1")
    errors: list[dict[str, Any]] = []
    handle = cluster.distributor.enqueue("failing", {"what": "x"}, error=errors.append)
    cluster.run()
    assert errors == [], "the first failure is retried, not reported"
    # attempt * retry_multiplier: 5 s after attempt 1, 10 s after attempt 2
    cluster.advance(4.9)
    assert errors == []
    cluster.advance(0.1)
    cluster.advance(10)
    assert len(errors) == 1
    final = errors[0]
    assert final["error"] == "cannot do x"
    assert final["error_type"] == "ValueError"
    assert "half_done" not in final, "errbacks see the attempt's starting args"
    assert final["second_errback_ran"] is True
    assert "RuntimeError: errback broke" in final["errback_error"]
    failure = outcome_of(handle)
    assert isinstance(failure, Failure) and failure.check(JobFailed)
    error = failure.value
    assert isinstance(error, JobFailed)
    assert error.job_args == final
    assert error.error_type == "ValueError"


def test_unknown_job_name_is_the_jobs_error(cluster: LocalCluster) -> None:
    cluster.add_node("worker_1")
    errors: list[dict[str, Any]] = []
    handle = cluster.distributor.enqueue("no_such_job", {"a": 1}, error=errors.append)
    cluster.run()
    assert len(errors) == 1
    assert errors[0]["error_type"] == "NoSuchJob"
    assert "no_such_job" in errors[0]["error"]
    assert errors[0]["a"] == 1
    assert outcome_of(handle).check(JobFailed)
    assert cluster.nodes["worker_1"].held == 0


def test_node_preference_and_exclusion(registry: JobRegistry) -> None:
    cluster = LocalCluster(registry, config=Config(merge_job_itself_to_args=True))
    cluster.add_node("worker_1", slots=2)
    cluster.add_node("worker_2", slots=2)
    ran_on: dict[str, list[str]] = {"preferred": [], "excluded": []}

    def record(kind: str) -> Any:
        return lambda args: ran_on[kind].append(args["ran_on"])

    for _ in range(6):
        cluster.distributor.enqueue("where", {}, node="worker_2", success=record("preferred"))
        cluster.distributor.enqueue("where", {}, not_node="worker_2", success=record("excluded"))
    cluster.run()
    assert ran_on["excluded"] == ["worker_1"] * 6
    assert len(ran_on["preferred"]) == 6
    assert ran_on["preferred"].count("worker_2") >= 2, "the preferred node is used while free"
    cluster.stop()


def test_always_use_specified_node_waits_for_that_node(registry: JobRegistry) -> None:
    cluster = LocalCluster(
        registry, config=Config(merge_job_itself_to_args=True, always_use_specified_node=True)
    )
    cluster.add_node("worker_1")
    ran_on: list[str] = []
    cluster.distributor.enqueue(
        "where", {}, node="worker_2", success=lambda a: ran_on.append(a["ran_on"])
    )
    cluster.advance(30)
    assert ran_on == []
    assert cluster.distributor.waiting == 1
    cluster.add_node("worker_2")
    cluster.run()
    assert ran_on == ["worker_2"]
    cluster.stop()


def test_raising_feedback_is_logged_and_others_still_fire(cluster: LocalCluster) -> None:
    cluster.add_node("worker_1")
    seen: list[dict[str, Any]] = []

    def broken(args: dict[str, Any]) -> None:
        raise RuntimeError("feedback bug")

    cluster.distributor.enqueue("my_job", {"n": 1}, success=broken)
    cluster.distributor.enqueue("my_job", {"n": 2}, success=seen.append)
    cluster.run()
    assert [args["n"] for args in seen] == [2]
    assert cluster.distributor.pending == 0


def test_cancel_job_in_chain_fires_success_feedback(cluster: LocalCluster) -> None:
    cluster.add_node("worker_1")
    successes: list[dict[str, Any]] = []
    cluster.distributor.enqueue("stopper", {"k": 1}, success=successes.append)
    cluster.run()
    assert successes == [{"k": 1}]


def test_higher_priority_goes_first_fifo_within_one(registry: JobRegistry) -> None:
    cluster = LocalCluster(registry, config=Config(merge_job_itself_to_args=True))
    order: list[str] = []
    for label, priority in [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", -1)]:

        def note(args: dict[str, Any], label: str = label) -> None:
            order.append(label)

        cluster.distributor.enqueue("where", {}, priority=priority, success=note)
    cluster.add_node("worker_1", slots=1)
    cluster.advance(1)
    assert order == ["b", "d", "a", "c", "e"]
    cluster.stop()
