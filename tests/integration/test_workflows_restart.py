"""Workflow state kept by a durable distributor (SQLite) across its restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from jobreactor import Distributor, JobCancelled


async def started(storage: str) -> Distributor:
    distributor = Distributor(None, storage=storage, reactor=reactor)
    distributor.startService()
    assert distributor._loaded is not None
    await distributor._loaded.addTimeout(10, reactor)
    return distributor


async def stopped(distributor: Distributor) -> None:
    await distributor.stopService().addTimeout(15, reactor)


def outcome_of(handle: Any) -> Any:
    return handle._outcome if handle.done else None


@pytest_twisted.ensureDeferred
async def test_unique_keys_survive_a_restart(tmp_path: Path) -> None:
    storage = f"sqlite:{tmp_path / 'distributor.db'}"
    first = await started(storage)
    waiting = first.enqueue("report", {}, unique_key="nightly")  # no node: it waits
    ended = first.enqueue("report", {}, unique_key="weekly", unique_for=3600)
    await waiting.accepted.addTimeout(10, reactor)
    await ended.accepted.addTimeout(10, reactor)
    ended.cancel()  # ends now; its key stays taken for an hour
    await stopped(first)

    second = await started(storage)
    try:
        again = second.enqueue("report", {}, unique_key="nightly")
        assert again.id == waiting.id  # still the reloaded waiting job
        assert second.waiting == 1
        week = second.enqueue("report", {}, unique_key="weekly", unique_for=3600)
        assert week.id == ended.id  # found in the stored outcomes
        assert isinstance(outcome_of(week).value, JobCancelled)
        fresh = second.enqueue("report", {}, unique_key="monthly")
        assert fresh.id not in (waiting.id, ended.id)
    finally:
        await stopped(second)


@pytest_twisted.ensureDeferred
async def test_dependents_wait_again_after_a_restart(tmp_path: Path) -> None:
    storage = f"sqlite:{tmp_path / 'distributor.db'}"
    first = await started(storage)
    a = first.enqueue("extract", {})  # no node: it waits
    gone = first.enqueue("extract", {})
    c = first.enqueue("load", {}, depends_on=[a, gone])
    for handle in (a, gone, c):
        await handle.accepted.addTimeout(10, reactor)
    await stopped(first)

    second = await started(storage)
    try:
        await deferLater(reactor, 0.05, lambda: None)
        assert second.blocked == 1 and second.waiting == 2  # c waits for a and gone again
        restored = second._owned[gone.id].handle
        assert restored is not None
        second.cancel(restored)
        await deferLater(reactor, 0.05, lambda: None)
        assert c.id not in second._owned
        stored = await second.outcome(c.id)
        assert stored is not None and stored.error_type == "DependencyFailed"
        # A dependency that already ended is found in the stored outcomes.
        late = second.enqueue("load", {}, depends_on=[gone.id])
        await deferLater(reactor, 0.05, lambda: None)
        assert outcome_of(late).value.error_type == "DependencyFailed"
    finally:
        await stopped(second)
