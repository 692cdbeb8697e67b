"""Group commit: the one loop that writes a storage's changes a batch per reactor turn.

Acknowledging nothing before it is written, yet paying one transaction (one fsync) or one
Redis round trip per change, caps a process at a few hundred changes a second. So changes
are collected during a reactor turn and written together at the next one; while a batch is
being written the next one gathers, so under load a batch holds everything that arrived
during the previous write, and at most one write is under way at a time (which also keeps
the batches in order).

:class:`BatchLoop` is that loop; what happens when a write fails is its subclasses' choice:

- the distributor's ledger (:class:`jobreactor.distributor.ledger.GroupCommit`) holds a
  failed batch and tries it again until it is written;
- a node's job storage (:class:`JobChanges`, used by the SQLite and Redis storages) fails
  every caller of the failed batch, as one ``save`` that failed did before batching, so
  the node refuses or reports that job; the next batch is written as if nothing happened.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from jobreactor.model import Job
from jobreactor.storage.base import StorageError

OperationT = TypeVar("OperationT")


class BatchLoop(Generic[OperationT]):
    """Collects operations and writes them, one batch at a time, at the next reactor turn.

    Subclasses write a batch (:meth:`_write`) and decide what a failed write means
    (:meth:`_not_written`); :meth:`_barrier` is a Deferred that fires once everything added
    before it has been dealt with.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._operations: list[OperationT] = []
        #: Fire when the batch that will hold the operations added so far is done.
        self._waiters: list[Deferred[None]] = []
        #: Fire when the batch being written is done.
        self._in_flight_waiters: list[Deferred[None]] = []
        self._call: IDelayedCall | None = None
        self._writing = False

    # -- what subclasses provide --------------------------------------------------------

    def _write(self, operations: list[OperationT]) -> Deferred[Any]:
        """Write ``operations`` (in order, all or none); fire once they are durable."""
        raise NotImplementedError

    def _committed(self, operations: list[OperationT]) -> None:
        """``operations`` are durable (runs before the batch's waiters fire)."""

    def _not_written(self, failure: Failure, operations: list[OperationT]) -> None:
        """The write of ``operations`` failed: end the batch (:meth:`_release`) or put it
        back (:meth:`_retry_later`)."""
        raise NotImplementedError

    # -- the loop -----------------------------------------------------------------------

    def _add(self, operation: OperationT) -> None:
        self._operations.append(operation)
        self._schedule()

    def _barrier(self) -> Deferred[None]:
        """Fire once the batch holding everything added so far is done."""
        if not self._operations and not self._writing:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        if self._operations or not self._writing:
            self._waiters.append(waiter)
        else:
            # Only the batch being written holds what was added: wait for it alone.
            self._in_flight_waiters.append(waiter)
        self._schedule()
        return waiter

    @property
    def idle(self) -> bool:
        return not self._operations and not self._writing

    def _schedule(self, delay: float = 0) -> None:
        if self._call is None and not self._writing:
            self._call = self._clock.callLater(delay, self._flush)

    def _flush(self) -> None:
        self._call = None
        if not self._operations and not self._waiters:
            return
        operations, self._operations = self._operations, []
        waiters, self._waiters = self._waiters, []
        self._in_flight_waiters = waiters
        self._writing = True
        # maybeDeferred: a write that raises fails its batch instead of stopping the loop.
        writing = maybeDeferred(self._write, operations) if operations else succeed(None)
        writing.addCallbacks(
            self._done, self._failed, callbackArgs=(operations,), errbackArgs=(operations,)
        )

    def _done(self, _: object, operations: list[OperationT]) -> None:
        self._writing = False
        self._committed(operations)
        self._release()

    def _failed(self, failure: Failure, operations: list[OperationT]) -> None:
        self._writing = False
        self._not_written(failure, operations)

    def _release(self) -> None:
        """The batch in flight is over: fire its waiters and start the next, if any."""
        waiters, self._in_flight_waiters = self._in_flight_waiters, []
        for waiter in waiters:
            if not waiter.called:  # a waiter cancelled meanwhile must not stop the loop
                waiter.callback(None)
        if self._operations or self._waiters:
            self._schedule()

    def _retry_later(self, operations: list[OperationT], delay: float) -> None:
        """Put the failed batch back in front, its waiters with it, and try again later."""
        self._operations[:0] = operations
        self._waiters[:0] = self._in_flight_waiters
        self._in_flight_waiters = []
        self._schedule(delay)


class Change:
    """One save (``job`` and its JSON ``data``) or remove (``job`` None) of a node's job."""

    __slots__ = ("data", "done", "job", "job_id", "node")

    def __init__(self, node: str, job_id: str, job: Job | None, data: str | None) -> None:
        self.node = node
        self.job_id = job_id
        self.job = job
        self.data = data
        #: Fires once the batch holding this change is durable; fails if it is not written.
        self.done: Deferred[None] = Deferred()

    def doing(self) -> str:
        verb = "removing" if self.job is None else "saving"
        return f"{verb} job {self.job_id} of node {self.node}"


def latest(changes: list[Change]) -> list[Change]:
    """The last change of each job in ``changes``: what the batch must leave behind.

    A save replaces the whole job and a remove deletes it, so within one batch (written all
    or none) only the last change of a job counts: a save then a remove leaves it removed,
    a later save wins over an earlier one. The result has one change per job, so a storage
    may write it in any order (saves, then removes).
    """
    last = {(change.node, change.job_id): change for change in changes}
    return list(last.values())


class JobChanges(BatchLoop[Change]):
    """The saves and removes of a node's job storage, written a batch per reactor turn.

    ``write`` writes a batch of :class:`Change` in one transaction or one call (all or
    none). Each caller's Deferred fires once its batch is durable, or fails, with a
    :class:`StorageError` naming its job, if that write failed; the next batch is written
    all the same. Reads that must see earlier changes wait for :meth:`settled` first.
    """

    def __init__(self, write: Callable[[list[Change]], Deferred[Any]], clock: IReactorTime):
        super().__init__(clock)
        self._write_batch = write

    def save(self, node: str, job: Job, data: str) -> Deferred[None]:
        change = Change(node, job.id, job, data)
        self._add(change)
        return change.done

    def remove(self, node: str, job_id: str) -> Deferred[None]:
        change = Change(node, job_id, None, None)
        self._add(change)
        return change.done

    def settled(self) -> Deferred[None]:
        """Fire (never fail) once every change asked for so far is written or has failed."""
        return self._barrier()

    def _write(self, operations: list[Change]) -> Deferred[Any]:
        return self._write_batch(operations)

    def _committed(self, operations: list[Change]) -> None:
        for change in operations:
            if not change.done.called:  # cancelled by its caller (a node stopping)
                change.done.callback(None)

    def _not_written(self, failure: Failure, operations: list[Change]) -> None:
        for change in operations:
            if not change.done.called:
                change.done.errback(_for_change(failure, change))
        self._release()


def _for_change(failure: Failure, change: Change) -> Failure:
    """The failure of a batch as its caller ``change`` sees it: naming its own job."""
    error = failure.value
    if not isinstance(error, StorageError):
        return failure  # a bug, not the storage: passed on as it is
    # The same class (PermanentStorageError stays permanent); the batch's error says why.
    own = type(error)(f"{change.doing()}: {error}")
    own.__cause__ = error
    return Failure(own)
