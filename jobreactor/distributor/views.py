"""Read-only views of the distributor's jobs and waiting line, for the dashboard and ``jr``.

Each is a plain snapshot in the reactor thread: nothing here changes a job.
"""

from __future__ import annotations

from itertools import islice
from typing import TYPE_CHECKING, cast

from jobreactor.distributor.records import _PackedEntry
from jobreactor.model import Job

if TYPE_CHECKING:
    from jobreactor.distributor.service import Distributor


class ClusterViews:
    """Mixed into :class:`~jobreactor.distributor.Distributor` (``cast``: mypy cannot see that
    this mixin's ``self`` is always a Distributor)."""

    def waiting_by_priority(self) -> list[tuple[int, int]]:
        """``(priority, jobs waiting here)``, highest priority first (jobs due later too)."""
        distributor = cast("Distributor", self)
        counts = distributor._waiting.counts_by_priority()
        for priority, count in distributor._future.counts_by_priority().items():
            counts[priority] = counts.get(priority, 0) + count
        return sorted(counts.items(), reverse=True)

    def waiting_jobs(self, limit: int) -> list[Job]:
        """The first ``limit`` jobs waiting here, in the order they will go (O(limit))."""
        distributor = cast("Distributor", self)
        jobs = [entry.peek() for entry in islice(distributor._waiting, limit)]
        if len(jobs) < limit:
            jobs.extend(entry.peek() for entry in islice(distributor._future, limit - len(jobs)))
        return jobs

    def owned_jobs(self, *, scheduled: bool = False) -> list[tuple[Job, str | None]]:
        """Every job owned here with the node holding it (None: waiting here).

        ``scheduled``: at least those with a ``run_at`` or a ``period`` (the dashboard's
        delayed jobs), without the packed jobs of a long line, which have neither: a view of
        a million waiting jobs does not unpack them all.
        """
        owned = cast("Distributor", self)._owned
        if scheduled:
            return [
                (entry.job, entry.node)
                for entry in owned.values()
                if not isinstance(entry, _PackedEntry)
            ]
        return [(entry.peek(), entry.node) for entry in owned.values()]

    def owned_job(self, job_id: str) -> tuple[Job, str | None] | None:
        """One owned job and the node holding it, or None if it is not pending here."""
        entry = cast("Distributor", self)._owned.get(job_id)
        return None if entry is None else (entry.peek(), entry.node)

    def cancel_ids(self, job_ids: list[str]) -> list[str]:
        """Cancel the pending jobs among ``job_ids`` (as ``cancel``); return those ids."""
        return cast("Distributor", self)._cancel_ids(job_ids)
