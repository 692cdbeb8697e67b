"""One attempt of a job: its function and callbacks as one Deferred chain, then errbacks.

The job function is the first callback and each ``job_callback`` the next, all sharing one
``args`` dict. If a step raises, the errbacks run in order on a copy of the attempt's
*starting* args plus ``error`` and ``error_type`` (the original's rule: what the failed steps
added is not seen there). For a ``defer=True`` job the same steps run in a thread of the
node's own pool, so a blocking job never stalls the reactor; there a step must be a plain
function (a Deferred or a coroutine has no reactor thread to run in).

Steps that return plain values are called directly, one after the other, with no Deferred:
most jobs neither wait nor fail, and a node runs a burst of them at the cost of plain calls
(:func:`run_attempt_now`). The first step that returns a Deferred or a coroutine, or raises,
hands the rest to the chain, which behaves exactly as if it had held every step.

The args an attempt ends with go back to the distributor as JSON, so they must stay
JSON-serializable: a job that leaves, say, a ``datetime`` in them fails that attempt with a
``TypeError`` naming the key (rather than breaking the report of every job sent with it).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from typing import Any, Literal

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from jobreactor.definitions import JobDefinition, JobFunction
from jobreactor.errors import CancelJob
from jobreactor.jsontext import compact
from jobreactor.model import flat_json

Args = dict[str, Any]
Step = tuple[str, JobFunction]


@attrs.frozen
class AttemptOutcome:
    """How one attempt ended.

    ``kind`` is ``"success"``, ``"error"`` (the node decides whether to retry) or
    ``"cancelled"`` (``CancelJob`` was raised, or the caller cancelled the attempt's
    Deferred; ``feedback`` says which feedback it earns).
    """

    kind: Literal["success", "error", "cancelled"]
    args: Args
    feedback: Literal["success", "error"]
    error: str | None = None
    error_type: str | None = None
    #: The failing step's traceback text (its last ``TRACEBACK_CHARS``), for the dashboard;
    #: text for people, so outcomes compare equal without it.
    traceback: str | None = attrs.field(default=None, eq=False)


#: At most this many characters of a traceback travel in a report (the end: the raise).
TRACEBACK_CHARS = 4000


def _traceback_text(failure: Failure, timeout: float | None) -> str | None:
    if timeout is not None and failure.check(defer.TimeoutError):
        return None  # the traceback of the timer says nothing about the job
    text = failure.getTraceback(detail="brief" if not failure.frames else "default")
    return text[-TRACEBACK_CHARS:] if text else None


def _merge(result: Any, args: Args) -> Args:
    if isinstance(result, dict) and result is not args:
        args.update(result)
    return args


def _call_step(function: JobFunction, args: Args) -> Any:
    """Call one step; a dict result is merged, an awaitable is waited for first."""
    result = function(args)
    if inspect.iscoroutine(result):
        result = Deferred.fromCoroutine(result)
    if isinstance(result, Deferred):
        return result.addCallback(_merge, args)
    return _merge(result, args)


def _call_step_with(args: Args, step: JobFunction) -> Any:
    return _call_step(step, args)


def _json_problems(args: Args) -> list[str]:
    """The top-level entries of ``args`` that JSON cannot carry (``job_itself`` aside)."""
    payload = {key: value for key, value in args.items() if key != "job_itself"}
    try:
        compact(payload)
    except (TypeError, ValueError, RecursionError):
        pass
    else:
        return []
    problems = []
    for key, value in payload.items():
        try:
            compact({key: value})
        except (TypeError, ValueError, RecursionError):
            problems.append(key)
    return problems


#: Types whose values a copy may share: a dict of only these is copied by ``dict(args)``.
_IMMUTABLE = frozenset({str, int, float, bool, type(None)})


def _copy_args(args: Args) -> Args:
    """A copy of ``args`` that nothing else holds: a dict of strings, numbers, booleans and
    None (the usual args) is copied flat, a fraction of the cost of ``copy.deepcopy``, which
    copies anything else."""
    if type(args) is dict:
        for key, value in args.items():
            if type(key) is not str or type(value) not in _IMMUTABLE:
                break
        else:
            return args.copy()
    return copy.deepcopy(args)


def _check_json(args: Args) -> Args:
    if "job_itself" not in args and flat_json(args):
        return args
    problems = _json_problems(args)
    if problems:
        described = ", ".join(f"{key!r} holds {type(args[key]).__name__}" for key in problems)
        raise TypeError(
            f"job args must stay JSON-serializable to be reported, but {described}; "
            "store a string or number instead"
        )
    return args


def _make_reportable(args: Args) -> None:
    """Replace what JSON cannot carry by its ``repr``: the outcome must reach the distributor."""
    for key in _json_problems(args):
        value = args.pop(key)
        args[key if isinstance(key, str) else repr(key)] = repr(value)[:1000]


def _chain_after(first: Deferred[Any], steps: Sequence[Step]) -> Deferred[Args]:
    """The rest of an attempt once a step returned ``first``: wait for it, then ``steps``."""
    chain: Deferred[Args] = Deferred()
    chain.addCallback(lambda _: first)  # chained: cancelling the chain cancels ``first``
    for _, step in steps:
        chain.addCallback(_call_step_with, step)
    chain.addCallback(_check_json)
    chain.callback({})
    return chain


def _refuse_async(result: Any, what: str) -> None:
    """In a pool thread a Deferred or coroutine has nobody to run it: refuse it clearly."""
    if inspect.iscoroutine(result):
        result.close()  # never started; closing it avoids a "never awaited" warning
    elif isinstance(result, Deferred):
        if result.called:
            result.addErrback(lambda _: None)  # its failure, if any, is reported below
    elif not inspect.isawaitable(result):
        return
    raise TypeError(
        f"{what} of a defer=True job returned {type(result).__name__}; thread jobs must be "
        "plain functions (drop defer=True to use Deferreds or async def)"
    )


def _run_steps_in_thread(steps: Sequence[Step], args: Args) -> Args:
    """The chain of a ``defer=True`` job, run in a pool thread."""
    for name, step in steps:
        result = step(args)
        _refuse_async(result, f"step {name!r}")
        _merge(result, args)
    return _check_json(args)


def _errback_failed(args: Args, name: str, error: BaseException) -> None:
    message = f"{name}: {type(error).__name__}: {error}"
    previous = args.get("errback_error")
    args["errback_error"] = f"{previous}; {message}" if previous else message


async def _run_errbacks(errbacks: Sequence[Step], args: Args) -> bool:
    """Run every errback; return whether one raised ``CancelJob``.

    An errback that raises does not stop the others: its error is kept in
    ``args["errback_error"]`` so the error feedback shows it.
    """
    for name, errback in errbacks:
        try:
            result = errback(args)
            if inspect.iscoroutine(result) or isinstance(result, Deferred):
                result = await result
            _merge(result, args)
        except CancelJob:
            return True
        except (Exception, SystemExit) as error:
            _errback_failed(args, name, error)
    return False


def _run_errbacks_in_thread(errbacks: Sequence[Step], args: Args) -> bool:
    """:func:`_run_errbacks` for a ``defer=True`` job, run in a pool thread."""
    for name, errback in errbacks:
        try:
            result = errback(args)
            _refuse_async(result, f"errback {name!r}")
            _merge(result, args)
        except CancelJob:
            return True
        except (Exception, SystemExit) as error:
            _errback_failed(args, name, error)
    return False


def _describe(failure: Failure, timeout: float | None) -> tuple[str, str]:
    if timeout is not None and failure.check(defer.TimeoutError):
        return f"the attempt ran longer than its timeout of {timeout:g} s", "TimeoutError"
    error = failure.value
    return (str(error) or repr(error)), type(error).__name__


def _drop_itself(args: Args, job_itself: dict[str, Any] | None) -> None:
    """Remove the reflection the node added; a user's own ``job_itself`` key stays."""
    if job_itself is not None:
        args.pop("job_itself", None)


def run_attempt(
    definition: JobDefinition,
    args: Args,
    *,
    clock: IReactorTime,
    job_itself: dict[str, Any] | None = None,
    timeout: float | None = None,
    threadpool: ThreadPool | None = None,
    reactor: IReactorThreads | None = None,
) -> Deferred[AttemptOutcome]:
    """Run one attempt of ``definition`` on ``args``; the Deferred never fails.

    ``args`` is not changed: the attempt works on a copy (the caller must not change it
    either until the attempt has ended: the errbacks start from it). ``job_itself`` (the
    job's own record) is visible to every step and errback under ``args["job_itself"]`` and
    removed from the outcome's args. With ``threadpool`` the steps and errbacks run in that
    pool (``reactor`` delivers the results back).

    Cancelling the returned Deferred ends the attempt at once as ``"cancelled"`` without
    running the errbacks: a step's pending Deferred is cancelled, but a thread that is
    running is not stopped (its result is ignored), and errbacks already running finish on
    their own.
    """
    outcome = run_attempt_now(
        definition,
        args,
        clock=clock,
        job_itself=job_itself,
        timeout=timeout,
        threadpool=threadpool,
        reactor=reactor,
    )
    return outcome if isinstance(outcome, Deferred) else succeed(outcome)


def run_attempt_now(
    definition: JobDefinition,
    args: Args,
    *,
    clock: IReactorTime,
    job_itself: dict[str, Any] | None = None,
    timeout: float | None = None,
    threadpool: ThreadPool | None = None,
    reactor: IReactorThreads | None = None,
) -> AttemptOutcome | Deferred[AttemptOutcome]:
    """:func:`run_attempt`, but an attempt that ended at once gives its outcome itself.

    The steps run here one after the other while each returns a plain value: a job and
    callbacks that neither wait nor fail (most jobs) cost no Deferred, so a node runs a
    burst of them in one reactor turn at the cost of plain calls. The first step that
    returns a Deferred or a coroutine, a step that raises, and a ``defer=True`` job go on
    as :func:`run_attempt`'s Deferred chain, with the same timeout, errbacks and cancel.
    """
    function = definition.function
    if function is None:
        raise ValueError(f"job {definition.name!r} has callbacks or errbacks but no function")
    if threadpool is not None and reactor is None:
        raise ValueError("run_attempt needs reactor= to run a job in a thread pool")
    work_args = _copy_args(args)
    if job_itself is not None:
        work_args["job_itself"] = copy.deepcopy(job_itself)
    steps: list[Step] = [(definition.name, function), *definition.callbacks]
    if threadpool is not None:
        chain: Deferred[Args] = _in_thread(
            reactor, threadpool, _run_steps_in_thread, steps, work_args
        )
        return _settle(
            chain, definition, args, work_args, job_itself, timeout, clock, threadpool, reactor
        )
    for index, (_, step) in enumerate(steps):
        try:
            result = step(work_args)
        except BaseException:  # as a Deferred's callback would: KeyboardInterrupt too
            chain = fail(Failure(captureVars=Deferred.debug))
            break
        if inspect.iscoroutine(result):
            result = Deferred.fromCoroutine(result)
        if isinstance(result, Deferred):
            chain = _chain_after(result.addCallback(_merge, work_args), steps[index + 1 :])
            break
        _merge(result, work_args)
    else:
        try:
            _check_json(work_args)
        except BaseException:
            chain = fail(Failure(captureVars=Deferred.debug))
        else:
            _drop_itself(work_args, job_itself)
            return AttemptOutcome("success", work_args, "success")
    return _settle(
        chain, definition, args, work_args, job_itself, timeout, clock, threadpool, reactor
    )


def _in_thread(
    reactor: IReactorThreads | None, threadpool: ThreadPool | None, function: Any, *arguments: Any
) -> Deferred[Any]:
    return deferToThreadPool(reactor, threadpool, function, *arguments)  # type: ignore[arg-type]


def _settle(
    chain: Deferred[Args],
    definition: JobDefinition,
    start_args: Args,
    work_args: Args,
    job_itself: dict[str, Any] | None,
    timeout: float | None,
    clock: IReactorTime,
    threadpool: ThreadPool | None,
    reactor: IReactorThreads | None,
) -> Deferred[AttemptOutcome]:
    """The outcome of an attempt whose steps go on in ``chain``: timeout, errbacks, cancel."""
    cancelled_by_caller = False
    errbacks_started = False

    def cancelled_outcome() -> AttemptOutcome:
        return AttemptOutcome(
            "cancelled",
            _copy_args(start_args),
            "error",
            "the attempt was cancelled",
            "CancelledError",
        )

    def succeeded(final_args: Args) -> AttemptOutcome:
        _drop_itself(final_args, job_itself)
        return AttemptOutcome("success", final_args, "success")

    def failed(failure: Failure) -> Deferred[AttemptOutcome] | AttemptOutcome:
        nonlocal errbacks_started
        if cancelled_by_caller and failure.check(defer.CancelledError):
            return cancelled_outcome()
        if failure.check(CancelJob):
            _drop_itself(work_args, job_itself)
            _make_reportable(work_args)
            return AttemptOutcome("cancelled", work_args, "success")
        error, error_type = _describe(failure, timeout)
        trace = _traceback_text(failure, timeout)
        errback_args = _copy_args(start_args)
        errback_args.update(error=error, error_type=error_type)
        if job_itself is not None:
            errback_args["job_itself"] = copy.deepcopy(job_itself)
        errbacks_started = True
        pending: Deferred[bool] = (
            Deferred.fromCoroutine(_run_errbacks(definition.errbacks, errback_args))
            if threadpool is None
            else _in_thread(
                reactor, threadpool, _run_errbacks_in_thread, definition.errbacks, errback_args
            )
        )

        def finish(cancelled: bool) -> AttemptOutcome:
            _drop_itself(errback_args, job_itself)
            _make_reportable(errback_args)
            kind: Literal["error", "cancelled"] = "cancelled" if cancelled else "error"
            return AttemptOutcome(kind, errback_args, "error", error, error_type, trace)

        def errbacks_broke(failure: Failure) -> AttemptOutcome:
            errback_args["errback_error"] = _describe(failure, None)[0]
            return finish(False)

        return pending.addCallbacks(finish, errbacks_broke)

    def broke(failure: Failure) -> AttemptOutcome:
        # Only a bug in this module gets here; the promise is still an outcome.
        error, error_type = _describe(failure, None)
        return AttemptOutcome("error", _copy_args(start_args), "error", error, error_type)

    def deliver(result: AttemptOutcome) -> None:
        if not outcome.called:
            outcome.callback(cancelled_outcome() if cancelled_by_caller else result)

    def cancel(_: Deferred[AttemptOutcome]) -> None:
        nonlocal cancelled_by_caller
        cancelled_by_caller = True
        if not errbacks_started:
            chain.cancel()
        if not outcome.called:
            # A thread still running, errbacks still running, or a step that swallowed
            # the cancellation: the caller asked for an end now.
            outcome.callback(cancelled_outcome())

    outcome: Deferred[AttemptOutcome] = Deferred(cancel)
    if timeout is not None:
        chain.addTimeout(timeout, clock)
    chain.addCallbacks(succeeded, failed).addErrback(broke).addCallback(deliver)
    return outcome
