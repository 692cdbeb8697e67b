"""Storage in the node's memory: the fastest, and nothing survives the process."""

from __future__ import annotations

from collections.abc import Collection
from typing import ClassVar

import attrs
from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from jobreactor.model import Job, Status
from jobreactor.storage.base import IJobStorage


@implementer(IJobStorage)
@attrs.define
class MemoryStorage:
    """Jobs in a dict per node; every Deferred has already fired.

    Leases are a dict too: only nodes given this very storage object can share it, and they
    live in one process, so there is no holder to outlive and no expiry.
    """

    _jobs: dict[str, dict[str, Job]] = attrs.Factory(dict)
    _leases: dict[str, str] = attrs.Factory(dict)
    leases_expire: ClassVar[bool] = False

    def open(self) -> Deferred[None]:
        return succeed(None)

    def save(self, node: str, job: Job) -> Deferred[None]:
        self._jobs.setdefault(node, {})[job.id] = job
        return succeed(None)

    def load(self, node: str, job_id: str) -> Deferred[Job | None]:
        return succeed(self._jobs.get(node, {}).get(job_id))

    def remove(self, node: str, job_id: str) -> Deferred[None]:
        self._jobs.get(node, {}).pop(job_id, None)
        return succeed(None)

    def jobs_for(
        self, node: str, statuses: Collection[Status] | None = None
    ) -> Deferred[list[Job]]:
        jobs = list(self._jobs.get(node, {}).values())
        if statuses is not None:
            jobs = [job for job in jobs if job.status in statuses]
        return succeed(jobs)

    def nodes(self) -> Deferred[list[str]]:
        return succeed(sorted(node for node, jobs in self._jobs.items() if jobs))

    def acquire_lease(self, node: str, owner: str, seconds: float) -> Deferred[bool]:
        return succeed(self._leases.setdefault(node, owner) == owner)

    def renew_lease(self, node: str, owner: str, seconds: float) -> Deferred[bool]:
        return succeed(self._leases.get(node) == owner)

    def release_lease(self, node: str, owner: str) -> Deferred[None]:
        if self._leases.get(node) == owner:
            del self._leases[node]
        return succeed(None)

    def close(self) -> Deferred[None]:
        return succeed(None)
