"""The distributor's storage (its *ledger*): its id, the jobs it owns, and final outcomes.

A node's storage keeps the jobs it runs; a distributor's ledger keeps what makes "an
acknowledged job is never lost" true across a restart of the distributor itself. Writes
come as batches of operations (one reactor turn's worth, see
:class:`jobreactor.distributor.ledger.GroupCommit`), each batch one transaction or one
Redis script, so a crash never leaves half a batch.

Operations (tuples; the first item names them):

``("job", id, entry_json, seq)``
    own a job (insert or replace); ``entry_json`` is ``{"job", "seq", "origin", "last_run"}``.
``("assign", id, node_or_None)``
    the node now holding the job (None: waiting in the distributor again).
``("drop", id)``
    the job is over or gone: forget it.
``("outcome", id, outcome_json, expires_at, origin, delivered, handled, name, status,
finished_at)``
    store a final outcome (insert or replace).

A storage may apply a batch grouped by kind in the order above (job, assign, drop, outcome,
delivered, handled), keeping the order within a kind: the distributor never puts two
operations in one batch whose order across kinds matters otherwise.
``("delivered", id)``
    the remote peer that enqueued the job has the outcome.
``("handled", id, state)``
    the outcome's result handlers ended in ``state`` (``handled`` / ``unhandled``).
"""

from __future__ import annotations

import json
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
from zope.interface import Attribute, Interface, implementer

from jobreactor.errors import ConfigError
from jobreactor.results import HANDLER_PENDING, Outcome

Operation = tuple[Any, ...]

#: What ``outcomes(which)`` may ask for.
OUTCOME_SELECTIONS = ("all", "done", "failed", "cancelled", "pending", "unhandled", "undelivered")


class IDistributorStorage(Interface):  # type: ignore[misc]
    """Where a distributor keeps its identity, owned jobs and outcomes."""

    durable = Attribute("True if what is written survives the process (not memory)")

    def open() -> Deferred[None]:
        """Connect, create tables; called once when the distributor starts."""

    def identity(new_id: str) -> Deferred[str]:
        """The distributor's stored id; ``new_id`` is stored and returned when there is none."""

    def write(operations: list[Operation]) -> Deferred[None]:
        """Apply the operations in order, all or none; fires once they are durable."""

    def jobs() -> Deferred[list[dict[str, Any]]]:
        """Every owned job's entry (with its ``node``), in the order they were first owned."""

    def outcome(job_id: str) -> Deferred[Outcome | None]:
        """The stored outcome of ``job_id``, or None (never stored, or expired)."""

    def outcomes(which: str, limit: int) -> Deferred[list[Outcome]]:
        """Up to ``limit`` outcomes, newest first; ``which`` is one of OUTCOME_SELECTIONS."""

    def expire(now: float) -> Deferred[int]:
        """Remove outcomes whose time is up (found by an index, no scan); return how many."""

    def close() -> Deferred[None]:
        """Release connections."""


def outcome_from_row(data: str | bytes, handled: str | None, delivered: Any) -> Outcome:
    """An outcome from its stored JSON; the columns for state win over the JSON's copy."""
    outcome = Outcome.from_json(json.loads(data))
    if handled is not None:
        outcome = attrs.evolve(outcome, handled=str(handled))
    return outcome


@implementer(IDistributorStorage)
@attrs.define
class MemoryLedger:
    """Outcomes in this process's memory, for look-ups while it runs; jobs are not kept.

    Nothing here survives the process: this is the default, today's behaviour. At most
    ``max_outcomes`` outcomes are kept (oldest dropped first) besides the ``result_ttl``
    expiry, so a long-running process does not grow without bound. Outcomes are kept in
    the order they were stored, which is the order they expire in (one ``result_ttl``), so
    expiry reads from the front and never scans.
    """

    max_outcomes: int = 100_000
    durable: bool = attrs.field(default=False, init=False)
    _id: str | None = attrs.field(default=None, init=False)
    _outcomes: dict[str, tuple[Outcome, float]] = attrs.field(factory=dict, init=False)

    def open(self) -> Deferred[None]:
        return succeed(None)

    def identity(self, new_id: str) -> Deferred[str]:
        if self._id is None:
            self._id = new_id
        return succeed(self._id)

    def keep(self, outcome: Outcome, expires_at: float) -> None:
        """Keep an outcome as it is (no JSON round trip: nothing leaves the process)."""
        self._outcomes.pop(outcome.job_id, None)  # re-inserted last: newest at the end
        self._outcomes[outcome.job_id] = (outcome, expires_at)
        if len(self._outcomes) > self.max_outcomes:
            del self._outcomes[next(iter(self._outcomes))]

    def write(self, operations: list[Operation]) -> Deferred[None]:
        for operation in operations:
            kind = operation[0]
            if kind == "outcome":
                _, _job_id, data, expires_at, _origin, delivered, handled = operation[:7]
                self.keep(outcome_from_row(data, handled, delivered), expires_at)
            elif kind == "handled":
                found = self._outcomes.get(operation[1])
                if found is not None:
                    outcome, expires_at = found
                    self._outcomes[operation[1]] = (
                        attrs.evolve(outcome, handled=operation[2]),
                        expires_at,
                    )
        return succeed(None)

    def jobs(self) -> Deferred[list[dict[str, Any]]]:
        return succeed([])

    def outcome(self, job_id: str) -> Deferred[Outcome | None]:
        found = self._outcomes.get(job_id)
        return succeed(None if found is None else found[0])

    def outcomes(self, which: str, limit: int) -> Deferred[list[Outcome]]:
        found = []
        for outcome, _ in reversed(self._outcomes.values()):
            if _selected(outcome, which):
                found.append(outcome)
                if len(found) >= limit:
                    break
        return succeed(found)

    def expire(self, now: float) -> Deferred[int]:
        removed = 0
        while self._outcomes:
            job_id = next(iter(self._outcomes))
            if self._outcomes[job_id][1] > now:
                break
            del self._outcomes[job_id]
            removed += 1
        return succeed(removed)

    def close(self) -> Deferred[None]:
        return succeed(None)


def _selected(outcome: Outcome, which: str) -> bool:
    if which == "all":
        return True
    if which in ("done", "failed", "cancelled"):
        return outcome.status == which
    if which == "pending":
        return outcome.handled == HANDLER_PENDING
    if which == "unhandled":
        return outcome.handled == "unhandled"
    return False  # undelivered: memory keeps no delivery state


def open_ledger(spec: str | Any, *, create: bool = True) -> Any:
    """The distributor storage named by ``spec``: the same URLs as a node's ``storage=``."""
    if IDistributorStorage.providedBy(spec):
        return spec
    if not isinstance(spec, str):
        raise ConfigError(f"storage must be a storage URL, not {spec!r}")
    from jobreactor.storage import STORAGE_FORMS, open_storage

    if spec in ("memory", "memory_storage"):
        return MemoryLedger()
    scheme = spec.split(":", 1)[0] if ":" in spec else ""
    if scheme == "sqlite":
        from jobreactor.storage.ledger_sqlite import SQLiteLedger

        return SQLiteLedger(open_storage(spec, create=create))
    if scheme in ("redis", "rediss"):
        from jobreactor.storage.ledger_redis import RedisLedger

        return RedisLedger(open_storage(spec))
    raise ConfigError(f"storage {spec!r} is not understood; use {STORAGE_FORMS}")
