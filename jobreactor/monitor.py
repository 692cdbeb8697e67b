"""Inspect and clean a job storage: the Python side of the ``jr`` command.

The original's ``JR::RedisMonitor`` (``jobs_for``, ``load``, ``destroy``,
``destroy_all_jobs_for``), over any :class:`IJobStorage` and with counts per node and
status. Every method returns a Deferred and runs in the reactor thread. Jobs are stored per
node; ``all_jobs`` and ``find`` look through every node for those who do not know which.

Destroying a job that a running node holds only removes its stored record: the node goes on
with the copy in its memory. Use it on stopped nodes, or for finished jobs.
"""

from __future__ import annotations

from collections.abc import Collection, Coroutine
from typing import Any, TypeVar

import attrs
from twisted.internet.defer import Deferred

from jobreactor.model import Job, Status
from jobreactor.storage.base import IJobStorage, StorageError

T = TypeVar("T")

__all__ = ["Monitor", "parse_status"]


def parse_status(text: str | Status) -> Status:
    """The status named ``text``: its value (``"in progress"``) or its name (``in_progress``)."""
    if isinstance(text, Status):
        return text
    wanted = text.strip().lower()
    for status in Status:
        if wanted in (status.value, status.name.lower(), status.value.replace(" ", "-")):
            return status
    known = ", ".join(repr(status.value) for status in Status)
    raise ValueError(f"{text!r} is not a job status; statuses are {known}")


def _in_order(jobs: list[Job]) -> list[Job]:
    """Jobs due first come first; the id keeps the order stable."""
    return sorted(jobs, key=lambda job: (job.run_at or 0.0, job.id))


@attrs.define
class Monitor:
    """Look at and remove the jobs kept in ``storage`` (which the caller opens and closes)."""

    storage: IJobStorage

    def nodes(self) -> Deferred[list[str]]:
        """The names of the nodes that have jobs stored, sorted."""
        return self.storage.nodes()

    def jobs_for(
        self, node: str, statuses: str | Status | Collection[str | Status] | None = None
    ) -> Deferred[list[Job]]:
        """The jobs of ``node``, those with one of ``statuses`` if given, due ones first."""
        if statuses is None:
            wanted = None
        elif isinstance(statuses, str):  # a Status is a str too
            wanted = {parse_status(statuses)}
        else:
            wanted = {parse_status(status) for status in statuses}
        return self.storage.jobs_for(node, wanted).addCallback(_in_order)

    def all_jobs(
        self, statuses: str | Status | Collection[str | Status] | None = None
    ) -> Deferred[list[tuple[str, Job]]]:
        """``(node, job)`` for the jobs of every node, by node name, due ones first in each."""

        async def all_jobs() -> list[tuple[str, Job]]:
            found: list[tuple[str, Job]] = []
            for node in await self.storage.nodes():
                found.extend((node, job) for job in await self.jobs_for(node, statuses))
            return found

        return _deferred(all_jobs())

    def find(self, job_id: str) -> Deferred[list[tuple[str, Job]]]:
        """``(node, job)`` for each node that stores job ``job_id`` (one, unless rerouted)."""

        async def find() -> list[tuple[str, Job]]:
            found: list[tuple[str, Job]] = []
            for node in await self.storage.nodes():
                job = await self.storage.load(node, job_id)
                if job is not None:
                    found.append((node, job))
            return found

        return _deferred(find())

    def load(self, node: str, job_id: str) -> Deferred[Job | None]:
        """The job ``job_id`` of ``node``, or None."""
        return self.storage.load(node, job_id)

    def destroy(self, node: str, job_id: str) -> Deferred[bool]:
        """Remove the job; fires with whether it was there."""

        async def destroy() -> bool:
            try:
                found = await self.storage.load(node, job_id) is not None
            except StorageError:  # unreadable (set aside by the node), still there to remove
                found = True
            await self.storage.remove(node, job_id)
            return found

        return _deferred(destroy())

    def destroy_all_jobs_for(self, node: str) -> Deferred[int]:
        """Remove every job of ``node``; fires with how many there were."""

        async def destroy_all() -> int:
            jobs = await self.storage.jobs_for(node, None)
            for job in jobs:
                await self.storage.remove(node, job.id)
            return len(jobs)

        return _deferred(destroy_all())

    def counts(self) -> Deferred[dict[str, dict[Status, int]]]:
        """How many jobs each node has in each status (statuses with none are left out)."""

        async def counts() -> dict[str, dict[Status, int]]:
            result: dict[str, dict[Status, int]] = {}
            for node in await self.storage.nodes():
                per_status: dict[Status, int] = {}
                for job in await self.storage.jobs_for(node, None):
                    per_status[job.status] = per_status.get(job.status, 0) + 1
                if per_status:
                    result[node] = {s: per_status[s] for s in Status if s in per_status}
            return result

        return _deferred(counts())


def _deferred(coroutine: Coroutine[Any, Any, T]) -> Deferred[T]:
    return Deferred.fromCoroutine(coroutine)
