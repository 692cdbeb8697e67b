"""Leases on a node's storage: one holder at a time, for every storage; what each storage
does with a holder that dies (SQLite: the kernel drops the lock; Redis: the key expires)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from jobreactor.storage import IJobStorage, SQLiteStorage

from .conftest import WAIT, RedisServer, make_storage


async def wait(deferred: Deferred[Any]) -> Any:
    return await deferred.addTimeout(WAIT, reactor)


def second_storage(kind: str, first: Any, tmp_path: Path) -> Any:
    """Another storage object on the same data, as a second process would open it."""
    if kind == "memory":
        return first  # a memory storage is shared only by passing the object itself
    if kind == "sqlite":
        return SQLiteStorage(first.path)
    return type(first)(host=first.host, port=first.port, prefix=first.prefix, timeout=1.0)


@pytest.mark.parametrize("kind", ["memory", "sqlite", "redis"])
@pytest_twisted.ensureDeferred
async def test_one_holder_at_a_time(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    first: IJobStorage = make_storage(kind, request, tmp_path)
    second: IJobStorage = second_storage(kind, first, tmp_path)
    await wait(first.open())
    await wait(second.open())
    try:
        assert await wait(first.acquire_lease("worker", "a", 10)) is True
        assert await wait(first.acquire_lease("worker", "a", 10)) is True, "its own: still its"
        assert await wait(second.acquire_lease("worker", "b", 10)) is False
        assert await wait(second.acquire_lease("other", "b", 10)) is True, "one lease per name"
        assert await wait(first.renew_lease("worker", "a", 10)) is True
        assert await wait(second.renew_lease("worker", "b", 10)) is False

        await wait(second.release_lease("worker", "b"))  # not b's: nothing happens
        assert await wait(second.acquire_lease("worker", "b", 10)) is False

        await wait(first.release_lease("worker", "a"))
        assert await wait(second.acquire_lease("worker", "b", 10)) is True
        assert await wait(first.acquire_lease("worker", "a", 10)) is False
    finally:
        await wait(first.close())
        await wait(second.close())


def test_a_sqlite_lease_ends_with_the_process_that_held_it(tmp_path: Path) -> None:
    """A holder killed with SIGKILL leaves no lease behind: its replacement takes it at once."""
    database = tmp_path / "node.db"
    with subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from jobreactor.storage import SQLiteStorage
                taken = SQLiteStorage({str(database)!r}).acquire_lease("worker", "dead", 10)
                print(taken.result, flush=True)
                time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "True"
        storage = SQLiteStorage(str(database))
        assert storage.acquire_lease("worker", "me", 10).result is False, "held by a live one"
        holder.kill()
        holder.wait(WAIT)
        assert storage.acquire_lease("worker", "me", 10).result is True, "no waiting"
        assert Path(storage.lease_path("worker")).read_text() == "me\n"
        storage.release_lease("worker", "me")


@pytest_twisted.ensureDeferred
async def test_a_redis_lease_expires_unless_renewed(shared_redis: RedisServer) -> None:
    storage = shared_redis.storage()
    await wait(storage.open())
    try:
        key = storage.keys.lease("worker")
        assert await wait(storage.acquire_lease("worker", "a", 10)) is True
        assert shared_redis.cli("GET", key).strip() == "a"
        assert 9000 <= int(shared_redis.cli("PTTL", key)) <= 10000, "SET ... PX 10000"
        shared_redis.cli("PEXPIRE", key, "100")
        assert await wait(storage.renew_lease("worker", "a", 10)) is True
        assert int(shared_redis.cli("PTTL", key)) > 9000, "a renewal restores the full lease"

        shared_redis.cli("DEL", key)  # expired: its holder died
        assert await wait(storage.acquire_lease("worker", "b", 10)) is True
        assert await wait(storage.renew_lease("worker", "a", 10)) is False, "a lost lease"
        await wait(storage.release_lease("worker", "a"))
        assert shared_redis.cli("GET", key).strip() == "b", "release never deletes another's"
        await wait(storage.release_lease("worker", "b"))
        assert shared_redis.cli("EXISTS", key).strip() == "0"
    finally:
        await wait(storage.close())
