"""Group commit: every change a reactor turn makes to the ledger goes in one write.

A distributor acknowledges nothing before it is written, yet one transaction per job would
cap it at a few hundred jobs a second. Changes are collected during a turn and written
together at the next; while a write is under way the next batch gathers, so under load a
batch holds everything that arrived during the previous write. A storage outage does not
fail the changes: the batch is tried again with backoff until it is written (and whoever
waits for an acknowledgement waits with it), logged once when it starts and once when it
ends. The loop itself is shared with the nodes' storages
(:mod:`jobreactor.storage.batching`); what differs is what a failed write means.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from jobreactor.storage.batching import BatchLoop
from jobreactor.storage.ledger import Operation

log = Logger()

#: Seconds between attempts to write a batch while the storage is failing (doubling).
RETRY_FIRST = 0.2
RETRY_MAX = 5.0


class GroupCommit(BatchLoop[Operation]):
    """Collects ledger operations and writes them a batch per reactor turn (the loop is
    :class:`jobreactor.storage.batching.BatchLoop`); a failed batch is tried again."""

    def __init__(self, storage: Any, clock: IReactorTime) -> None:
        super().__init__(clock)
        self.storage = storage
        self.durable: bool = bool(storage.durable)
        self._failing_since: float | None = None
        self._delay = RETRY_FIRST

    def add(self, operation: Operation) -> None:
        if not self.durable:
            # Memory: applied at once, nothing to wait for.
            self.storage.write([operation])
            return
        self._add(operation)

    def written(self) -> Deferred[None]:
        """Fire once everything added so far is durable."""
        if not self.durable:
            return succeed(None)
        return self._barrier()

    def _write(self, operations: list[Operation]) -> Deferred[Any]:
        written: Deferred[Any] = self.storage.write(operations)
        return written

    def _committed(self, operations: list[Operation]) -> None:
        if self._failing_since is not None:
            log.info(
                "distributor storage {storage} is writing again after {seconds:.1f} s",
                storage=self.storage,
                seconds=self._clock.seconds() - self._failing_since,
            )
            self._failing_since = None
            self._delay = RETRY_FIRST

    def _not_written(self, failure: Failure, operations: list[Operation]) -> None:
        if self._failing_since is None:
            self._failing_since = self._clock.seconds()
            log.error(
                "distributor storage {storage} could not write {count} changes ({error}); "
                "holding them and the acknowledgements that wait for them, trying again",
                storage=self.storage,
                count=len(operations),
                error=failure.getErrorMessage(),
            )
        self._retry_later(operations, self._delay)
        self._delay = min(self._delay * 2, RETRY_MAX)
