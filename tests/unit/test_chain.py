"""One attempt of a job: the Deferred chain of the job and its callbacks, then the errbacks.

Time is a ``task.Clock``; only the thread-job tests use the real reactor (to get results
back from a real pool thread) and they wait on no socket and no sleep.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any, cast

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.task import Clock, deferLater
from twisted.python.threadpool import ThreadPool

from jobreactor.chain import AttemptOutcome, run_attempt
from jobreactor.definitions import JobDefinition, JobFunction
from jobreactor.errors import CancelJob

Args = dict[str, Any]
WAIT = 5.0
THREADS = cast(IReactorThreads, reactor)


def define(
    function: JobFunction,
    callbacks: list[JobFunction] | None = None,
    errbacks: list[JobFunction] | None = None,
) -> JobDefinition:
    return JobDefinition(
        "test_job",
        function,
        callbacks=[(f.__name__, f) for f in callbacks or []],
        errbacks=[(f.__name__, f) for f in errbacks or []],
    )


def fired(deferred: Deferred[AttemptOutcome]) -> AttemptOutcome:
    """The outcome of an attempt that must have ended by now."""
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, "the attempt has not ended"
    assert isinstance(results[0], AttemptOutcome), results[0]
    return results[0]


def pending(deferred: Deferred[Any]) -> bool:
    """Whether the Deferred has no result yet (a Deferred waiting on another has none)."""
    return not deferred.called or isinstance(deferred.result, Deferred)


def attempt(definition: JobDefinition, args: Args, **options: Any) -> Deferred[AttemptOutcome]:
    options.setdefault("clock", Clock())
    return run_attempt(definition, args, **options)


# -- the chain --------------------------------------------------------------------------


def test_job_and_callbacks_share_args_in_definition_order() -> None:
    order: list[str] = []

    def job(args: Args) -> None:
        order.append("job")
        args["result"] = "Yay!"

    def first(args: Args) -> None:
        order.append("first")
        args["seen_by_first"] = args["result"]

    def second(args: Args) -> None:
        order.append("second")
        args["seen_by_second"] = args["seen_by_first"]

    outcome = fired(attempt(define(job, [first, second]), {"arg1": 1}))

    assert order == ["job", "first", "second"]
    assert outcome == AttemptOutcome(
        "success",
        {"arg1": 1, "result": "Yay!", "seen_by_first": "Yay!", "seen_by_second": "Yay!"},
        "success",
    )


def test_a_returned_dict_is_merged_and_the_callers_args_are_left_alone() -> None:
    given = {"arg1": 1, "nested": {"n": 1}}

    def job(args: Args) -> Args:
        args["nested"]["n"] = 2
        return {"result": "merged"}

    def callback(args: Args) -> str:
        args["saw"] = args["result"]
        return "a non-dict return is ignored"

    outcome = fired(attempt(define(job, [callback]), given))

    assert outcome.args == {"arg1": 1, "nested": {"n": 2}, "result": "merged", "saw": "merged"}
    assert given == {"arg1": 1, "nested": {"n": 1}}


def test_a_returned_deferred_is_awaited_before_the_next_callback() -> None:
    later: Deferred[Args] = Deferred()
    seen: list[Any] = []

    def job(args: Args) -> Deferred[Args]:
        return later

    def callback(args: Args) -> None:
        seen.append(args.get("from_deferred"))

    result = attempt(define(job, [callback]), {})
    assert pending(result)
    assert seen == []

    later.callback({"from_deferred": 42})

    assert seen == [42]
    assert fired(result).args == {"from_deferred": 42}


def test_an_async_job_is_awaited_on_the_clock() -> None:
    clock = Clock()

    async def job(args: Args) -> Args:
        await deferLater(clock, 2.0, lambda: None)
        return {"slept": True}

    async def callback(args: Args) -> None:
        args["after_sleep"] = args["slept"]

    result = run_attempt(define(job, [callback]), {"a": 1}, clock=clock)
    clock.advance(1.999)
    assert pending(result)
    clock.advance(0.001)

    assert fired(result) == AttemptOutcome(
        "success", {"a": 1, "slept": True, "after_sleep": True}, "success"
    )


# -- errors and errbacks ----------------------------------------------------------------


def test_errbacks_run_in_order_with_the_starting_args_plus_the_error() -> None:
    received: list[tuple[str, Args]] = []

    def job(args: Args) -> None:
        args["partial"] = "added before the failure"

    def callback(args: Args) -> None:
        raise ValueError("disk full")

    def never(args: Args) -> None:
        raise AssertionError("a callback after the failing one ran")

    def first(args: Args) -> Args:
        received.append(("first", dict(args)))
        return {"cleaned": True}

    def second(args: Args) -> None:
        received.append(("second", dict(args)))

    outcome = fired(attempt(define(job, [callback, never], [first, second]), {"arg1": 1}))

    starting_plus_error = {"arg1": 1, "error": "disk full", "error_type": "ValueError"}
    assert received == [
        ("first", starting_plus_error),
        ("second", {**starting_plus_error, "cleaned": True}),
    ]
    assert outcome == AttemptOutcome(
        "error",
        {**starting_plus_error, "cleaned": True},
        "error",
        "disk full",
        "ValueError",
    )


def test_an_error_in_an_errback_is_recorded_and_the_rest_still_run() -> None:
    ran: list[str] = []

    def job(args: Args) -> None:
        raise RuntimeError("job broke")

    def broken(args: Args) -> None:
        ran.append("broken")
        raise KeyError("missing")

    def exits(args: Args) -> None:
        ran.append("exits")
        raise SystemExit(3)

    def last(args: Args) -> None:
        ran.append("last")

    outcome = fired(attempt(define(job, errbacks=[broken, exits, last]), {}))

    assert ran == ["broken", "exits", "last"]
    assert outcome.kind == "error"
    assert outcome.error == "job broke"
    assert outcome.args["errback_error"] == "broken: KeyError: 'missing'; exits: SystemExit: 3"


def test_an_async_errback_is_awaited_before_the_next_one() -> None:
    clock = Clock()
    ran: list[str] = []

    def job(args: Args) -> None:
        raise ValueError("no")

    async def slow(args: Args) -> None:
        await deferLater(clock, 3.0, lambda: None)
        ran.append("slow")

    def after(args: Args) -> None:
        ran.append("after")

    result = run_attempt(define(job, errbacks=[slow, after]), {}, clock=clock)
    clock.advance(2.9)
    assert ran == []
    assert pending(result)
    clock.advance(0.1)

    assert ran == ["slow", "after"]
    assert fired(result).kind == "error"


def test_an_unknown_exception_without_a_message_is_described_by_its_repr() -> None:
    class Oops(Exception):
        pass

    def job(args: Args) -> None:
        raise Oops()

    outcome = fired(attempt(define(job), {}))

    assert (outcome.error, outcome.error_type) == ("Oops()", "Oops")


# -- CancelJob --------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["job", "callback"])
def test_cancel_job_in_the_chain_cancels_with_the_success_feedback(where: str) -> None:
    errbacks_ran: list[Args] = []

    def job(args: Args) -> None:
        args["step"] = "job"
        if where == "job":
            raise CancelJob()

    def callback(args: Args) -> None:
        args["step"] = "callback"
        raise CancelJob()

    def after(args: Args) -> None:
        args["step"] = "a callback after CancelJob ran"

    outcome = fired(
        attempt(define(job, [callback, after], [errbacks_ran.append]), {"period_run": 1})
    )

    assert outcome == AttemptOutcome("cancelled", {"period_run": 1, "step": where}, "success")
    assert errbacks_ran == []


def test_cancel_job_in_an_errback_cancels_with_the_error_feedback() -> None:
    def job(args: Args) -> None:
        raise ValueError("bad input")

    def give_up(args: Args) -> None:
        args["gave_up"] = True
        raise CancelJob()

    outcome = fired(attempt(define(job, errbacks=[give_up]), {"x": 1}))

    assert outcome.kind == "cancelled"
    assert outcome.feedback == "error"
    assert (outcome.error, outcome.error_type) == ("bad input", "ValueError")
    assert outcome.args == {
        "x": 1,
        "error": "bad input",
        "error_type": "ValueError",
        "gave_up": True,
    }


# -- timeouts and cancellation ----------------------------------------------------------


def test_an_attempt_longer_than_its_timeout_fails_with_timeout_error() -> None:
    clock = Clock()
    step_cancelled: list[bool] = []
    errback_saw: list[tuple[str, str]] = []

    def job(args: Args) -> Deferred[None]:
        return Deferred(lambda _: step_cancelled.append(True))

    def errback(args: Args) -> None:
        errback_saw.append((args["error"], args["error_type"]))

    result = run_attempt(define(job, errbacks=[errback]), {}, clock=clock, timeout=5)
    clock.advance(4.999)
    assert pending(result)
    clock.advance(0.001)

    outcome = fired(result)
    assert outcome.kind == "error"
    assert outcome.error_type == "TimeoutError"
    assert outcome.error is not None and "timeout of 5 s" in outcome.error
    assert errback_saw == [(outcome.error, "TimeoutError")]
    assert step_cancelled == [True]


def test_an_attempt_within_its_timeout_succeeds_and_leaves_no_timer() -> None:
    clock = Clock()

    def job(args: Args) -> Deferred[None]:
        return deferLater(clock, 3.0, lambda: None)

    result = run_attempt(define(job), {}, clock=clock, timeout=5)
    clock.advance(3.0)

    assert fired(result).kind == "success"
    assert clock.getDelayedCalls() == []


def test_cancelling_the_attempt_ends_it_as_cancelled_without_errbacks() -> None:
    step: Deferred[None] = Deferred()
    errbacks_ran: list[Args] = []

    def job(args: Args) -> Deferred[None]:
        args["half_done"] = True
        return step

    result = attempt(define(job, errbacks=[errbacks_ran.append]), {"a": 1})
    result.cancel()

    outcome = fired(result)
    assert outcome.kind == "cancelled"
    assert outcome.args == {"a": 1}
    assert errbacks_ran == []
    assert step.called  # the pending step was cancelled too
    step.addErrback(lambda failure: failure.trap(CancelledError))


# -- job_itself -------------------------------------------------------------------------


def test_job_itself_is_seen_by_every_step_and_errback_but_not_in_the_outcome() -> None:
    record = {"id": "1234", "name": "test_job", "attempt": 2}
    seen: list[tuple[str, Any]] = []

    def job(args: Args) -> None:
        seen.append(("job", args.get("job_itself")))

    def callback(args: Args) -> None:
        seen.append(("callback", args.get("job_itself")))
        raise ValueError("then fail")

    def errback(args: Args) -> None:
        seen.append(("errback", args.get("job_itself")))

    given: Args = {"arg1": 1}
    outcome = fired(attempt(define(job, [callback], [errback]), given, job_itself=record))

    assert seen == [("job", record), ("callback", record), ("errback", record)]
    assert "job_itself" not in outcome.args
    assert given == {"arg1": 1}


def test_job_itself_is_absent_from_a_successful_outcome() -> None:
    def job(args: Args) -> None:
        args["attempt_seen"] = args["job_itself"]["attempt"]

    outcome = fired(attempt(define(job), {}, job_itself={"attempt": 3}))

    assert outcome.args == {"attempt_seen": 3}


# -- the outcome goes back as JSON ------------------------------------------------------


def test_a_job_that_leaves_a_non_json_value_in_args_fails_naming_the_key() -> None:
    def job(args: Args) -> None:
        args["when"] = threading.Lock()

    errback_args: list[Args] = []
    outcome = fired(attempt(define(job, errbacks=[errback_args.append]), {"a": 1}))

    assert outcome.kind == "error"
    assert outcome.error_type == "TypeError"
    assert outcome.error is not None and "'when'" in outcome.error
    assert errback_args and "when" not in errback_args[0]
    json.dumps(outcome.args)


def test_an_errback_that_leaves_a_non_json_value_still_gives_a_reportable_outcome() -> None:
    def job(args: Args) -> None:
        raise ValueError("x")

    def errback(args: Args) -> None:
        args["details"] = {1, 2}

    outcome = fired(attempt(define(job, errbacks=[errback]), {}))

    assert outcome.kind == "error"
    assert outcome.args["details"] == "{1, 2}"
    json.dumps(outcome.args)


# -- thread jobs ------------------------------------------------------------------------


@pytest.fixture
def pool() -> Iterator[ThreadPool]:
    threads = ThreadPool(minthreads=1, maxthreads=2, name="test-chain")
    threads.start()
    yield threads
    threads.stop()


async def in_thread(
    definition: JobDefinition, args: Args, pool: ThreadPool, **options: Any
) -> AttemptOutcome:
    options.setdefault("clock", reactor)
    result = run_attempt(definition, args, threadpool=pool, reactor=THREADS, **options)
    outcome: AttemptOutcome = await result.addTimeout(WAIT, reactor)
    return outcome


@pytest_twisted.ensureDeferred
async def test_a_thread_job_runs_its_steps_and_errbacks_in_another_thread(
    pool: ThreadPool,
) -> None:
    reactor_thread = threading.get_ident()
    threads: dict[str, int] = {}

    def job(args: Args) -> Args:
        threads["job"] = threading.get_ident()
        return {"result": "from a thread"}

    def callback(args: Args) -> None:
        threads["callback"] = threading.get_ident()
        raise ValueError(args["result"])

    def errback(args: Args) -> None:
        threads["errback"] = threading.get_ident()

    outcome = await in_thread(define(job, [callback], [errback]), {}, pool)

    assert outcome.kind == "error"
    assert outcome.error == "from a thread"
    assert set(threads) == {"job", "callback", "errback"}
    assert reactor_thread not in threads.values()


@pytest_twisted.ensureDeferred
async def test_a_successful_thread_job_merges_its_result(pool: ThreadPool) -> None:
    def job(args: Args) -> Args:
        return {"thread": threading.get_ident() != reactor_thread}

    reactor_thread = threading.get_ident()
    outcome = await in_thread(define(job), {"a": 1}, pool, job_itself={"id": "j"})

    assert outcome == AttemptOutcome("success", {"a": 1, "thread": True}, "success")


def returns_deferred(args: Args) -> Deferred[None]:
    return succeed(None)


async def returns_coroutine(args: Args) -> None:
    return None


@pytest.mark.parametrize(
    ("function", "returned"), [(returns_deferred, "Deferred"), (returns_coroutine, "coroutine")]
)
@pytest_twisted.ensureDeferred
async def test_a_thread_job_that_returns_a_deferred_or_coroutine_is_an_error(
    pool: ThreadPool, function: JobFunction, returned: str
) -> None:
    outcome = await in_thread(define(function), {}, pool)

    assert outcome.kind == "error"
    assert outcome.error_type == "TypeError"
    assert outcome.error is not None
    assert returned in outcome.error and "defer=True" in outcome.error


@pytest_twisted.ensureDeferred
async def test_cancel_job_in_a_thread_job_and_in_a_thread_errback(pool: ThreadPool) -> None:
    def cancels(args: Args) -> None:
        raise CancelJob()

    def fails(args: Args) -> None:
        raise ValueError("no")

    in_job = await in_thread(define(cancels), {}, pool)
    in_errback = await in_thread(define(fails, errbacks=[cancels]), {}, pool)

    assert (in_job.kind, in_job.feedback) == ("cancelled", "success")
    assert (in_errback.kind, in_errback.feedback) == ("cancelled", "error")


@pytest_twisted.ensureDeferred
async def test_a_thread_job_past_its_timeout_is_an_error_while_its_thread_goes_on(
    pool: ThreadPool,
) -> None:
    clock = Clock()
    started = threading.Event()
    release = threading.Event()

    def job(args: Args) -> None:
        started.set()
        release.wait(WAIT)

    result = run_attempt(define(job), {}, clock=clock, timeout=1, threadpool=pool, reactor=THREADS)
    try:
        assert started.wait(WAIT)
        clock.advance(1)
        outcome: AttemptOutcome = await result.addTimeout(WAIT, reactor)
    finally:
        release.set()

    assert (outcome.kind, outcome.error_type) == ("error", "TimeoutError")
