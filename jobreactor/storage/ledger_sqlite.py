"""The distributor's ledger in a SQLite file: one transaction per batch (group commit).

Tables (beside a node's ``jobs`` table, should the file be shared):

``dist_meta``      key/value: the distributor's ``id``.
``dist_jobs``      owned jobs: ``id``, ``seq`` (order first owned), ``node``, ``entry`` JSON.
``dist_outcomes``  final outcomes: ``id``, ``name``, ``status``, ``finished_at``,
                   ``expires_at`` (indexed: expiry finds its rows without a scan),
                   ``origin``, ``delivered``, ``handled`` (partial indexes for the
                   undelivered and the pending), ``data`` JSON.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred
from zope.interface import implementer

from jobreactor.results import Outcome
from jobreactor.storage.ledger import IDistributorStorage, Operation, outcome_from_row
from jobreactor.storage.sqlite import SQLiteStorage

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS dist_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """
    CREATE TABLE IF NOT EXISTS dist_jobs (
        id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        node TEXT,
        entry TEXT NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS dist_jobs_seq ON dist_jobs (seq)",
    """
    CREATE TABLE IF NOT EXISTS dist_outcomes (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        finished_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        origin TEXT,
        delivered INTEGER NOT NULL,
        handled TEXT NOT NULL,
        data TEXT NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS dist_outcomes_expiry ON dist_outcomes (expires_at)",
    "CREATE INDEX IF NOT EXISTS dist_outcomes_finished ON dist_outcomes (finished_at)",
    "CREATE INDEX IF NOT EXISTS dist_outcomes_pending ON dist_outcomes (handled)"
    " WHERE handled != 'handled'",
    "CREATE INDEX IF NOT EXISTS dist_outcomes_undelivered ON dist_outcomes (origin)"
    " WHERE delivered = 0",
)


@implementer(IDistributorStorage)
@attrs.define
class SQLiteLedger:
    """A distributor's ledger in the SQLite file of ``files`` (its pool, its one thread)."""

    files: SQLiteStorage
    durable: bool = attrs.field(default=True, init=False)

    def __str__(self) -> str:
        return str(self.files)

    def open(self) -> Deferred[None]:
        opened = self.files.open()
        return opened.addCallback(
            lambda _: self.files._interact(_create_schema, "creating the distributor's tables")
        )

    def identity(self, new_id: str) -> Deferred[str]:
        return self.files._interact(_identity, "reading the distributor's id", new_id)

    def write(self, operations: list[Operation]) -> Deferred[None]:
        return self.files._interact(_write, f"writing {len(operations)} changes", operations)

    def jobs(self) -> Deferred[list[dict[str, Any]]]:
        return self.files._interact(_jobs, "loading the distributor's jobs")

    def outcome(self, job_id: str) -> Deferred[Outcome | None]:
        return self.files._interact(_outcome, f"loading the outcome of job {job_id}", job_id)

    def outcomes(self, which: str, limit: int) -> Deferred[list[Outcome]]:
        return self.files._interact(_outcomes, f"listing {which} outcomes", which, limit)

    def expire(self, now: float) -> Deferred[int]:
        return self.files._interact(_expire, "removing expired outcomes", now)

    def close(self) -> Deferred[None]:
        return self.files.close()


# The functions below run in the pool's thread, each inside one transaction.


def _create_schema(cursor: adbapi.Transaction) -> None:
    for statement in _SCHEMA:
        cursor.execute(statement)


def _identity(cursor: adbapi.Transaction, new_id: str) -> str:
    cursor.execute("INSERT OR IGNORE INTO dist_meta (key, value) VALUES ('id', ?)", (new_id,))
    cursor.execute("SELECT value FROM dist_meta WHERE key = 'id'")
    return str(cursor.fetchone()[0])


_STATEMENTS = {
    "job": "INSERT INTO dist_jobs (id, seq, node, entry) VALUES (?, ?, NULL, ?)"
    " ON CONFLICT (id) DO UPDATE SET entry = excluded.entry",
    "assign": "UPDATE dist_jobs SET node = ? WHERE id = ?",
    "drop": "DELETE FROM dist_jobs WHERE id = ?",
    "outcome": "INSERT OR REPLACE INTO dist_outcomes"
    " (id, name, status, finished_at, expires_at, origin, delivered, handled, data)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "delivered": "UPDATE dist_outcomes SET delivered = 1 WHERE id = ?",
    "handled": "UPDATE dist_outcomes SET handled = ? WHERE id = ?",
}


#: The order a batch is applied in, kind by kind (see jobreactor.storage.ledger).
KIND_ORDER = ("job", "assign", "drop", "outcome", "delivered", "handled")


def _parameters(operation: Operation) -> tuple[Any, ...]:
    kind = operation[0]
    if kind == "job":
        _, job_id, entry, seq = operation
        return (job_id, seq, entry)
    if kind == "assign":
        return (operation[2], operation[1])
    if kind in ("drop", "delivered"):
        return (operation[1],)
    if kind == "outcome":
        _, job_id, data, expires_at, origin, delivered, handled, name, status, finished = operation
        return (job_id, name, status, finished, expires_at, origin, int(delivered), handled, data)
    if kind == "handled":
        return (operation[2], operation[1])
    raise ValueError(f"unknown ledger operation {kind!r}")


def _write(cursor: adbapi.Transaction, operations: list[Operation]) -> None:
    # One executemany per kind, kinds in KIND_ORDER, each kind's operations in their order.
    by_kind: dict[str, list[tuple[Any, ...]]] = {kind: [] for kind in KIND_ORDER}
    for operation in operations:
        by_kind[operation[0]].append(_parameters(operation))
    for kind in KIND_ORDER:
        if by_kind[kind]:
            cursor.executemany(_STATEMENTS[kind], by_kind[kind])


def _jobs(cursor: adbapi.Transaction) -> list[dict[str, Any]]:
    cursor.execute("SELECT node, entry FROM dist_jobs ORDER BY seq")
    found = []
    for node, entry in cursor.fetchall():
        record = json.loads(entry)
        record["node"] = node
        found.append(record)
    return found


def _outcome(cursor: adbapi.Transaction, job_id: str) -> Outcome | None:
    cursor.execute(
        "SELECT data, handled, delivered FROM dist_outcomes WHERE id = ?",
        (job_id,),
    )
    row = cursor.fetchone()
    return None if row is None else outcome_from_row(*row)


_WHERE = {
    "all": "1",
    "done": "status = 'done'",
    "failed": "status = 'failed'",
    "cancelled": "status = 'cancelled'",
    "pending": "handled = 'pending'",
    "unhandled": "handled = 'unhandled'",
    "undelivered": "delivered = 0",
}


def _outcomes(cursor: adbapi.Transaction, which: str, limit: int) -> list[Outcome]:
    where = _WHERE[which]
    order = "finished_at" if which in ("pending", "undelivered") else "finished_at DESC"
    cursor.execute(
        f"SELECT data, handled, delivered FROM dist_outcomes WHERE {where}"
        f" ORDER BY {order} LIMIT ?",
        (limit,),
    )
    return [outcome_from_row(*row) for row in cursor.fetchall()]


def _expire(cursor: adbapi.Transaction, now: float) -> int:
    cursor.execute("DELETE FROM dist_outcomes WHERE expires_at <= ?", (now,))
    return int(cursor.rowcount)
