"""What ``enqueue`` returns: the job id, a Deferred for Twisted code, a blocking wait."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python import threadable
from twisted.python.failure import Failure

from jobreactor.errors import JobReactorError

#: Guards making a handle's Event (two threads waiting on one handle must share it).
_EVENT_LOCK = threading.Lock()


class JobHandle:
    """The application's grip on one enqueued job.

    ``deferred`` (reactor thread only) fires with the args of the job's final successful run,
    or fails with :class:`~jobreactor.JobFailed` / :class:`~jobreactor.JobCancelled`. It is
    made on first use, so an application that only uses feedbacks gets no "Unhandled error
    in Deferred" for the jobs that fail. ``result()`` waits for the same outcome from any
    other thread.
    """

    __slots__ = (
        "_acceptance",
        "_acceptance_waiters",
        "_accepted_event",
        "_cancel",
        "_deferred",
        "_done",
        "_outcome",
        "_settled",
        "id",
        "name",
    )

    def __init__(self, job_id: str, name: str, cancel: Callable[[JobHandle], None]) -> None:
        self.id = job_id
        self.name = name
        self._cancel = cancel
        self._outcome: Any = None
        self._settled = False
        #: Made only when a thread waits in ``result()``: most handles never need one, and
        #: an Event (a Condition and its locks) costs more than the rest of the handle.
        self._done: threading.Event | None = None
        self._deferred: Deferred[dict[str, Any]] | None = None
        #: True once kept, a Failure if refused, None while waiting to be kept.
        self._acceptance: Any = True
        self._acceptance_waiters: list[Deferred[str]] | None = None
        self._accepted_event: threading.Event | None = None

    def __repr__(self) -> str:
        state = "done" if self._settled else "pending"
        return f"<JobHandle {self.name!r} {self.id} {state}>"

    @property
    def done(self) -> bool:
        return self._settled

    @property
    def deferred(self) -> Deferred[dict[str, Any]]:
        if self._deferred is None:
            self._deferred = Deferred()
            if self._settled:
                self._fire(self._deferred)
        return self._deferred

    @property
    def accepted(self) -> Deferred[str]:
        """Fires with the job id once the job is kept where it survives a restart of the
        distributor: written to its storage (at once with memory storage, which keeps
        nothing), or, through a remote client, once the distributor answered that it owns
        it. Fails if the job was refused instead. Reactor thread."""
        if self._acceptance is True:
            return succeed(self.id)
        if isinstance(self._acceptance, Failure):
            return fail(self._acceptance)
        waiter: Deferred[str] = Deferred()
        if self._acceptance_waiters is None:
            self._acceptance_waiters = []
        self._acceptance_waiters.append(waiter)
        return waiter

    def wait_accepted(self, timeout: float | None = None) -> str:
        """Block a non-reactor thread until the job is kept (see ``accepted``); return its id.

        Raises ``TimeoutError`` after ``timeout`` seconds, or the refusal's error.
        """
        if threadable.isInIOThread() and self._acceptance is None:
            raise RuntimeError(
                "JobHandle.wait_accepted() called in the reactor thread: use handle.accepted"
            )
        event = self._accepted_event
        if event is None:
            event = self._accepted_event = threading.Event()
            if self._acceptance is not None:
                event.set()
        if not event.wait(timeout):
            raise TimeoutError(f"job {self.name!r} ({self.id}) was not accepted in {timeout} s")
        if isinstance(self._acceptance, Failure):
            self._acceptance.raiseException()
        return self.id

    def _awaiting_acceptance(self) -> None:
        if self._acceptance is True:
            self._acceptance = None

    def _accepted(self, failure: Failure | None = None) -> None:
        """Record that the job is kept (or, with ``failure``, that it was refused)."""
        if self._acceptance is not None:
            return
        self._acceptance = failure if failure is not None else True
        if self._accepted_event is not None:
            self._accepted_event.set()
        waiters, self._acceptance_waiters = self._acceptance_waiters or [], None
        for waiter in waiters:
            if failure is not None:
                waiter.errback(failure)
            else:
                waiter.callback(self.id)

    def cancel(self) -> None:
        """Ask for the job to stop: dropped if still waiting, stopped on its node otherwise.

        Safe from any thread. The outcome (status ``cancelled``) arrives as usual.
        """
        self._cancel(self)

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """Block a non-reactor thread until the job is over; return its args or raise.

        Raises ``TimeoutError`` when ``timeout`` seconds pass first. Never call this in the
        reactor thread: it would wait for an outcome that thread has to deliver.
        """
        if threadable.isInIOThread() and not self._settled:
            raise RuntimeError(
                f"JobHandle.result() called in the reactor thread for job {self.name!r}: it would "
                "block the thread that delivers the outcome; use handle.deferred there"
            )
        if not self._event().wait(timeout):
            raise TimeoutError(f"job {self.name!r} ({self.id}) did not finish in {timeout} s")
        if isinstance(self._outcome, Failure):
            error = self._outcome.value
            assert isinstance(error, JobReactorError)
            raise error
        result: dict[str, Any] = self._outcome
        return result

    def _settle(self, outcome: dict[str, Any] | Failure) -> None:
        """Record the final outcome (reactor thread); later calls are ignored."""
        if self._settled:
            return
        self._outcome = outcome
        self._settled = True
        if self._done is not None:
            self._done.set()
        if self._deferred is not None:
            self._fire(self._deferred)

    def _event(self) -> threading.Event:
        with _EVENT_LOCK:
            if self._done is None:
                self._done = threading.Event()
                if self._settled:  # settled before the Event existed: nothing would set it
                    self._done.set()
            return self._done

    def _fire(self, deferred: Deferred[dict[str, Any]]) -> None:
        if isinstance(self._outcome, Failure):
            deferred.errback(self._outcome)
        else:
            deferred.callback(self._outcome)


class WeakableHandle(JobHandle):
    """A handle a distributor may hold weakly (made by ``Distributor.enqueue``): nobody but
    its caller can use it, so a caller that drops it leaves nothing behind while the job
    waits. A remote client's handles do not need this and save its 16 bytes."""

    __slots__ = ("__weakref__", "_keeper")

    def __init__(self, job_id: str, name: str, cancel: Callable[[JobHandle], None]) -> None:
        super().__init__(job_id, name, cancel)
        #: Called once when ``deferred`` is first made: a distributor that holds this handle
        #: weakly holds it from then on, as whoever holds only the Deferred still waits for
        #: the outcome.
        self._keeper: Callable[[JobHandle], None] | None = None

    @property
    def deferred(self) -> Deferred[dict[str, Any]]:
        keeper, self._keeper = self._keeper, None
        if keeper is not None and not self._settled:
            keeper(self)
        return JobHandle.deferred.fget(self)  # type: ignore[attr-defined,no-any-return]

    def _settle(self, outcome: dict[str, Any] | Failure) -> None:
        # Its job is over: nothing to hold it for (an id run again by a retry is another
        # job's from now on).
        self._keeper = None
        super()._settle(outcome)
