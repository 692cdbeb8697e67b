# mypy: disable-error-code="misc"
# (mixin methods take ``self: Distributor``, a subclass of their own class, on purpose)
"""Keeping: what the distributor writes to its storage, and what it reloads after a restart.

With ``storage="sqlite:..."`` or ``"redis://..."`` a job is written before it is
acknowledged, its node is written when it is sent, and its final outcome is written
before the node's report is acknowledged; a restarted distributor reloads its id (so nodes
keep what they hold for it), its waiting jobs (in priority and FIFO order), the jobs that
were on nodes (theirs again if the node comes back within ``node_grace_period``, re-routed
otherwise), the outcomes not yet delivered to remote clients, and the outcomes whose result
handlers had not finished (run again).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from jobreactor.distributor.records import _Entry, _job_size, log
from jobreactor.distributor.unique import follower_records, restore_followers
from jobreactor.errors import InvalidJobError
from jobreactor.jsontext import lenient
from jobreactor.model import Job, Report, Status
from jobreactor.results import (
    HANDLER_DONE,
    HANDLER_GAVE_UP,
    HANDLER_PENDING,
    OUTCOME_STATUS,
    Outcome,
)

if TYPE_CHECKING:
    from jobreactor.distributor.service import Distributor

#: Most outcomes reloaded at start for delivery or for their handlers.
RELOAD_LIMIT = 10_000_000
#: Seconds between sweeps of expired outcomes (at most; less for a short ``result_ttl``).
EXPIRY_SWEEP = 60.0
#: First pause before a failing result handler runs again (doubling, at most HANDLER_PAUSE_MAX).
HANDLER_PAUSE = 1.0
HANDLER_PAUSE_MAX = 60.0


class Keeping:
    """Durability (mixed into :class:`Distributor`)."""

    _expiry_call: IDelayedCall | None

    async def _load(self: Distributor) -> None:
        await self.storage.open()
        self.id = await self.storage.identity(self.id)
        if not self.storage.durable:
            return
        # Outcomes stored before this start expire within result_ttl from now at the latest.
        self._expiry_marks.append(self._clock.seconds())
        self._mark_expiry(self._clock.seconds() + self.config.result_ttl)
        records = await self.storage.jobs()
        on_nodes: dict[str, int] = {}
        for record in records:
            try:
                entry = self._restore(record)
            except (InvalidJobError, KeyError, TypeError, ValueError) as error:
                log.error(
                    "distributor storage {storage}: a stored job is unreadable and is left "
                    "where it is: {error}",
                    storage=self.storage,
                    error=str(error)[:500],
                )
                continue
            self._seq = max(self._seq, int(record.get("seq", 0)) + 1)
            if entry.node is None:
                if not self._awaits_dependencies(entry):
                    self._queue_for(entry).append(entry)
            else:
                on_nodes[entry.node] = on_nodes.get(entry.node, 0) + 1
        for node in on_nodes:
            # As for a node that just disconnected: its jobs wait for it for a while.
            self._grace_timers[node] = self._clock.callLater(
                self.config.node_grace_period, self._reroute, node
            )
        await self._reload_unique()
        self._pack_deep()
        undelivered = await self.storage.outcomes("undelivered", RELOAD_LIMIT)
        for outcome in undelivered:
            if outcome.origin is not None:
                self._forward(outcome.origin, _outcome_report(outcome))
        pending = await self.storage.outcomes("pending", RELOAD_LIMIT)
        log.info(
            "distributor {id} loaded from {storage}: {waiting} jobs waiting, {held} on "
            "{nodes} nodes, {undelivered} outcomes to deliver, {pending} to handle",
            id=self.id,
            storage=self.storage,
            waiting=len(records) - sum(on_nodes.values()),
            held=sum(on_nodes.values()),
            nodes=len(on_nodes),
            undelivered=len(undelivered),
            pending=len(pending),
        )
        for outcome in pending:
            self._handle(outcome)
        self._schedule_dispatch()

    def _restore(self: Distributor, record: dict[str, Any]) -> _Entry:
        job = Job.from_wire(record["job"])
        entry = _Entry(
            job=job,
            handle=self.new_handle(job),
            success=None,
            error=None,
            node=record.get("node"),
            last_run=int(record.get("last_run", 0)),
            size=_job_size(job),
            origin=record.get("origin"),
        )
        entry.seq = int(record.get("seq", 0))
        restore_followers(entry, record)
        # Where it went before the restart is not all written (assignments are group-
        # committed): any node's report or held list still counts for it.
        entry.sent_to_unknown = True
        self._owned[job.id] = entry
        self._admission.add(entry.origin, entry.size)
        return entry

    # -- writing -----------------------------------------------------------------------

    def _keep_job(self: Distributor, entry: _Entry) -> None:
        """Write the job's record (new, or changed by a report that does not end it)."""
        if not self._ledger.durable:
            return
        if entry.seq < 0:
            entry.seq = self._seq
            self._seq += 1
        record = {
            "job": entry.job.to_wire(),
            "seq": entry.seq,
            "origin": entry.origin,
            "last_run": entry.last_run,
        }
        if entry.followers:
            record["followers"] = follower_records(entry)
        self._ledger.add(("job", entry.job.id, lenient(record), entry.seq))

    def _keep_node(self: Distributor, entry: _Entry) -> None:
        if self._ledger.durable:
            self._ledger.add(("assign", entry.job.id, entry.node))

    def _keep_outcome(self: Distributor, entry: _Entry, report: Report) -> Outcome:
        """Write the final outcome (and forget the job) in one batch; start its handlers."""
        handlers = self.handlers.for_name(entry.job.name)
        outcome = Outcome.from_report(
            entry.job.name,
            report,
            self._clock.seconds(),
            entry.job.to_wire(),
            origin=entry.origin,
            handled=HANDLER_PENDING if handlers else HANDLER_DONE,
        )
        self._mark_expiry(outcome.finished_at + self.config.result_ttl)
        if not self._ledger.durable:
            self.storage.keep(outcome, outcome.finished_at + self.config.result_ttl)
            if handlers:
                self._handle(outcome)
            return outcome
        self._ledger.add(("drop", entry.job.id))
        self._ledger.add(
            (
                "outcome",
                outcome.job_id,
                lenient(outcome.to_json()),
                outcome.finished_at + self.config.result_ttl,
                outcome.origin,
                0 if outcome.origin is not None else 1,
                outcome.handled,
                outcome.name,
                outcome.status,
                outcome.finished_at,
            )
        )
        if handlers:
            self._ledger.written().addCallback(lambda _: self._handle(outcome))
        return outcome

    # -- result handlers -------------------------------------------------------------------

    def _handle(self: Distributor, outcome: Outcome, attempt: int = 1) -> None:
        """Run the outcome's handlers; mark it handled when all succeeded."""
        self._handler_retries.pop(outcome.job_id, None)
        if not self.running:
            return  # stopped: the outcome stays pending, its handlers run at the next start
        handlers = self.handlers.for_name(outcome.name)
        if not handlers:
            self._ledger.add(("handled", outcome.job_id, HANDLER_DONE))
            return
        runs = [maybeDeferred(h.function, outcome) for h in handlers]
        limit = min(h.max_attempt for h in handlers)

        async def together() -> None:
            failures = []
            for run in runs:
                try:
                    await run
                except Exception:
                    failures.append(Failure())
            if failures:
                raise _HandlerFailed(failures)

        def succeeded(_: Any) -> None:
            self._handler_runs.pop(outcome.job_id, None)
            self._ledger.add(("handled", outcome.job_id, HANDLER_DONE))

        def failed(failure: Failure) -> None:
            self._handler_runs.pop(outcome.job_id, None)
            errors = failure.value.failures if isinstance(failure.value, _HandlerFailed) else []
            for error in errors or [failure]:
                log.failure(
                    "result handler of job {job_id} ({name}) failed (attempt {attempt} of {limit})",
                    error,
                    job_id=outcome.job_id,
                    name=outcome.name,
                    attempt=attempt,
                    limit=limit,
                )
            if attempt >= limit:
                log.error(
                    "result handler of job {job_id} ({name}) gave up after {attempt} attempts; "
                    "the outcome stays unhandled (jr outcomes --unhandled lists it)",
                    job_id=outcome.job_id,
                    name=outcome.name,
                    attempt=attempt,
                )
                self._ledger.add(("handled", outcome.job_id, HANDLER_GAVE_UP))
                return
            pause = min(HANDLER_PAUSE * 2 ** (attempt - 1), HANDLER_PAUSE_MAX)
            self._handler_retries[outcome.job_id] = self._clock.callLater(
                pause, self._handle, outcome, attempt + 1
            )

        running = Deferred.fromCoroutine(together())
        self._handler_runs[outcome.job_id] = running
        running.addCallbacks(succeeded, failed)

    def _handle_run(self: Distributor, entry: _Entry, report: Report) -> None:
        """Run the result handlers for one successful run of a periodic or cron job.

        Such a run has no final outcome to store: its handlers run in this process, with
        retries, but are not run again after a restart (docs/durability.md).
        """
        if not self.handlers.for_name(entry.job.name):
            return
        outcome = attrs.evolve(
            Outcome.from_report(entry.job.name, report, self._clock.seconds(), {}),
            status="done",
            origin=entry.origin,
        )
        self._handle(outcome)

    # -- look-ups and retries ---------------------------------------------------------------

    def outcome(self: Distributor, job_id: str) -> Deferred[Outcome | None]:
        """The stored final outcome of ``job_id`` (None if unknown, unfinished or expired)."""
        return self._ledger.written().addCallback(lambda _: self.storage.outcome(job_id))

    def outcomes(
        self: Distributor, which: str = "all", limit: int = 100
    ) -> Deferred[list[Outcome]]:
        """Stored outcomes, newest first: ``all``, ``done``, ``failed``, ``cancelled``,
        ``pending`` / ``unhandled`` (by handler state) or ``undelivered``."""
        return self._ledger.written().addCallback(lambda _: self.storage.outcomes(which, limit))

    def retry(self: Distributor, job_id: str) -> Deferred[str]:
        """Run a finished job again: same id, same args as it was enqueued, a new run.

        Fires with the job id once the job is queued (and written); fails with
        ``KeyError`` when no stored outcome has that id, ``ValueError`` while it is still
        owned here.
        """
        if job_id in self._owned:
            return fail(ValueError(f"job {job_id} is not finished: it cannot be retried"))

        def found(outcome: Outcome | None) -> Deferred[str]:
            if outcome is None or not outcome.job:
                raise KeyError(f"no stored outcome for job {job_id}")
            if job_id in self._owned:
                raise ValueError(f"job {job_id} is already queued again")
            job = Job.from_wire(outcome.job)
            job = attrs.evolve(
                job,
                status=Status.NEW,
                attempt=0,
                run_at=None,
                failed_at=None,
                last_error=None,
                last_error_type=None,
                enqueued_at=self._clock.seconds(),
            )
            handle = self.submit(job, origin=outcome.origin)
            self._owned[job_id].last_run = outcome.run
            log.info("job {job_id} ({name}) queued again by retry", job_id=job_id, name=job.name)
            return handle.accepted.addCallback(lambda _: job_id)

        return self.outcome(job_id).addCallback(found)

    async def _retry_ids(self: Distributor, job_ids: list[str]) -> dict[str, Any]:
        retried: list[str] = []
        rejected: list[dict[str, Any]] = []
        for job_id in job_ids:
            try:
                retried.append(await self.retry(job_id))
            except (KeyError, ValueError) as error:
                rejected.append({"id": job_id, "error": str(error).strip("'\"")})
        return {"retried": retried, "rejected": rejected}

    # -- expiry ------------------------------------------------------------------------

    def _mark_expiry(self: Distributor, expires_at: float) -> None:
        """Remember when a sweep is due; marks are rounded so there are few of them."""
        step = min(EXPIRY_SWEEP, max(self.config.result_ttl / 4, 0.5))
        mark = math.ceil(expires_at / step) * step
        if not self._expiry_marks or self._expiry_marks[-1] < mark:
            self._expiry_marks.append(mark)
        self._schedule_expiry()

    def _schedule_expiry(self: Distributor) -> None:
        """One timer, for the earliest mark: an idle distributor with nothing stored has none."""
        if self._expiry_call is None and self._expiry_marks and self.running:
            delay = max(0.0, self._expiry_marks[0] - self._clock.seconds())
            self._expiry_call = self._clock.callLater(delay, self._expire)

    def _expire(self: Distributor) -> None:
        self._expiry_call = None
        now = self._clock.seconds()
        while self._expiry_marks and self._expiry_marks[0] <= now:
            self._expiry_marks.popleft()
        swept = self._ledger.written().addCallback(lambda _: self.storage.expire(now))

        def more_due(removed: int) -> None:
            # A storage that removes at most a batch per call (Redis) left the rest: sweep
            # again at once, else they would wait for the next mark (or forever).
            batch = getattr(self.storage, "expire_batch", None)
            if batch is not None and removed >= batch:
                self._expiry_marks.appendleft(now)

        swept.addCallback(more_due)
        swept.addErrback(self._log_failure, "removing expired outcomes")
        swept.addBoth(lambda _: self._schedule_expiry())
        # A stop waits for it: closing the storage under it would fail it (and log that).
        self._sweeping = swept
        swept.addBoth(lambda _: setattr(self, "_sweeping", None))


class _HandlerFailed(Exception):
    def __init__(self, failures: list[Failure]) -> None:
        super().__init__(f"{len(failures)} result handlers failed")
        self.failures = failures


def _outcome_report(outcome: Outcome) -> Report:
    """The final report an undelivered outcome is sent as, again, after a restart."""
    status = {value: key for key, value in OUTCOME_STATUS.items()}.get(outcome.status)
    status = status or Status(outcome.status)
    return Report(
        outcome.job_id,
        outcome.run,
        status,
        outcome.feedback,
        True,
        outcome.args,
        outcome.error,
        outcome.error_type,
    )
