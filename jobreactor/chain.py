"""One attempt of a job: its function and callbacks as one Deferred chain, then errbacks.

The job function is the first callback and each ``job_callback`` the next, all sharing one
``args`` dict. If a step raises, the errbacks run in order on a copy of the attempt's
*starting* args plus ``error`` and ``error_type`` (the original's rule: what the failed steps
added is not seen there). For a ``defer=True`` job the same steps run in a thread of the
node's own pool, so a blocking job never stalls the reactor.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from typing import Any, Literal

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from jobreactor.definitions import JobDefinition, JobFunction
from jobreactor.errors import CancelJob

Args = dict[str, Any]


@attrs.frozen
class AttemptOutcome:
    """How one attempt ended.

    ``kind`` is ``"success"``, ``"error"`` (the node decides whether to retry) or
    ``"cancelled"`` (``CancelJob`` was raised; ``feedback`` says which feedback it earns).
    """

    kind: Literal["success", "error", "cancelled"]
    args: Args
    feedback: Literal["success", "error"]
    error: str | None = None
    error_type: str | None = None


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


def _chain(steps: Sequence[JobFunction], args: Args) -> Deferred[Args]:
    chain: Deferred[Args] = Deferred()
    for step in steps:
        chain.addCallback(_call_step_with, step)
    chain.callback(args)
    return chain


async def _run_errbacks(errbacks: Sequence[tuple[str, JobFunction]], args: Args) -> bool:
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
        except Exception as error:
            message = f"{name}: {type(error).__name__}: {error}"
            previous = args.get("errback_error")
            args["errback_error"] = f"{previous}; {message}" if previous else message
    return False


def _fired_result(deferred: Deferred[Any], what: str) -> Any:
    """The result of an already fired Deferred, for code running inside a pool thread."""
    box: list[Any] = []
    deferred.addBoth(box.append)
    if not box:
        deferred.cancel()
        raise TypeError(
            f"{what} of a defer=True job waited on something asynchronous; "
            "thread jobs must be plain functions (drop defer=True to use Deferreds or async)"
        )
    result = box[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result


def _describe(failure: Failure, timeout: float | None) -> tuple[str, str]:
    if timeout is not None and failure.check(defer.TimeoutError):
        return f"the attempt ran longer than its timeout of {timeout:g} s", "TimeoutError"
    error = failure.value
    return (str(error) or repr(error)), type(error).__name__


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

    ``job_itself`` (the job's own record) is visible to every step under
    ``args["job_itself"]`` and removed from the outcome's args. With ``threadpool`` the
    steps run in that pool (``reactor`` delivers the results back); cancelling the returned
    Deferred does not stop a thread that is running.
    """
    assert definition.function is not None
    start_args = copy.deepcopy(args)
    work_args = copy.deepcopy(args)
    if job_itself is not None:
        work_args["job_itself"] = job_itself
    steps = [definition.function] + [step for _, step in definition.callbacks]

    def in_place(function: Callable[..., Any], *arguments: Any) -> Deferred[Any]:
        if threadpool is None:
            return defer.maybeDeferred(function, *arguments)
        assert reactor is not None
        return deferToThreadPool(reactor, threadpool, function, *arguments)  # type: ignore[arg-type]

    def run_chain() -> Any:
        chained = _chain(steps, work_args)
        return chained if threadpool is None else _fired_result(chained, "a step")

    def succeeded(final_args: Args) -> AttemptOutcome:
        final_args.pop("job_itself", None)
        return AttemptOutcome("success", final_args, "success")

    def failed(failure: Failure) -> Deferred[AttemptOutcome] | AttemptOutcome:
        if failure.check(CancelJob):
            work_args.pop("job_itself", None)
            return AttemptOutcome("cancelled", work_args, "success")
        error, error_type = _describe(failure, timeout)
        errback_args = copy.deepcopy(start_args)
        errback_args.update(error=error, error_type=error_type)
        if job_itself is not None:
            errback_args["job_itself"] = job_itself

        def run_errbacks() -> Any:
            pending = Deferred.fromCoroutine(_run_errbacks(definition.errbacks, errback_args))
            return pending if threadpool is None else _fired_result(pending, "an errback")

        def finish(cancelled: bool) -> AttemptOutcome:
            errback_args.pop("job_itself", None)
            kind: Literal["error", "cancelled"] = "cancelled" if cancelled else "error"
            return AttemptOutcome(kind, errback_args, "error", error, error_type)

        def errbacks_broke(failure: Failure) -> AttemptOutcome:
            errback_args["errback_error"] = _describe(failure, None)[0]
            return finish(False)

        return in_place(run_errbacks).addCallbacks(finish, errbacks_broke)

    attempt = in_place(run_chain)
    if timeout is not None:
        attempt.addTimeout(timeout, clock)
    return attempt.addCallbacks(succeeded, failed)
