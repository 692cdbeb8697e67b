# mypy: disable-error-code="misc"
# (mixin methods take ``self: Node``, a subclass of their own class, on purpose)
"""Running: one attempt of a job, then retry, reschedule or end.

An attempt that ends at once (plain functions that neither wait nor fail) runs as plain
calls, with no Deferred; one that waits or fails goes on as a Deferred chain (see
:mod:`jobreactor.chain`). Each state change is saved before the report that describes it is
sent.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import attrs
from twisted.logger import Logger

from jobreactor.chain import AttemptOutcome
from jobreactor.chain import run_attempt_now as run_attempt  # an outcome, or a Deferred of one
from jobreactor.cron import next_run
from jobreactor.definitions import JobDefinition
from jobreactor.limits import printable
from jobreactor.model import Job, Status
from jobreactor.node.context import _current_node
from jobreactor.storage.base import stored_at_once

log = Logger()

if TYPE_CHECKING:
    from jobreactor.node.service import Node


class Running:
    """Attempts and their outcomes (mixed into :class:`Node`)."""

    def _start_attempt(self: Node, job: Job) -> None:
        job = attrs.evolve(
            job,
            status=Status.IN_PROGRESS,
            attempt=job.attempt + 1,
            run=job.run + 1 if job.attempt == 0 else job.run,
        )
        self._jobs[job.id] = job
        saved = self.storage.save(self.node_name, job)
        # Until the attempt runs, this placeholder holds the slot; a cancel arriving while
        # the save is under way is honoured when it ends (the save itself is not cut short).
        self._running[job.id] = saved
        if stored_at_once(saved):
            self._run(job)  # already written (memory storage): no callback to wait for
            return
        self._starting[job.id] = saved
        saved.addErrback(self._log_failure, "saving job {job_id}", job_id=job.id)

        def saved_then_run(_: Any) -> None:
            self._starting.pop(job.id, None)
            if job.id in self._cancelling or job.id not in self._jobs:  # cancelled or let go
                self._attempt_done(AttemptOutcome("cancelled", job.args, "success"), job.id, None)
                return
            self._run(job)

        saved.addCallback(saved_then_run)
        saved.addErrback(self._log_failure, "starting job {job_id}", job_id=job.id)

    def _run(self: Node, job: Job) -> None:
        definition = self.registry.get(job.name)
        if definition is None:
            known = ", ".join(self.registry.names()) or "none"
            error = f"no job named {job.name!r} is defined on node {self.name} (it has: {known})"
            args = dict(job.args, error=error, error_type="NoSuchJob")
            self._attempt_done(
                AttemptOutcome("error", args, "error", error, "NoSuchJob"), job.id, None
            )
            return
        self._attempt_started[job.id] = self._clock.seconds()
        token = _current_node.set(self)
        try:
            attempt = run_attempt(
                definition,
                job.args,
                clock=self._clock,
                job_itself=self._job_itself(job) if self.config.merge_job_itself_to_args else None,
                timeout=job.timeout if job.timeout is not None else definition.timeout,
                threadpool=self._threadpool if job.defer else None,
                reactor=self._reactor,
            )
        except Exception as error:
            self._attempt_done(self._not_started(job, error), job.id, definition)
            return
        finally:
            _current_node.reset(token)
        if isinstance(attempt, AttemptOutcome):  # it ended at once
            self._attempt_done(attempt, job.id, definition)
            return
        self._running[job.id] = attempt
        attempt.addErrback(lambda failure: self._not_started(job, failure.value))
        attempt.addCallback(self._attempt_done, job.id, definition)
        attempt.addErrback(self._log_failure, "finishing job {job_id}", job_id=job.id)

    def _not_started(self: Node, job: Job, error: BaseException | None) -> AttemptOutcome:
        """An attempt that broke down outside the job's own code (a value no check foresaw,
        a bug): a failed attempt like any other, so it frees its slot and retries or fails."""
        message = printable(f"the attempt could not run: {error!r}", 1000)
        log.warn("job {job_id}: {error}", job_id=job.id, error=message)
        error_type = type(error).__name__
        args = dict(job.args, error=message, error_type=error_type)
        return AttemptOutcome("error", args, "error", message, error_type)

    def _job_itself(self: Node, job: Job) -> dict[str, Any]:
        record = job.to_wire()
        del record["args"]
        record["node"] = self.name
        return record

    def _retry_delay(self: Node, job: Job, definition: JobDefinition | None) -> float:
        if job.period is not None:
            return job.period
        if job.retry_delay is not None:
            return job.retry_delay
        default = job.attempt * float(self.config.retry_multiplier)
        if definition is not None and definition.retry_delay is not None:
            delay = definition.retry_delay
            if not callable(delay):
                return float(delay)
            try:
                seconds = float(delay(job.attempt))
                if not math.isfinite(seconds) or seconds < 0:
                    raise ValueError(f"it returned {seconds!r}")
            except Exception:
                log.failure(
                    "retry_delay of job {name} failed for attempt {attempt}; "
                    "using attempt * retry_multiplier = {default} s",
                    name=job.name,
                    attempt=job.attempt,
                    default=default,
                )
                return default
            return seconds
        return default

    def _attempt_done(
        self: Node, outcome: AttemptOutcome, job_id: str, definition: JobDefinition | None
    ) -> None:
        self._running.pop(job_id, None)
        self._starting.pop(job_id, None)
        started = self._attempt_started.pop(job_id, None)
        job = self._jobs.get(job_id)
        if started is not None and job is not None:
            self._attempt_seconds[job_id] = max(0.0, self._clock.seconds() - started)
        if job is None:  # dropped meanwhile (given to another node): only free its slot
            self._cancelling.discard(job_id)
            self._handing_back.discard(job_id)
            self._after_attempt()
            return
        self._settle_attempt(job, outcome, definition)
        self._after_attempt()

    def _settle_attempt(
        self: Node, job: Job, outcome: AttemptOutcome, definition: JobDefinition | None
    ) -> None:
        job_id = job.id
        now = self._clock.seconds()
        if job_id in self._handing_back:
            self._handing_back.discard(job_id)
            self._hand_back(job)
        elif job_id in self._cancelling:
            self._cancelling.discard(job_id)
            self._end(job, Status.CANCELLED, None, outcome.args)
        elif outcome.kind == "success" and (job.period is not None or job.cron is not None):
            next_at = now + job.period if job.period is not None else next_run(job, now)
            after_run = attrs.evolve(
                job, status=Status.QUEUED, attempt=0, args=outcome.args, run_at=next_at
            )
            self._keep(after_run)
            self._report(after_run, "success", final=False, args=outcome.args)
        elif outcome.kind == "success":
            self._end(job, Status.COMPLETE, "success", outcome.args, store_args=True)
        elif outcome.kind == "cancelled":
            log.info(
                "job {job_id} ({job_name}) cancelled itself on node {node} (attempt {attempt})",
                job_id=job.id,
                job_name=job.name,
                node=self.name,
                attempt=job.attempt,
            )
            self._end(
                job,
                Status.CANCELLED,
                outcome.feedback,
                outcome.args,
                error=outcome.error,
                error_type=outcome.error_type,
                traceback=outcome.traceback,
            )
        else:
            failed = attrs.evolve(
                job, failed_at=now, last_error=outcome.error, last_error_type=outcome.error_type
            )
            limit = job.max_attempt or (definition.max_attempt if definition else None)
            limit = limit or self.config.max_attempt
            if definition is not None and job.attempt < limit:
                delay = self._retry_delay(job, definition)
                log.warn(
                    "job {job_id} ({job_name}) attempt {attempt} of {max_attempt} failed on "
                    "node {node}: {error_type}: {error}; retry in {delay:g} s",
                    job_id=job.id,
                    job_name=job.name,
                    node=self.name,
                    attempt=job.attempt,
                    max_attempt=limit,
                    error_type=outcome.error_type,
                    error=outcome.error,
                    delay=delay,
                )
                retry = attrs.evolve(
                    failed, status=Status.ERROR, run_at=now + delay, make_after=delay
                )
                self._keep(retry)
                self._report(retry, None, final=False, args=outcome.args)
            else:
                log.error(
                    "job {job_id} ({job_name}) failed for good on node {node} after attempt "
                    "{attempt}: {error_type}: {error}",
                    job_id=job.id,
                    job_name=job.name,
                    node=self.name,
                    attempt=job.attempt,
                    error_type=outcome.error_type,
                    error=outcome.error,
                )
                self._end(
                    failed,
                    Status.FAILED,
                    "error",
                    outcome.args,
                    error=outcome.error,
                    error_type=outcome.error_type,
                    traceback=outcome.traceback,
                )

    def _keep(self: Node, job: Job) -> None:
        if self._stopping:
            self._hand_back(job)
            return
        self.storage.save(self.node_name, job).addErrback(
            self._log_failure, "saving job {job_id}", job_id=job.id
        )
        self._hold(job)

    def _end(
        self: Node,
        job: Job,
        status: Status,
        feedback: str | None,
        args: dict[str, Any],
        *,
        store_args: bool = False,
        error: str | None = None,
        error_type: str | None = None,
        traceback: str | None = None,
    ) -> None:
        """End ``job`` with the final ``status``: its record is removed or kept (with
        ``args`` if ``store_args``, else its own), and its report sent."""
        self._forget(job.id)
        remove = {
            Status.COMPLETE: self.config.remove_done_jobs,
            Status.CANCELLED: self.config.remove_cancelled_jobs,
            Status.FAILED: self.config.remove_failed_jobs,
        }[status]
        if remove:  # no final record to build
            stored = self.storage.remove(self.node_name, job.id)
        else:
            final = (
                attrs.evolve(job, status=status, args=args)
                if store_args
                else attrs.evolve(job, status=status)
            )
            stored = self.storage.save(self.node_name, final)
        if not stored_at_once(stored):  # pending, or failed
            stored.addErrback(self._log_failure, "storing the end of job {job_id}", job_id=job.id)
        self._report(
            job,
            feedback,
            status=status,
            final=True,
            args=args,
            error=error,
            error_type=error_type,
            traceback=traceback,
        )
