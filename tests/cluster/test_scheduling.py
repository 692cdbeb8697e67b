"""Time and failure under a Clock: after, run_at, period, retries, cancel, timeout, job_itself."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from jobreactor import (
    CancelJob,
    Config,
    JobCancelled,
    JobFailed,
    JobRegistry,
    Status,
    job,
    job_callback,
    job_errback,
)
from jobreactor.definitions import registering_into
from jobreactor.storage import MemoryStorage
from jobreactor.testing import LocalCluster

START = 1_000_000.0


class Jobs:
    """The jobs of these tests, with what they saw."""

    def __init__(self) -> None:
        self.registry = JobRegistry()
        self.calls: list[tuple[str, float]] = []
        self.pending: list[Deferred[Any]] = []
        self.failures_left = 0
        self.seen_itself: list[dict[str, Any]] = []
        self.cluster: LocalCluster | None = None
        with registering_into(self.registry):
            self._define()

    def now(self) -> float:
        assert self.cluster is not None
        return self.cluster.clock.seconds()

    def _define(self) -> None:
        @job("tick")
        def tick(args: dict[str, Any]) -> dict[str, Any]:
            self.calls.append(("tick", self.now()))
            return {"count": args.get("count", 0) + 1}

        @job("hang")
        def hang(args: dict[str, Any]) -> Deferred[Any]:
            self.calls.append(("hang", self.now()))
            waiting: Deferred[Any] = Deferred()
            self.pending.append(waiting)
            return waiting

        @job("flaky")
        def flaky(args: dict[str, Any]) -> None:
            self.calls.append(("flaky", self.now()))
            if self.failures_left > 0:
                self.failures_left -= 1
                raise RuntimeError("not yet")
            args["done"] = True

        @job("backoff", max_attempt=4, retry_delay=lambda attempt: min(2.0**attempt, 5.0))
        def backoff(args: dict[str, Any]) -> None:
            self.calls.append(("backoff", self.now()))
            raise RuntimeError("always")

        @job("stop_me")
        def stop_me(args: dict[str, Any]) -> dict[str, Any]:
            self.calls.append(("stop_me", self.now()))
            runs = args.get("runs", 0) + 1
            if runs >= 3:
                raise CancelJob()
            return {"runs": runs}

        @job("stop_in_errback")
        def stop_in_errback(args: dict[str, Any]) -> None:
            raise ValueError("first")

        @job_errback("stop_in_errback", "give_up")
        def give_up(args: dict[str, Any]) -> None:
            args["gave_up"] = True
            raise CancelJob()

        @job("reflect")
        def reflect(args: dict[str, Any]) -> None:
            self.seen_itself.append(dict(args["job_itself"]))
            if args.get("fail"):
                raise ValueError("reflect failed")

        @job_callback("reflect", "reflect_again")
        def reflect_again(args: dict[str, Any]) -> None:
            self.seen_itself.append(dict(args["job_itself"]))

        @job_errback("reflect", "reflect_errback")
        def reflect_errback(args: dict[str, Any]) -> None:
            self.seen_itself.append(dict(args["job_itself"]))


@pytest.fixture
def jobs() -> Jobs:
    return Jobs()


def make_cluster(jobs: Jobs, **settings: Any) -> LocalCluster:
    cluster = LocalCluster(jobs.registry, config=Config(**settings))
    cluster.clock.advance(START)
    jobs.cluster = cluster
    return cluster


@pytest.fixture
def cluster(jobs: Jobs) -> Iterator[LocalCluster]:
    cluster = make_cluster(jobs)
    cluster.add_node("worker_1")
    yield cluster
    cluster.stop()


def outcome_of(handle: Any) -> Any:
    seen: list[Any] = []
    handle.deferred.addBoth(seen.append)
    return seen[0] if seen else None


def times(jobs: Jobs, name: str) -> list[float]:
    return [when - START for called, when in jobs.calls if called == name]


def stored(cluster: LocalCluster, job_id: str, node: str = "worker_1") -> Any:
    found: list[Any] = []
    cluster.nodes[node].storage.load(node, job_id).addCallback(found.append)
    return found[0]


# -- after / run_at -------------------------------------------------------------------


def test_after_runs_once_and_never_early(cluster: LocalCluster, jobs: Jobs) -> None:
    seen: list[dict[str, Any]] = []
    cluster.distributor.enqueue("tick", {}, after=20, success=seen.append)
    cluster.advance(19.999)
    assert times(jobs, "tick") == []
    cluster.advance(0.001)
    assert times(jobs, "tick") == [20.0]
    cluster.advance(1000)
    assert times(jobs, "tick") == [20.0]
    assert seen == [{"count": 1}]


def test_sub_second_run_at_is_honoured(cluster: LocalCluster, jobs: Jobs) -> None:
    cluster.distributor.enqueue("tick", {}, run_at=START + 0.9)
    cluster.run()
    assert times(jobs, "tick") == [], "0.9 s ahead is not 'now' (the original rounded it)"
    cluster.advance(0.899)
    assert times(jobs, "tick") == []
    cluster.advance(0.001)
    assert times(jobs, "tick") == pytest.approx([0.9])


def test_run_at_accepts_an_aware_datetime(cluster: LocalCluster, jobs: Jobs) -> None:
    when = datetime.datetime.fromtimestamp(START + 3600, tz=datetime.UTC)
    cluster.distributor.enqueue("tick", {}, run_at=when)
    cluster.advance(3599)
    assert times(jobs, "tick") == []
    cluster.advance(1)
    assert times(jobs, "tick") == [3600.0]


def test_waiting_jobs_hold_no_slot(jobs: Jobs) -> None:
    cluster = make_cluster(jobs)
    cluster.add_node("worker_1", slots=1)
    cluster.distributor.enqueue("tick", {}, after=100)
    cluster.distributor.enqueue("tick", {}, after=100)
    cluster.distributor.enqueue("tick", {})
    cluster.run()
    assert times(jobs, "tick") == [0.0], "the due job ran although two wait on the node"
    cluster.advance(100)
    assert times(jobs, "tick") == [0.0, 100.0, 100.0]
    cluster.stop()


def test_ten_thousand_future_jobs_cost_nothing_until_due(jobs: Jobs) -> None:
    class CountingStorage(MemoryStorage):
        calls = 0

        def save(self, node: str, job: Any) -> Any:
            CountingStorage.calls += 1
            return super().save(node, job)

        def jobs_for(self, node: str, statuses: Any = None) -> Any:
            CountingStorage.calls += 1
            return super().jobs_for(node, statuses)

    cluster = make_cluster(jobs)
    cluster.add_node("worker_1", slots=10, storage=CountingStorage())
    CountingStorage.calls = 0
    for number in range(10_000):
        cluster.distributor.enqueue("tick", {"n": number}, after=3600)
    cluster.run()
    accepted = CountingStorage.calls
    assert accepted == 10_000, "each job is saved once, when the node accepts it"
    assert cluster.nodes["worker_1"].held == 10_000
    # nothing but the connection's heartbeat wakes up in between
    job_timers = [
        call.getTime()
        for call in cluster.clock.getDelayedCalls()
        if getattr(getattr(call, "func", None), "__name__", "") != "beat"
    ]
    assert len(job_timers) == 10_000
    assert min(job_timers) == START + 3600
    cluster.advance(3599.9)
    assert CountingStorage.calls == accepted
    assert times(jobs, "tick") == []
    cluster.advance(0.1)
    assert len(times(jobs, "tick")) == 10_000
    cluster.stop()


# -- period -----------------------------------------------------------------------------


def test_periodic_job_feeds_back_every_run_and_carries_args(
    cluster: LocalCluster, jobs: Jobs
) -> None:
    seen: list[dict[str, Any]] = []
    handle = cluster.distributor.enqueue("tick", {}, period=100, success=seen.append)
    cluster.advance(350)
    assert times(jobs, "tick") == [0.0, 100.0, 200.0, 300.0]
    assert [args["count"] for args in seen] == [1, 2, 3, 4]
    handle.cancel()
    cluster.advance(1000)
    assert len(times(jobs, "tick")) == 4
    failure = outcome_of(handle)
    assert isinstance(failure, Failure) and failure.check(JobCancelled)


@pytest.mark.parametrize("first", ["after", "run_at"])
def test_first_run_of_periodic_job_can_be_delayed(
    cluster: LocalCluster, jobs: Jobs, first: str
) -> None:
    when = {"after": 30} if first == "after" else {"run_at": START + 30}
    cluster.distributor.enqueue("tick", {}, period=10, **when)
    cluster.advance(55)
    assert times(jobs, "tick") == [30.0, 40.0, 50.0]


def test_periodic_runs_never_overlap(cluster: LocalCluster, jobs: Jobs) -> None:
    cluster.distributor.enqueue("hang", {}, period=10)
    cluster.advance(1)
    cluster.advance(100)
    assert times(jobs, "hang") == [0.0], "the next run waits for this one to finish"
    jobs.pending.pop().callback(None)
    cluster.run()
    cluster.advance(9.9)
    assert times(jobs, "hang") == [0.0]
    cluster.advance(0.1)
    assert times(jobs, "hang") == [0.0, 111.0]


def test_periodic_job_resets_attempts_after_a_successful_run(
    jobs: Jobs,
) -> None:
    cluster = make_cluster(jobs, max_attempt=2)
    cluster.add_node("worker_1")
    errors: list[dict[str, Any]] = []
    successes: list[dict[str, Any]] = []
    cluster.distributor.enqueue(
        "flaky", {}, period=10, success=successes.append, error=errors.append
    )
    cluster.advance(50)  # five good runs
    jobs.failures_left = 1
    cluster.advance(100)
    assert errors == [], "one failure after many good runs is retried, not final"
    assert "error" not in successes[-1], "no stale error in a successful run's args"
    cluster.stop()


def test_periodic_job_that_fails_retries_after_its_period(
    cluster: LocalCluster, jobs: Jobs
) -> None:
    jobs.failures_left = 2
    cluster.distributor.enqueue("flaky", {}, period=7)
    cluster.advance(22)
    assert times(jobs, "flaky") == [0.0, 7.0, 14.0, 21.0]


def test_cancel_job_in_periodic_job_ends_it_with_success_feedback(
    cluster: LocalCluster, jobs: Jobs
) -> None:
    seen: list[dict[str, Any]] = []
    handle = cluster.distributor.enqueue("stop_me", {}, period=5, success=seen.append)
    cluster.advance(100)
    assert times(jobs, "stop_me") == [0.0, 5.0, 10.0]
    assert seen == [{"runs": 1}, {"runs": 2}, {"runs": 2}]
    assert outcome_of(handle) == {"runs": 2}
    assert cluster.distributor.pending == 0
    assert cluster.nodes["worker_1"].held == 0


def test_cancel_job_in_errback_ends_it_with_error_feedback(
    cluster: LocalCluster, jobs: Jobs
) -> None:
    errors: list[dict[str, Any]] = []
    handle = cluster.distributor.enqueue("stop_in_errback", {}, error=errors.append)
    cluster.advance(1000)
    assert len(errors) == 1
    assert errors[0]["gave_up"] is True and errors[0]["error"] == "first"
    failure = outcome_of(handle)
    assert isinstance(failure, Failure) and failure.check(JobFailed)
    error: Any = failure.value
    assert error.status == Status.CANCELLED
    assert (error.error, error.error_type) == ("first", "ValueError")


# -- retries ------------------------------------------------------------------------------


def test_retries_follow_attempt_times_multiplier_and_record_the_error(
    cluster: LocalCluster, jobs: Jobs
) -> None:
    jobs.failures_left = 3
    errors: list[dict[str, Any]] = []
    seen: list[dict[str, Any]] = []
    handle = cluster.distributor.enqueue(
        "flaky", {"x": 1}, success=seen.append, error=errors.append
    )
    cluster.run()
    record = stored(cluster, handle.id)
    assert record.status == Status.ERROR
    assert record.last_error == "not yet"
    assert record.failed_at == START
    assert record.attempt == 1
    cluster.advance(100)
    # attempt 1 at 0, then +5 (1*5), +10 (2*5), +15 (3*5)
    assert times(jobs, "flaky") == [0.0, 5.0, 15.0, 30.0]
    assert errors == []
    assert seen == [{"x": 1, "done": True}]


def test_max_attempt_then_failed_and_error_feedback_once(jobs: Jobs) -> None:
    cluster = make_cluster(jobs, max_attempt=3, retry_multiplier=1)
    cluster.add_node("worker_1")
    jobs.failures_left = 100
    errors: list[dict[str, Any]] = []
    handle = cluster.distributor.enqueue("flaky", {}, error=errors.append)
    cluster.advance(100)
    assert times(jobs, "flaky") == [0.0, 1.0, 3.0]
    assert len(errors) == 1 and errors[0]["error"] == "not yet"
    failure = outcome_of(handle)
    assert failure.check(JobFailed) and failure.value.status == Status.FAILED
    record = stored(cluster, handle.id)  # remove_failed_jobs is False by default
    assert record.status == Status.FAILED
    cluster.stop()


def test_enqueue_overrides_max_attempt_and_retry_delay(cluster: LocalCluster, jobs: Jobs) -> None:
    jobs.failures_left = 100
    cluster.distributor.enqueue("flaky", {}, max_attempt=2, retry_delay=0.5)
    cluster.advance(100)
    assert times(jobs, "flaky") == [0.0, 0.5]


def test_definition_retry_delay_callable_gives_capped_backoff(
    cluster: LocalCluster, jobs: Jobs
) -> None:
    cluster.distributor.enqueue("backoff", {})
    cluster.advance(100)
    # delays 2, 4, then capped at 5; max_attempt=4 from the definition
    assert times(jobs, "backoff") == [0.0, 2.0, 6.0, 11.0]


# -- cancel and timeout ----------------------------------------------------------------------


def test_cancel_while_waiting_on_the_distributor(jobs: Jobs) -> None:
    cluster = make_cluster(jobs)
    handle = cluster.distributor.enqueue("tick", {})
    handle.cancel()
    cluster.add_node("worker_1")
    cluster.advance(10)
    assert times(jobs, "tick") == []
    assert outcome_of(handle).check(JobCancelled)
    cluster.stop()


def test_cancel_a_job_waiting_on_its_node(cluster: LocalCluster, jobs: Jobs) -> None:
    handle = cluster.distributor.enqueue("tick", {}, after=60)
    cluster.run()
    assert cluster.nodes["worker_1"].held == 1
    handle.cancel()
    cluster.run()
    cluster.advance(120)
    assert times(jobs, "tick") == []
    assert outcome_of(handle).check(JobCancelled)
    assert cluster.nodes["worker_1"].held == 0
    assert stored(cluster, handle.id) is None, "remove_cancelled_jobs is True by default"


def test_cancel_a_running_async_job_cancels_its_deferred(cluster: LocalCluster, jobs: Jobs) -> None:
    handle = cluster.distributor.enqueue("hang", {})
    cluster.run()
    running = jobs.pending[0]
    handle.cancel()
    cluster.run()
    assert running.called, "the job's Deferred was cancelled"
    assert outcome_of(handle).check(JobCancelled)
    assert cluster.distributor.pending == 0


def test_timeout_fails_the_attempt_by_cancelling_it(jobs: Jobs) -> None:
    cluster = make_cluster(jobs, max_attempt=1)
    cluster.add_node("worker_1")
    errors: list[dict[str, Any]] = []
    handle = cluster.distributor.enqueue("hang", {}, timeout=30, error=errors.append)
    cluster.advance(29.9)
    assert errors == []
    cluster.advance(0.1)
    assert errors and errors[0]["error_type"] == "TimeoutError"
    assert jobs.pending[0].called
    assert outcome_of(handle).check(JobFailed)
    cluster.stop()


# -- reflection and storage -----------------------------------------------------------------


def test_job_itself_is_seen_by_every_step_and_never_stored(jobs: Jobs) -> None:
    cluster = make_cluster(jobs, merge_job_itself_to_args=True, remove_done_jobs=False)
    cluster.add_node("worker_1")
    seen: list[dict[str, Any]] = []
    handle = cluster.distributor.enqueue("reflect", {"a": 1}, success=seen.append, period=60)
    cluster.run()
    assert len(jobs.seen_itself) == 2
    itself = jobs.seen_itself[0]
    for field in (
        "id", "name", "node", "status", "attempt", "run_at", "failed_at", "last_error",
        "period", "make_after", "distributor",
    ):  # fmt: skip
        assert field in itself, field
    assert itself["id"] == handle.id and itself["node"] == "worker_1"
    assert itself["status"] == "in progress" and itself["attempt"] == 1
    assert seen == [{"a": 1}]
    assert "job_itself" not in stored(cluster, handle.id).args
    cluster.stop()


def test_job_itself_reaches_errbacks(jobs: Jobs) -> None:
    cluster = make_cluster(jobs, merge_job_itself_to_args=True, max_attempt=1)
    cluster.add_node("worker_1")
    errors: list[dict[str, Any]] = []
    cluster.distributor.enqueue("reflect", {"fail": True}, error=errors.append)
    cluster.run()
    assert len(jobs.seen_itself) == 2  # the job, then the errback
    assert jobs.seen_itself[1]["attempt"] == 1
    assert "job_itself" not in errors[0]
    cluster.stop()


@pytest.mark.parametrize(
    ("setting", "job_name", "enqueue_options", "stays"),
    [
        ("remove_done_jobs", "tick", {}, Status.COMPLETE),
        ("remove_failed_jobs", "backoff", {"max_attempt": 1}, Status.FAILED),
        ("remove_cancelled_jobs", "stop_me", {"args": {"runs": 5}}, Status.CANCELLED),
    ],
)
def test_remove_settings_decide_what_stays_in_storage(
    jobs: Jobs, setting: str, job_name: str, enqueue_options: dict[str, Any], stays: Status
) -> None:
    for remove in (True, False):
        cluster = make_cluster(jobs, **{setting: remove})
        cluster.add_node("worker_1")
        options = dict(enqueue_options)
        args = options.pop("args", {})
        handle = cluster.distributor.enqueue(job_name, args, **options)
        cluster.advance(10)
        record = stored(cluster, handle.id)
        if remove:
            assert record is None
        else:
            assert record is not None and record.status == stays
        cluster.stop()


def test_a_failing_retry_delay_falls_back_to_the_default(jobs: Jobs) -> None:
    def broken(attempt: int) -> float:
        raise ZeroDivisionError("oops")

    jobs.registry.definitions["backoff"].retry_delay = broken
    cluster = make_cluster(jobs)
    cluster.add_node("worker_1")
    errors: list[dict[str, Any]] = []
    cluster.distributor.enqueue("backoff", {}, error=errors.append)
    cluster.advance(100)
    # attempt * retry_multiplier: 5, then 10, then 15 s
    assert times(jobs, "backoff") == [0.0, 5.0, 15.0, 30.0]
    assert len(errors) == 1
    cluster.stop()
