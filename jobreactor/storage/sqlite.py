"""Storage in one SQLite file: embedded, persistent, no server to run.

The database is reached through :mod:`twisted.enterprise.adbapi` with a pool of exactly one
connection, so every statement runs in one background thread, in the order it was asked for.
Saves and removes are written in batches (group commit, :mod:`jobreactor.storage.batching`):
all those asked for in one reactor turn, or while the previous batch was being written, go
into one transaction, so one commit (one fsync with ``synchronous=FULL``) serves them all;
each caller's Deferred fires once that transaction is committed. A later ``save`` of a job
never lands before an earlier one, and a read waits for the changes asked for before it.

The file is in WAL mode, so several node processes (and the ``jr`` monitor) can share it:
readers never wait for the writer, and writers of other processes wait up to
``busy_timeout`` seconds for each other.

A node's lease is an OS file lock (``flock``) on a file of its own next to the database,
``PATH.lease.NODE``, held for the life of the node: the kernel drops it when the process
ends, however it ends, so a killed node's replacement takes it at once and nothing expires.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import urllib.parse
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from jobreactor.errors import ConfigError
from jobreactor.jsontext import compact
from jobreactor.limits import printable
from jobreactor.model import Job, Status
from jobreactor.storage.base import IJobStorage, PermanentStorageError, StorageError
from jobreactor.storage.batching import Change, JobChanges, latest

if TYPE_CHECKING:
    import sqlite3  # imported by adbapi when a storage opens (1.5 MB less for other processes)

_log = Logger()

#: ``synchronous`` settings a URL may ask for. FULL (the default) syncs the WAL at every
#: commit, so a saved job survives a power cut; NORMAL survives a crash of the process only.
SYNCHRONOUS_MODES = ("full", "normal")

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS jobs (
        node TEXT NOT NULL,
        id TEXT NOT NULL,
        status TEXT NOT NULL,
        name TEXT NOT NULL,
        run_at REAL,
        data TEXT NOT NULL,
        PRIMARY KEY (node, id)
    ) WITHOUT ROWID
    """,
    "CREATE INDEX IF NOT EXISTS jobs_node_status ON jobs (node, status)",
)


def _job_json(job: Job) -> str:
    return compact(job.to_wire())


@implementer(IJobStorage)
@attrs.define
class SQLiteStorage:
    """Jobs in the table ``jobs`` of the SQLite file at ``path``, keyed by (node, id).

    Each row holds the whole job as the JSON of :meth:`Job.to_wire` (so reading it back gives
    the same types), plus ``status``, ``name`` and ``run_at`` columns for queries by hand;
    ``(node, status)`` is indexed. ``create=False`` refuses to make a missing file (the
    monitor inspects, it never creates). ``synchronous`` is ``"full"`` or ``"normal"``.
    ``reactor`` is the one a batch of changes is written on (at its next turn).
    """

    path: str = attrs.field(converter=str)
    create: bool = True
    synchronous: str = "full"
    #: Seconds a write waits for another process's write to finish before failing.
    busy_timeout: float = 5.0
    reactor: IReactorTime | None = attrs.field(default=None, eq=False, repr=False)
    _pool: adbapi.ConnectionPool | None = attrs.field(default=None, init=False)
    _changes: JobChanges = attrs.field(init=False, eq=False, repr=False)
    leases_expire: ClassVar[bool] = False
    #: node name -> (owner, the open lock file whose flock is the lease)
    _leases: dict[str, tuple[str, int]] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        if self.synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(
                f"synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, "
                f"not {self.synchronous!r}"
            )
        if self.reactor is None:
            from twisted.internet import reactor

            self.reactor = reactor  # type: ignore[assignment]
        assert self.reactor is not None
        self._changes = JobChanges(self._write_changes, self.reactor)

    def __str__(self) -> str:
        return f"sqlite:{self.path}"

    def _on_connect(self, connection: sqlite3.Connection) -> None:
        # Runs in the pool's thread, once, before the connection's first use.
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(f"PRAGMA synchronous={self.synchronous.upper()}")

    def open(self) -> Deferred[None]:
        if self._pool is not None:
            return succeed(None)
        if self.create:
            folder = Path(self.path).parent
            if not folder.is_dir():
                # a mistake, not an outage: nothing to wait for
                return _fail(ConfigError(f"SQLite storage {self.path}: no directory {folder}"))
            database, uri = self.path, False
        else:
            if not Path(self.path).is_file():
                return _fail(StorageError(f"no SQLite database at {self.path}"))
            database, uri = f"file:{urllib.parse.quote(self.path)}?mode=rw", True
        self._pool = adbapi.ConnectionPool(
            "sqlite3",
            database,
            uri=uri,
            timeout=self.busy_timeout,
            check_same_thread=False,
            cp_min=1,
            cp_max=1,
            cp_openfun=self._on_connect,
            cp_noisy=False,
        )
        return self._interact(_create_schema, "opening")

    def save(self, node: str, job: Job) -> Deferred[None]:
        if self._pool is None:
            return self._interact(None, f"saving job {job.id} of node {node}")  # not open
        return self._changes.save(node, job, _job_json(job))

    def load(self, node: str, job_id: str) -> Deferred[Job | None]:
        return self._after_changes(_load, f"loading job {job_id} of node {node}", node, job_id)

    def remove(self, node: str, job_id: str) -> Deferred[None]:
        if self._pool is None:
            return self._interact(None, f"removing job {job_id} of node {node}")  # not open
        return self._changes.remove(node, job_id)

    def jobs_for(
        self, node: str, statuses: Collection[Status] | None = None
    ) -> Deferred[list[Job]]:
        wanted = None if statuses is None else sorted(Status(s).value for s in statuses)
        return self._after_changes(_jobs_for, f"listing the jobs of node {node}", node, wanted)

    def unreadable(self, node: str) -> Deferred[list[tuple[str, str]]]:
        """``(id, why)`` of the stored jobs of ``node`` that cannot be read (set aside)."""
        return self._after_changes(_unreadable, f"looking for unreadable jobs of node {node}", node)

    def nodes(self) -> Deferred[list[str]]:
        return self._after_changes(_nodes, "listing the nodes")

    def _after_changes(self, function: Any, doing: str, *args: Any) -> Deferred[Any]:
        """Run ``function`` once the changes asked for before it are written (or failed)."""
        if self._changes.idle:
            return self._interact(function, doing, *args)
        settled = self._changes.settled()
        return settled.addCallback(lambda _: self._interact(function, doing, *args))

    def _write_changes(self, changes: list[Change]) -> Deferred[None]:
        """One transaction for a batch: only the last change of each job is written."""
        saves, removes = [], []
        for change in latest(changes):
            job = change.job
            if job is None:
                removes.append((change.node, change.job_id))
            else:
                saves.append(
                    (
                        change.node,
                        change.job_id,
                        job.status.value,
                        job.name,
                        job.run_at,
                        change.data,
                    )
                )
        return self._interact(
            _write, f"writing {len(changes)} job changes in one transaction", saves, removes
        )

    def lease_path(self, node: str) -> str:
        """The lock file of ``node``'s lease: next to the database, one per node name."""
        safe = urllib.parse.quote(node, safe="")
        if len(safe) > 64:  # keep the file name short: a hash is as unique
            safe = hashlib.sha256(node.encode()).hexdigest()[:32]
        return f"{self.path}.lease.{safe}"

    def acquire_lease(self, node: str, owner: str, seconds: float) -> Deferred[bool]:
        # flock with LOCK_NB never waits: done here, in the reactor thread. Locks taken
        # through two open files conflict even within one process, as they should.
        held = self._leases.get(node)
        if held is not None:
            return succeed(held[0] == owner)
        path = self.lease_path(node)
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as error:
            return _fail(StorageError(f"{self}: cannot open lease file {path}: {error.strerror}"))
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            return succeed(False)
        except OSError as error:
            os.close(descriptor)
            return _fail(StorageError(f"{self}: cannot lock lease file {path}: {error.strerror}"))
        # Who holds it, for a person looking at the file; the lock itself is what counts.
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{owner}\n".encode())
        self._leases[node] = (owner, descriptor)
        return succeed(True)

    def renew_lease(self, node: str, owner: str, seconds: float) -> Deferred[bool]:
        held = self._leases.get(node)
        return succeed(held is not None and held[0] == owner)  # a flock cannot be taken away

    def release_lease(self, node: str, owner: str) -> Deferred[None]:
        held = self._leases.get(node)
        if held is None or held[0] != owner:
            return succeed(None)

        def unlock(_: object) -> None:
            if self._leases.get(node) == held:
                del self._leases[node]
                os.close(held[1])  # closing the file drops its lock; the file stays

        if self._pool is None:
            unlock(None)
            return succeed(None)
        # Behind every change already asked for: the next holder reads them all.
        return self._changes.settled().addBoth(unlock)

    def close(self) -> Deferred[None]:
        def shut(_: object) -> None:
            pool, self._pool = self._pool, None
            if pool is not None:
                pool.close()  # joins the pool's one thread: quick, nothing else is queued
            for node, (owner, _lock) in list(self._leases.items()):
                self.release_lease(node, owner)  # after the writes: the pool is closed

        # The changes asked for so far are written (or have failed) first: none is lost.
        return self._changes.settled().addCallback(shut)

    def _interact(self, function: Any, doing: str, *args: Any) -> Deferred[Any]:
        if self._pool is None:
            return _fail(StorageError(f"{self}: {doing}: the storage is not open"))

        def explain(failure: Failure) -> Failure:
            import sqlite3  # imported by adbapi already

            if failure.check(sqlite3.Error):
                hint = _permanent_hint(failure.value)
                if hint is not None:
                    raise PermanentStorageError(
                        f"{self}: {doing}: {failure.value} ({hint})"
                    ) from failure.value
                raise StorageError(f"{self}: {doing}: {failure.value}") from failure.value
            return failure

        running: Deferred[Any] = self._pool.runInteraction(function, *args)
        return running.addErrback(explain)


#: SQLite errors that waiting does not fix, by a word of their message, and what to do.
_PERMANENT = (
    ("not a database", "the file is not an SQLite database or is corrupt: restore or move it"),
    ("malformed", "the file is corrupt: restore it from a backup or move it away"),
    ("readonly", "the file or its directory is read-only: fix its permissions"),
    ("unable to open", "the file cannot be opened: check the path and its permissions"),
    ("permission", "permission denied: fix the file's permissions"),
)


def _permanent_hint(error: BaseException | None) -> str | None:
    """What to do about ``error`` if it is one waiting does not fix, else None (an outage,
    such as another process holding the lock)."""
    message = str(error).lower()
    for word, hint in _PERMANENT:
        if word in message:
            return hint
    return None


def _fail(error: Exception) -> Deferred[Any]:
    failed: Deferred[Any] = Deferred()
    failed.errback(error)
    return failed


# The functions below run in the pool's thread, each inside one transaction.


def _create_schema(cursor: adbapi.Transaction) -> None:
    for statement in _SCHEMA:
        cursor.execute(statement)


def _write(
    cursor: adbapi.Transaction, saves: list[tuple[Any, ...]], removes: list[tuple[str, str]]
) -> None:
    # One job appears once in a batch (see latest()), so saves and removes do not interact.
    if saves:
        cursor.executemany(
            "INSERT OR REPLACE INTO jobs (node, id, status, name, run_at, data)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            saves,
        )
    if removes:
        cursor.executemany("DELETE FROM jobs WHERE node = ? AND id = ?", removes)


def _decode(data: str, node: str) -> Job:
    try:
        return Job.from_wire(json.loads(data))
    except ValueError as error:  # bad JSON, or InvalidJobError
        raise StorageError(f"a stored job of node {node} is unreadable: {error}") from None


def _load(cursor: adbapi.Transaction, node: str, job_id: str) -> Job | None:
    cursor.execute("SELECT data FROM jobs WHERE node = ? AND id = ?", (node, job_id))
    row = cursor.fetchone()
    return None if row is None else _decode(row[0], node)


def _jobs_for(cursor: adbapi.Transaction, node: str, statuses: list[str] | None) -> list[Job]:
    if statuses is None:
        cursor.execute("SELECT data FROM jobs WHERE node = ?", (node,))
    elif not statuses:
        return []
    else:
        marks = ", ".join("?" * len(statuses))
        cursor.execute(
            f"SELECT data FROM jobs WHERE node = ? AND status IN ({marks})",
            (node, *statuses),
        )
    jobs = []
    for row in cursor.fetchall():
        try:
            jobs.append(_decode(row[0], node))
        except StorageError as error:
            # One unreadable row must not stop the node: it stays in the file, set aside.
            _log.warn("{error}; set aside (left in the file)", error=printable(error, 500))
    return jobs


def _unreadable(cursor: adbapi.Transaction, node: str) -> list[tuple[str, str]]:
    cursor.execute("SELECT id, data FROM jobs WHERE node = ?", (node,))
    found = []
    for job_id, data in cursor.fetchall():
        try:
            _decode(data, node)
        except StorageError as error:
            found.append((str(job_id), str(error)))
    return found


def _nodes(cursor: adbapi.Transaction) -> list[str]:
    cursor.execute("SELECT DISTINCT node FROM jobs ORDER BY node")
    return [row[0] for row in cursor.fetchall()]
