"""Issue 13: a node's saves and removes are written in batches (group commit).

The loop itself runs on a Clock against a fake write; then real SQLite files and a real
redis-server show that one turn's changes are one transaction / one script call, that no
caller hears of its change before it is committed, that a failed batch fails its callers
and only them, and that the last change of a job is the one left behind.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock

from jobreactor.model import Job, Status
from jobreactor.storage import IJobStorage, PermanentStorageError, SQLiteStorage, StorageError
from jobreactor.storage.batching import Change, JobChanges, latest

from .conftest import RedisServer
from .test_behaviour import full_job, wait

# -- the loop, on a Clock and a fake write ---------------------------------------------------


@attrs.define
class FakeWrites:
    """A write the test ends by hand: each batch's Deferred is in ``pending``."""

    batches: list[list[tuple[str, str]]] = attrs.Factory(list)
    pending: list[Deferred[None]] = attrs.Factory(list)

    def __call__(self, changes: list[Change]) -> Deferred[None]:
        self.batches.append([("remove" if c.job is None else "save", c.job_id) for c in changes])
        written: Deferred[None] = Deferred()
        self.pending.append(written)
        return written


def outcome(deferred: Deferred[Any]) -> list[Any]:
    """What ``deferred`` has fired with so far: [] if it has not (failures are kept)."""
    seen: list[Any] = []
    deferred.addBoth(seen.append)
    return seen


def job(job_id: str, status: Status = Status.QUEUED) -> Job:
    return Job(id=job_id, name="noop", args={}, status=status)


def test_one_turn_of_changes_is_one_batch_and_callers_wait_for_its_write() -> None:
    clock, writes = Clock(), FakeWrites()
    changes = JobChanges(writes, clock)
    first = [changes.save("n", job("a"), "{}"), changes.remove("n", "b")]
    assert writes.batches == [], "nothing is written during the turn that asks"
    clock.advance(0)
    assert writes.batches == [[("save", "a"), ("remove", "b")]]
    # Asked for while the first batch is being written: they gather into the next one.
    second = [changes.save("n", job("c"), "{}"), changes.save("n", job("d"), "{}")]
    clock.advance(0)
    assert len(writes.batches) == 1, "one write at a time"
    assert all(outcome(d) == [] for d in first), "no caller hears before the write ends"
    writes.pending[0].callback(None)
    assert all(outcome(d) == [None] for d in first)
    assert all(outcome(d) == [] for d in second)
    clock.advance(0)
    assert writes.batches[1] == [("save", "c"), ("save", "d")]
    writes.pending[1].callback(None)
    assert all(outcome(d) == [None] for d in second) and changes.idle


def test_a_failed_batch_fails_its_callers_by_name_and_the_next_batch_is_written() -> None:
    clock, writes = Clock(), FakeWrites()
    changes = JobChanges(writes, clock)
    failed = [changes.save("n", job("a"), "{}"), changes.remove("n", "b")]
    clock.advance(0)
    later = changes.save("n", job("c"), "{}")  # gathers while the first batch fails
    read_may_go = changes.settled()  # a read asked for now waits for both batches
    writes.pending[0].errback(StorageError("sqlite:/x.db: writing 2 job changes: disk full"))
    errors = [outcome(d)[0].value for d in failed]
    assert [type(e) for e in errors] == [StorageError, StorageError]
    assert (
        str(errors[0]) == "saving job a of node n: sqlite:/x.db: writing 2 job changes: disk full"
    )
    assert str(errors[1]).startswith("removing job b of node n: ")
    assert outcome(later) == [] and outcome(read_may_go) == []
    clock.advance(0)
    assert writes.batches[1] == [("save", "c")], "the failed batch is not tried again"
    writes.pending[1].callback(None)
    assert outcome(later) == [None] and outcome(read_may_go) == [None]


def test_settled_fires_after_a_failed_batch_too() -> None:
    clock, writes = Clock(), FakeWrites()
    changes = JobChanges(writes, clock)
    saved = changes.save("n", job("a"), "{}")
    settled = changes.settled()
    clock.advance(0)
    writes.pending[0].errback(PermanentStorageError("sqlite:/x.db: readonly"))
    assert outcome(settled) == [None], "a read after a failed write still runs"
    [failure] = outcome(saved)
    assert isinstance(failure.value, PermanentStorageError), "permanent stays permanent"
    assert isinstance(failure.value.__cause__, PermanentStorageError)
    assert changes.idle and changes.settled().called


def test_a_caller_that_cancels_its_deferred_does_not_stop_the_loop() -> None:
    """A stopping node cancels the save of a job it was about to start."""
    clock, writes = Clock(), FakeWrites()
    changes = JobChanges(writes, clock)
    given_up, kept = changes.save("n", job("a"), "{}"), changes.save("n", job("b"), "{}")
    settled = changes.settled()
    clock.advance(0)
    given_up.cancel()
    given_up.addErrback(lambda _: None)
    writes.pending[0].callback(None)
    assert outcome(kept) == [None] and outcome(settled) == [None] and changes.idle


def test_a_write_that_raises_fails_its_batch_and_the_loop_goes_on() -> None:
    clock, calls = Clock(), []

    def write(batch: list[Change]) -> Deferred[None]:
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("a bug in the write")
        done: Deferred[None] = Deferred()
        done.callback(None)
        return done

    changes = JobChanges(write, clock)
    broken = changes.save("n", job("a"), "{}")
    clock.advance(0)
    [failure] = outcome(broken)
    assert failure.check(RuntimeError), "not a storage error: passed on as it is"
    fine = changes.save("n", job("b"), "{}")
    clock.advance(0)
    assert outcome(fine) == [None] and calls == [1, 1]


def test_latest_keeps_the_last_change_of_each_job() -> None:
    def change(job_id: str, status: Status | None) -> Change:
        return Change("n", job_id, None if status is None else job(job_id, status), "{}")

    batch = [
        change("a", Status.QUEUED),
        change("a", None),  # save then remove: removed
        change("b", None),
        change("b", Status.QUEUED),  # remove then save: saved
        change("c", Status.QUEUED),
        change("c", Status.IN_PROGRESS),  # the later save wins
        Change("other", "c", None, None),  # another node's job of the same id
    ]
    kept = [(c.node, c.job_id, None if c.job is None else c.job.status) for c in latest(batch)]
    assert sorted(kept, key=str) == sorted(
        [
            ("n", "a", None),
            ("n", "b", Status.QUEUED),
            ("n", "c", Status.IN_PROGRESS),
            ("other", "c", None),
        ],
        key=str,
    )


# -- every storage: reads see earlier changes, order within one batch ---------------------


@pytest_twisted.ensureDeferred
async def test_a_read_sees_the_changes_asked_for_before_it(storage: IJobStorage) -> None:
    saving = storage.save("node-1", full_job(id="a"))  # not awaited: still being batched
    assert await wait(storage.load("node-1", "a")) == full_job(id="a")
    await wait(saving)
    removing = storage.remove("node-1", "a")
    assert await wait(storage.jobs_for("node-1")) == []
    assert await wait(storage.nodes()) == []
    await wait(removing)


#: An id with what a packed format could trip over: spaces, digits, a comma, non-ASCII.
ODD_ID = "b 2 3,✓ żółw"


@pytest_twisted.ensureDeferred
async def test_save_then_remove_in_one_turn_leaves_the_job_removed(storage: IJobStorage) -> None:
    queued = full_job(id="a", status=Status.QUEUED)
    running = attrs.evolve(queued, status=Status.IN_PROGRESS, attempt=1)
    await wait(
        gatherResults(
            [
                storage.save("node-1", queued),
                storage.save("node-1", running),
                storage.remove("node-1", "a"),
                storage.remove("node-1", ODD_ID),
                storage.save("node-1", full_job(id=ODD_ID, status=Status.ERROR)),
            ]
        )
    )
    assert await wait(storage.load("node-1", "a")) is None
    assert await wait(storage.jobs_for("node-1", [Status.QUEUED, Status.IN_PROGRESS])) == []
    assert [j.id for j in await wait(storage.jobs_for("node-1", [Status.ERROR]))] == [ODD_ID]
    assert await wait(storage.nodes()) == ["node-1"]
    await wait(storage.remove("node-1", ODD_ID))
    assert await wait(storage.nodes()) == []


@pytest_twisted.ensureDeferred
async def test_the_lease_is_released_only_after_the_changes_before_it(
    storage: IJobStorage,
) -> None:
    """The next holder of a node's lease must find every change its last holder made."""
    assert await wait(storage.acquire_lease("node-1", "first", 30))
    saved = storage.save("node-1", full_job(id="a"))
    removed = storage.remove("node-1", "gone")
    await wait(storage.release_lease("node-1", "first"))
    assert saved.called and removed.called
    assert await wait(storage.acquire_lease("node-1", "second", 30))
    assert [job.id for job in await wait(storage.jobs_for("node-1"))] == ["a"]
    await wait(storage.release_lease("node-1", "second"))


# -- SQLite: one transaction per batch, committed before anyone hears --------------------------


async def a_failed_batch_then_a_good_one(
    storage: IJobStorage, scheme: str, reason: str, fix: Callable[[], object]
) -> None:
    """Two saves in a batch that cannot be written each fail, naming its job and ``reason``;
    once ``fix()`` has run, the next batch is written as if nothing had happened."""
    failing = [storage.save("node-1", full_job(id=n)) for n in ("a", "b")]
    for deferred, job_id in zip(failing, ("a", "b"), strict=True):
        with pytest.raises(StorageError) as info:
            await wait(deferred)
        assert str(info.value).startswith(f"saving job {job_id} of node node-1: {scheme}")
        assert reason in str(info.value)
    fix()
    await wait(storage.save("node-1", full_job(id="c")))
    assert [j.id for j in await wait(storage.jobs_for("node-1"))] == ["c"]


def count_interactions(storage: SQLiteStorage, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the name of every function the storage runs in its pool (one transaction each)."""
    pool = storage._pool
    assert pool is not None
    names: list[str] = []
    original = pool.runInteraction

    def counting(function: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
        names.append(function.__name__)
        running: Deferred[Any] = original(function, *args, **kwargs)
        return running

    monkeypatch.setattr(pool, "runInteraction", counting)
    return names


@pytest_twisted.ensureDeferred
async def test_sqlite_writes_one_turns_changes_in_one_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "jobs.db"
    storage = SQLiteStorage(str(path))
    await wait(storage.open())
    try:
        transactions = count_interactions(storage, monkeypatch)
        committed: list[list[str]] = []

        def seen_by_another_connection(_: object) -> None:
            # Fired for the caller: the row must already be committed, visible to anyone.
            with sqlite3.connect(path) as other:
                committed.append([row[0] for row in other.execute("SELECT id FROM jobs")])

        saves = [storage.save("node-1", full_job(id=f"job-{n:03}")) for n in range(100)]
        saves[0].addCallback(seen_by_another_connection)
        removes = [storage.remove("node-1", f"job-{n:03}") for n in range(90, 100)]
        await wait(gatherResults(saves + removes))
        assert transactions == ["_write"], "100 saves and 10 removes: one transaction"
        assert committed == [[f"job-{n:03}" for n in range(90)]]
        assert len(await wait(storage.jobs_for("node-1"))) == 90
    finally:
        await wait(storage.close())


@pytest_twisted.ensureDeferred
async def test_sqlite_a_failed_batch_fails_its_callers_and_the_next_one_works(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.db"
    storage = SQLiteStorage(str(path), busy_timeout=0.05)
    await wait(storage.open())
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process is writing: our batch cannot
        await a_failed_batch_then_a_good_one(
            storage, "sqlite:", "database is locked", lambda: other.execute("ROLLBACK")
        )
    finally:
        other.close()
        await wait(storage.close())


@pytest_twisted.ensureDeferred
async def test_sqlite_close_writes_what_was_asked_for_first(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    storage = SQLiteStorage(str(path))
    await wait(storage.open())
    saved = storage.save("node-1", full_job(id="last"))
    await wait(storage.close())
    assert saved.called
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT id FROM jobs").fetchall() == [("last",)]


# -- Redis: one script call per batch ----------------------------------------------------------


def script_calls(server: RedisServer) -> int:
    """How many EVAL and EVALSHA calls the server has answered (its own count)."""
    stats = server.cli("INFO", "commandstats")
    total = 0
    for line in stats.splitlines():
        if line.startswith(("cmdstat_eval:", "cmdstat_evalsha:")):
            total += int(line.split("calls=", 1)[1].split(",", 1)[0])
    return total


@pytest_twisted.ensureDeferred
async def test_redis_writes_one_turns_changes_in_one_script_call(
    redis_servers: Any,
) -> None:
    server: RedisServer = redis_servers()
    storage = server.storage()
    await wait(storage.open())
    try:
        before = script_calls(server)
        saves = [storage.save(f"node-{n % 3}", full_job(id=f"job-{n:03}")) for n in range(100)]
        removes = [storage.remove(f"node-{n % 3}", f"job-{n:03}") for n in range(90, 100)]
        await wait(gatherResults(saves + removes))
        assert script_calls(server) - before == 1, "110 changes of 3 nodes: one round trip"
        assert len(await wait(storage.jobs_for("node-0"))) == 30
        assert len(await wait(storage.jobs_for("node-1", [Status.ERROR]))) == 30
        assert await wait(storage.nodes()) == ["node-0", "node-1", "node-2"]
    finally:
        await wait(storage.close())


@pytest_twisted.ensureDeferred
async def test_redis_a_failed_batch_fails_its_callers_and_the_next_one_works(
    shared_redis: RedisServer,
) -> None:
    storage = shared_redis.storage()
    await wait(storage.open())
    broken = storage.keys.jobs("node-1")
    try:
        shared_redis.cli("SET", broken, "not a hash")  # HSET on it fails: WRONGTYPE
        await a_failed_batch_then_a_good_one(
            storage, "redis://", "WRONGTYPE", lambda: shared_redis.cli("DEL", broken)
        )
    finally:
        await wait(storage.close())
