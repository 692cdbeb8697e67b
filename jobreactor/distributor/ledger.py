"""Group commit: every change a reactor turn makes to the ledger goes in one write.

A distributor acknowledges nothing before it is written, yet one transaction per job would
cap it at a few hundred jobs a second. Changes are collected during a turn and written
together at the next; while a write is under way the next batch gathers, so under load a
batch holds everything that arrived during the previous write. A storage outage does not
fail the changes: the batch is tried again with backoff until it is written (and whoever
waits for an acknowledgement waits with it), logged once when it starts and once when it
ends.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from jobreactor.storage.ledger import Operation

log = Logger()

#: Seconds between attempts to write a batch while the storage is failing (doubling).
RETRY_FIRST = 0.2
RETRY_MAX = 5.0


class GroupCommit:
    """Collects ledger operations and writes them a batch per reactor turn."""

    def __init__(self, storage: Any, clock: IReactorTime) -> None:
        self.storage = storage
        self.durable: bool = bool(storage.durable)
        self._clock = clock
        self._operations: list[Operation] = []
        self._waiters: list[Deferred[None]] = []
        self._in_flight_waiters: list[Deferred[None]] = []
        self._call: IDelayedCall | None = None
        self._writing = False
        self._failing_since: float | None = None
        self._delay = RETRY_FIRST

    def add(self, operation: Operation) -> None:
        if not self.durable:
            # Memory: applied at once, nothing to wait for.
            self.storage.write([operation])
            return
        self._operations.append(operation)
        self._schedule()

    def written(self) -> Deferred[None]:
        """Fire once everything added so far is durable."""
        if not self.durable or (not self._operations and not self._writing):
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        if self._operations or not self._writing:
            self._waiters.append(waiter)
        else:
            # Only the batch being written holds our changes: wait for it alone.
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
        writing = self.storage.write(operations) if operations else succeed(None)
        writing.addCallbacks(self._done, self._failed, errbackArgs=(operations,))

    def _done(self, _: Any) -> None:
        self._writing = False
        if self._failing_since is not None:
            log.info(
                "distributor storage {storage} is writing again after {seconds:.1f} s",
                storage=self.storage,
                seconds=self._clock.seconds() - self._failing_since,
            )
            self._failing_since = None
            self._delay = RETRY_FIRST
        waiters, self._in_flight_waiters = self._in_flight_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        if self._operations or self._waiters:
            self._schedule()

    def _failed(self, failure: Failure, operations: list[Operation]) -> None:
        self._writing = False
        if self._failing_since is None:
            self._failing_since = self._clock.seconds()
            log.error(
                "distributor storage {storage} could not write {count} changes ({error}); "
                "holding them and the acknowledgements that wait for them, trying again",
                storage=self.storage,
                count=len(operations),
                error=failure.getErrorMessage(),
            )
        # Put the batch back in front, its waiters with it, and try again later.
        self._operations[:0] = operations
        self._waiters[:0] = self._in_flight_waiters
        self._in_flight_waiters = []
        self._schedule(self._delay)
        self._delay = min(self._delay * 2, RETRY_MAX)
