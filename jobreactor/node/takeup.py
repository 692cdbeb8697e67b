# mypy: disable-error-code="misc"
# (mixin methods take ``self: Node``, a subclass of their own class, on purpose)
"""Taking up stored jobs: only once their distributor has accepted this node's Hello.

A node loads its unfinished jobs when it starts, but runs none of them yet: the distributor
may refuse the node (another node of that name is connected, so these jobs are that node's
business), or may have given some of them to other nodes meanwhile. The Hello lists them in
``held``; the answer's ``drop`` says which to forget, and the rest are taken up.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from jobreactor.model import Job

log = Logger()

if TYPE_CHECKING:
    from jobreactor.node.links import _DistributorLink
    from jobreactor.node.service import Node


class TakingUp:
    """Stored jobs waiting for their distributor's welcome (mixed into :class:`Node`)."""

    def _keep_stored(self: Node, jobs: Iterable[Job]) -> None:
        """Set aside the jobs loaded at start, per distributor, until its Hello is answered."""
        orphans: dict[str, int] = {}
        for job in jobs:
            endpoint = job.distributor or ""
            if endpoint in self._links:
                self._stored.setdefault(endpoint, {})[job.id] = job
            else:
                orphans[endpoint or "(none)"] = orphans.get(endpoint or "(none)", 0) + 1
        if orphans:
            log.warn(
                "node {node}: {count} stored jobs came from distributors this node no longer "
                "dials ({endpoints}); they stay in storage and do not run",
                node=self.name,
                count=sum(orphans.values()),
                endpoints=", ".join(f"{e}: {n}" for e, n in sorted(orphans.items())),
            )

    def _stored_for(self: Node, link: _DistributorLink) -> list[str]:
        """Ids of the stored jobs not yet taken up that came from ``link``'s distributor."""
        return list(self._stored.get(link.endpoint, {}))

    def _take_up(
        self: Node, link: _DistributorLink, answer: dict[str, Any], previous_id: str | None
    ) -> None:
        """Apply a Hello answer's ``drop``, then take up the stored jobs that remain."""
        stored = self._stored.pop(link.endpoint, {})
        dropped_jobs = dropped_reports = 0
        for job_id in {str(job_id) for job_id in answer.get("drop") or []}:
            job = stored.pop(job_id, None) or self._jobs.get(job_id)
            outbox = [report for report in link.outbox if report.job_id == job_id]
            if outbox:
                link.outbox = [report for report in link.outbox if report.job_id != job_id]
            if job is not None and job.distributor == link.endpoint:
                dropped_jobs += 1
                self._forget(job_id)
                self.storage.remove(self.node_name, job_id).addErrback(
                    self._log_failure, "removing job {job_id}", job_id=job_id
                )
            elif outbox:
                # A finished job whose report waited: its record (a failed job kept for
                # inspection, say) stays as the node's settings left it.
                dropped_reports += len(outbox)
        restarted = previous_id not in (None, answer["distributor_id"])
        if dropped_jobs and restarted:
            log.warn(
                "distributor {endpoint} restarted without storage and does not know {count} "
                "held jobs; dropping them (give the distributor storage= to keep them)",
                endpoint=link.endpoint,
                count=dropped_jobs,
            )
        elif dropped_jobs:
            log.warn(
                "distributor {endpoint} does not know {count} jobs this node held for it (it "
                "gave them to other nodes meanwhile, or restarted without storage); dropping them",
                endpoint=link.endpoint,
                count=dropped_jobs,
            )
        if dropped_reports:
            log.warn(
                "distributor {endpoint} does not know the jobs of {count} reports waiting for "
                "it{why}; dropping the reports (the jobs' records stay in storage)",
                endpoint=link.endpoint,
                count=dropped_reports,
                why=" (it restarted without storage)" if restarted else "",
            )
        for job in stored.values():
            self._hold(job)
        if stored:
            log.info(
                "node {node} took up {count} stored jobs from distributor {endpoint}",
                node=self.name,
                count=len(stored),
                endpoint=link.endpoint,
            )
