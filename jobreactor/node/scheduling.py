# mypy: disable-error-code="misc"
# (mixin methods take ``self: Node``, a subclass of their own class, on purpose)
"""Scheduling: accepting jobs (stored before acknowledged), timers, slots, cancels.

Every wait is a timer on the injected clock (``callLater``); nothing polls. Jobs due now
share one: they start together on the next reactor turn, a burst of them in one call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from jobreactor.cron import next_run, skips_missed_run
from jobreactor.errors import InvalidJobError
from jobreactor.limits import DEFAULT_LIMITS, printable
from jobreactor.model import Job, Report, Status
from jobreactor.protocol import (
    BadMessage,
)
from jobreactor.storage.base import stored_at_once

log = Logger()

if TYPE_CHECKING:
    from jobreactor.node.links import _DistributorLink
    from jobreactor.node.service import Node


class Scheduling:
    """Taking, timing and dropping jobs (mixed into :class:`Node`)."""

    _ready_call: IDelayedCall | None
    _due_call: IDelayedCall | None
    _due_now: dict[str, None]

    def _accept(self: Node, link: _DistributorLink, raw_jobs: Any) -> Deferred[dict[str, Any]]:
        if not isinstance(raw_jobs, list):
            raise BadMessage("jobs must be a list of job objects")
        rejected: list[dict[str, Any]] = []
        accepted: list[str] = []
        fresh: list[Job] = []
        if self._stopping:
            refusal = f"node {self.name} is stopping"
            for raw in raw_jobs:
                job_id = raw.get("id") if isinstance(raw, dict) else None
                rejected.append({"id": job_id, "error": refusal, "retry": True})
            return defer.succeed({"accepted": [], "parked": [], "rejected": rejected})
        for raw in raw_jobs:
            try:
                job = Job.from_wire(
                    raw,
                    link.protocol.limits if link.protocol else DEFAULT_LIMITS,
                    status=Status.QUEUED,
                    distributor=link.endpoint,
                )
            except InvalidJobError as error:
                job_id = raw.get("id") if isinstance(raw, dict) else None
                if not isinstance(job_id, str) or len(job_id) > DEFAULT_LIMITS.max_name_length:
                    job_id = None  # echo back only what can be sent back
                rejected.append({"id": job_id, "error": printable(error, 500), "retry": False})
                continue
            if job.id in self._jobs or job.id in self._accepting:
                accepted.append(job.id)  # sent twice (e.g. after a reconnect): already held
                continue
            fresh.append(job)

        self._accepting.update(job.id for job in fresh)
        saves = [self.storage.save(self.node_name, job) for job in fresh]

        def stored(results: list[tuple[bool, Any]]) -> dict[str, Any]:
            now = self._clock.seconds()
            parked = []
            for job, (ok, result) in zip(fresh, results, strict=True):
                self._accepting.discard(job.id)
                if not ok:
                    log.warn(
                        "node {node} could not store job {job_id}, refused it: {error}",
                        node=self.name,
                        job_id=job.id,
                        error=result.getErrorMessage(),
                    )
                    rejected.append(
                        {"id": job.id, "error": "the node could not store it", "retry": True}
                    )
                    continue
                accepted.append(job.id)
                if job.run_at is not None and job.run_at > now:
                    parked.append(job.id)
                self._hold(job)
            cancels = [job_id for job_id in accepted if job_id in self._cancel_when_accepted]
            if cancels:
                self._cancel_when_accepted.difference_update(cancels)
                self._clock.callLater(0, self._cancel, cancels)  # after the answer goes out
            return {"accepted": accepted, "parked": parked, "rejected": rejected}

        if all(map(stored_at_once, saves)):
            # All written already (memory storage): no DeferredList to wait on.
            return defer.succeed(stored([(True, None)] * len(saves)))
        return DeferredList(saves, consumeErrors=True).addCallback(stored)

    def _hold(self: Node, job: Job) -> None:
        self._jobs[job.id] = job
        if job.run_at is not None:
            delay = job.run_at - self._clock.seconds()
            if delay > 0:
                self._due_now.pop(job.id, None)
                self._timers[job.id] = self._clock.callLater(delay, self._due, job.id)
                return
        # Due now: one call on the next turn starts it with every other job due now (a
        # timer each would cost a heap entry and a reactor wake-up per job).
        self._due_now[job.id] = None
        if self._due_call is None:
            self._due_call = self._clock.callLater(0, self._start_due)

    def _start_due(self: Node) -> None:
        self._due_call = None
        due = self._due_now
        self._due_now = {}  # those held while these start are the next turn's
        for job_id in due:
            self._due(job_id)
        self._flush_reports()

    def _flush_reports(self: Node) -> None:
        # Jobs that ended inside this call report at once (see flush_now).
        for link in self._links.values():
            if link.flush_call is not None:
                link.flush_now()

    def _due(self: Node, job_id: str) -> None:
        self._timers.pop(job_id, None)
        job = self._jobs.get(job_id)
        if job is None:
            return
        if self._stopping:
            self._hand_back(job)
            return
        if job.run_at is not None and job.run_at > self._clock.seconds():
            self._hold(job)  # the wall clock moved back: wait again, never run early
            return
        if skips_missed_run(job, self._clock.seconds()):
            self._skip_missed_run(job)
            return
        if len(self._running) >= self.slots:
            self._ready.append(job_id)
            return
        self._start_attempt(job)

    def _skip_missed_run(self: Node, job: Job) -> None:
        """A cron run no node could start in time (``missed="skip"``): wait for the next."""
        now = self._clock.seconds()
        later = attrs.evolve(job, run_at=next_run(job, now))
        log.info(
            "cron job {job_id} ({job_name}) missed its run at {missed}: next run at {next}",
            job_id=job.id,
            job_name=job.name,
            missed=job.run_at,
            next=later.run_at,
        )
        self._keep(later)
        self._report(later, None, final=False, args=later.args)

    def _start_next_ready(self: Node) -> None:
        while self._ready and len(self._running) < self.slots and not self._stopping:
            job = self._jobs.get(self._ready.popleft())
            if job is not None:
                self._start_attempt(job)

    def _after_attempt(self: Node) -> None:
        self.jobs_run += 1
        if self.after_attempt is not None:
            self.after_attempt()  # e.g. a Recycler counting jobs
        # Start what waits for the freed slot on the next turn: starting it here would nest
        # one call per queued job (a job that ends at once starts the next one inside this
        # call), and thousands of jobs falling due together would exhaust the stack.
        if self._ready and self._ready_call is None:
            self._ready_call = self._clock.callLater(0, self._start_ready_now)
        if self._drained is not None and not self._running and not self._drained.called:
            self._drained.callback(None)

    def _start_ready_now(self: Node) -> None:
        self._ready_call = None
        self._start_next_ready()
        self._flush_reports()

    def _hand_back(self: Node, job: Job) -> None:
        """Give an unstarted job back to its distributor (this node is stopping)."""
        self._forget(job.id)
        self._attempt_seconds.pop(job.id, None)
        self.storage.remove(self.node_name, job.id).addErrback(
            self._log_failure, "removing job {job_id}", job_id=job.id
        )
        link = self._links.get(job.distributor or "")
        if link is not None:
            link.send(
                Report(
                    job.id,
                    job.run,
                    job.status,
                    None,
                    False,
                    job.args,
                    run_at=job.run_at,
                    attempt=job.attempt,
                    handed_back=True,
                )
            )

    def _forget(self: Node, job_id: str) -> None:
        """Stop holding a job: no timer, no place in memory (storage is the caller's business)."""
        self._jobs.pop(job_id, None)
        self._due_now.pop(job_id, None)
        timer = self._timers.pop(job_id, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _cancel(self: Node, job_ids: list[str]) -> list[str]:
        cancelled = []
        for job_id in job_ids:
            job = self._jobs.get(job_id)
            if job is None:
                if job_id in self._accepting:  # still being stored: cancel it right after
                    self._cancel_when_accepted.add(job_id)
                    cancelled.append(job_id)
                continue
            cancelled.append(job_id)
            running = self._running.get(job_id)
            if running is not None:
                self._cancelling.add(job_id)
                if job_id not in self._starting:
                    running.cancel()  # a thread job's outcome is ignored when its thread ends
                continue
            if job_id in self._ready:
                self._ready.remove(job_id)
            self._end(job, Status.CANCELLED, None, job.args)
        return cancelled

    def _give_back(self: Node, link: _DistributorLink, job_ids: list[str], count: int) -> list[str]:
        """Hand back up to ``count`` of these jobs from ``link`` that have not started.

        A job queued for a slot here while another node has one idle should run there; a job
        that has started (or is being stored, or waits for a later time) stays.
        """
        given: list[str] = []
        now = self._clock.seconds()
        for job_id in job_ids:
            if len(given) >= count:
                break
            job = self._jobs.get(job_id)
            if (
                job is None
                or job_id in self._running
                or job_id in self._accepting
                or job.distributor != link.endpoint
                or (job.run_at is not None and job.run_at > now)
            ):
                continue
            if job_id in self._ready:
                self._ready.remove(job_id)
            self._hand_back(job)
            given.append(job_id)
        return given
