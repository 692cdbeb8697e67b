"""Workflow state kept by a durable distributor (SQLite) across its restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor

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
