"""``jr distributor ...`` against a real distributor's storage (SQLite and Redis) and port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from jobreactor import Distributor
from jobreactor.storage.ledger import open_ledger
from tests.storage.conftest import RedisServer
from tests.storage.test_monitor import one_line_error, run_jr

WAIT = 20


@pytest_twisted.async_yield_fixture(params=["sqlite", "redis"])
async def distributor(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Distributor, str]]:
    """A distributor with storage on a loopback port, no node: jobs wait in it."""
    if request.param == "sqlite":
        url = f"sqlite:{tmp_path / 'dist.db'}"
    else:
        server: RedisServer = request.getfixturevalue("shared_redis")
        url = f"{server.url}?prefix=jrdist-{tmp_path.name}&timeout=2"
    distributor = Distributor("tcp:0:interface=127.0.0.1", storage=url, reactor=reactor)
    distributor.startService()
    await distributor.when_listening().addTimeout(WAIT, reactor)
    yield distributor, url
    await distributor.stopService()


async def jr(*args: str) -> Any:
    return await deferToThread(run_jr, *args)


@pytest_twisted.ensureDeferred
async def test_jr_lists_waiting_jobs_and_outcomes_and_cancels_and_retries(
    distributor: tuple[Distributor, str],
) -> None:
    dist, url = distributor
    endpoint = f"tcp:host=127.0.0.1:port={dist.address.port}"
    first = dist.enqueue("report", {"day": 1})
    second = dist.enqueue("report", {"day": 2}, priority=5)
    await first.accepted
    await second.accepted

    waiting = await jr("--storage", url, "distributor", "waiting")
    assert waiting.returncode == 0, waiting.stderr
    lines = waiting.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "NODE", "PRIORITY", "ORIGIN"]
    assert [line.split()[0] for line in lines[1:]] == [second.id, first.id]  # priority first

    cancelled = await jr("distributor", "cancel", first.id, "--distributor", endpoint)
    assert cancelled.returncode == 0, cancelled.stderr
    assert first.done  # the distributor itself cancelled it, and the handle knows

    outcomes = await jr("--storage", url, "distributor", "outcomes", "--status", "cancelled")
    assert outcomes.returncode == 0, outcomes.stderr
    assert first.id in outcomes.stdout and "cancelled" in outcomes.stdout
    shown = await jr("--storage", url, "distributor", "show", first.id, "--json")
    assert '"status": "cancelled"' in shown.stdout

    retried = await jr("distributor", "retry", first.id, "--distributor", endpoint)
    assert retried.returncode == 0, retried.stderr
    assert "queued again" in retried.stdout
    assert dist.waiting == 2  # the cancelled job waits again, same id
    again = await jr("--storage", url, "distributor", "waiting", "--json")
    assert first.id in again.stdout and '"day"' not in again.stdout  # rows, not the args

    unknown = await jr("distributor", "retry", "no-such-id", "--distributor", endpoint)
    one_line_error(unknown, 1, "no stored outcome for job no-such-id")


def test_jr_distributor_says_memory_cannot_be_read() -> None:
    done = run_jr("--storage", "memory", "distributor", "waiting")
    one_line_error(done, 2, "memory storage lives inside the distributor's process")


@pytest_twisted.ensureDeferred
async def test_outcome_lookups_survive_a_restart(tmp_path: Path) -> None:
    """Distributor.outcome and the ledger agree after the distributor object is replaced."""
    url = f"sqlite:{tmp_path / 'dist.db'}"
    dist = Distributor(None, storage=url, reactor=reactor)
    dist.startService()
    await dist.when_listening()
    handle = dist.enqueue("x", {"n": 1})
    await handle.accepted
    handle.cancel()
    await dist.stopService()
    again = Distributor(None, storage=url, reactor=reactor)
    again.startService()
    await again.when_listening()
    try:
        assert again.id == dist.id
        outcome = await again.outcome(handle.id)
        assert outcome is not None and outcome.status == "cancelled" and outcome.name == "x"
        assert outcome.job["args"] == {"n": 1}
        ledger = open_ledger(url)
        await ledger.open()
        try:
            assert [o.job_id for o in await ledger.outcomes("cancelled", 10)] == [handle.id]
        finally:
            await ledger.close()
    finally:
        await again.stopService()


@pytest_twisted.ensureDeferred
async def test_a_thread_waits_for_acceptance_of_a_durable_enqueue(tmp_path: Path) -> None:
    """``wait_accepted`` in a worker thread returns once the job is written, not before."""
    dist = Distributor(None, storage=f"sqlite:{tmp_path / 'dist.db'}", reactor=reactor)
    dist.startService()
    await dist.when_listening()
    try:
        handle = dist.enqueue("x", {"n": 1})
        assert not handle.accepted.called  # the write has not happened yet in this turn
        waited = await deferToThread(handle.wait_accepted, 10)
        assert waited == handle.id
        assert (await handle.accepted) == handle.id
        refused = dist.enqueue("x", {"n": 2})
        refused.cancel()  # cancelled while waiting: still accepted first, then cancelled
        assert (await deferToThread(refused.wait_accepted, 10)) == refused.id
    finally:
        await dist.stopService()
