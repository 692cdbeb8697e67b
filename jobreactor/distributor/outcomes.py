# mypy: disable-error-code="misc"
# (mixin methods take ``self: Distributor``, a subclass of their own class, on purpose)
"""Outcomes: nodes' reports turned into feedbacks, handles and outboxes for remote peers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet import error as internet_error
from twisted.python.failure import Failure

from jobreactor.distributor.records import (
    OUTCOME_RETRY_FIRST,
    OUTCOME_RETRY_MAX,
    _Entry,
    _NodeLink,
    _Outbox,
    _report_size,
    log,
    log_failure,
)
from jobreactor.errors import InvalidJobError
from jobreactor.first_failure import warn_first_failure
from jobreactor.limits import printable
from jobreactor.model import Report, Status
from jobreactor.outcomes import final_outcome, fire_feedback
from jobreactor.protocol import (
    BadMessage,
    CancelJobs,
    NotEncodable,
    Outcomes,
    in_boxes,
)

if TYPE_CHECKING:
    from jobreactor.distributor.service import Distributor


class OutcomeDesk:
    """Reports and outboxes (mixed into :class:`Distributor`)."""

    def _reports(self: Distributor, link: _NodeLink, raw: Any) -> None:
        if not isinstance(raw, list):
            raise BadMessage("reports must be a list of report objects")
        reports = []
        for item in raw:
            try:
                reports.append(Report.from_wire(item, link.protocol.limits))
            except InvalidJobError as error:
                # One bad report is that report's problem: the others in the box still count.
                log.warn(
                    "ignoring a malformed report from {peer}: {error}",
                    peer=link.protocol.describe_peer(),
                    error=printable(str(error), 300),
                )
        foreign: list[str] = []
        if reports:
            link.gave_nothing = False  # its load changed: a GiveBack may find jobs again
        for report in reports:
            link.load.discard(report.job_id)
            if report.duration is not None:
                link.measure(duration=report.duration)
            entry = self._owned.get(report.job_id)
            if entry is None:
                log.debug("ignoring a report for job {job_id}: not pending", job_id=report.job_id)
                continue
            if not entry.was_sent_to(link.name):
                foreign.append(report.job_id)
                continue
            if report.handed_back:
                if entry.node == link.name:
                    self._requeue([entry])
                continue
            elsewhere = entry.node
            applied = self._apply(entry, report)
            if applied and report.final and elsewhere not in (None, link.name):
                self._cancel_on(elsewhere, entry.job.id)  # a late node finished it first
        if foreign:
            log.warn(
                "refused {count} reports from node {node} for jobs never sent to it: {job_ids}",
                count=len(foreign),
                node=link.name,
                job_ids=", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else ""),
            )
        self._schedule_dispatch()

    def _cancel_on(self: Distributor, node: str | None, job_id: str) -> None:
        link = self._links.get(node or "")
        if link is not None:
            self._call(link, CancelJobs, job_ids=[job_id]).addErrback(
                self._log_failure, "cancelling job {job_id}", job_id=job_id
            )

    def _apply(self: Distributor, entry: _Entry, report: Report) -> bool:
        """Take ``report`` into account; False if it was a duplicate and changed nothing."""
        if report.feedback is not None:
            if report.run <= entry.last_run:
                log.info(
                    "ignoring a duplicate outcome of run {run} of job {job_id}",
                    run=report.run,
                    job_id=entry.job.id,
                )
                return False
            entry.last_run = report.run
        self.stats.reported(entry.job, report)
        if report.final:
            # args stay as enqueued: the stored outcome keeps them for a retry.
            entry.job = attrs.evolve(entry.job, status=report.status, run=report.run)
        else:
            # The job goes on at its node; keep what a re-route would need. A retry starts
            # again from the attempt's starting args, a periodic run from the args it left.
            entry.job = attrs.evolve(
                entry.job,
                status=report.status,
                run=report.run,
                attempt=report.attempt,
                run_at=report.run_at,
                args=report.args if report.feedback == "success" else entry.job.args,
            )
            self._keep_job(entry)
            warn_first_failure(entry.job, report, entry.node)
        if report.final:
            self._finish_with_report(entry, report)
        elif report.feedback is not None:
            self._fire(entry, report)
            if report.feedback == "success":
                self._handle_run(entry, report)  # a periodic or cron run ended well
        return True

    def _finish_with_report(self: Distributor, entry: _Entry, report: Report) -> None:
        self._finish(entry, report, final_outcome(entry.job, report))

    def _finish(self: Distributor, entry: _Entry, report: Report | None, outcome: Any) -> None:
        if self._owned.pop(entry.job.id, None) is entry:
            self._admission.release(entry.origin, entry.size)
        self.stats.finished(entry.job, report, entry.node)
        if entry.node is not None and entry.node in self._links:
            self._links[entry.node].load.discard(entry.job.id)
        if report is None:  # ended here (cancelled while waiting): tell the origin
            report = Report(
                entry.job.id, entry.job.run, Status.CANCELLED, None, True, entry.job.args
            )
        self._keep_outcome(entry, report)
        self._unique_release(entry, report)
        self._dependency_finished(entry, report)
        self._fire(entry, report)
        # The entry's handle, or the one made at enqueue if someone still holds it (an
        # entry that holds its handle has none held weakly: see Distributor._own).
        handle = entry.handle if entry.handle is not None else self._handles.pop(entry.job.id)
        if handle is not None:
            handle._settle(outcome)

    def _fire(self: Distributor, entry: _Entry, report: Report) -> None:
        if entry.origin is not None:
            self._forward(entry.origin, report, entry.owner)
        else:
            fire_feedback(entry.job, report, entry.success, entry.error)
        if entry.followers:
            self._fire_followers(entry, report)

    def _forward(self: Distributor, origin: str, report: Report, owner: str | None = None) -> None:
        outbox = self._outboxes.setdefault(origin, _Outbox())
        outbox.reports.append(report)
        outbox.owners[report.job_id] = owner
        if origin not in self._links:
            size = _report_size(report)
            outbox.kept_bytes += size
            self._admission.kept_outcome_bytes += size
        if origin not in self._links and len(outbox.reports) > self.config.max_outcomes_kept:
            # The peer is away: keep the newest (a periodic job of a peer that never comes
            # back must not grow this without bound).
            if not outbox.dropping:
                log.warn(
                    "peer {peer} is away with {count} outcomes waiting (max_outcomes_kept): "
                    "dropping the oldest",
                    peer=printable(origin, 80),
                    count=len(outbox.reports),
                )
            outbox.dropping = True
            size = _report_size(outbox.reports.pop(0))
            outbox.kept_bytes -= size
            self._admission.kept_outcome_bytes -= size
        if origin in self._links:
            self._schedule_outbox(origin, outbox)
        elif outbox.expiry is None and self.running:
            outbox.expiry = self._clock.callLater(
                self.config.outcome_keep_seconds, self._expire_outbox, origin
            )
        self._trim_kept()

    def _recount_kept(self: Distributor, origin: str) -> None:
        """Count the outbox of ``origin`` against ``max_outcome_bytes_kept`` if the peer is
        away (it just left, or reports came back from a lost connection), not if it is here."""
        outbox = self._outboxes.get(origin)
        if outbox is None:
            return
        kept = 0 if origin in self._links else sum(map(_report_size, outbox.reports))
        self._admission.kept_outcome_bytes += kept - outbox.kept_bytes
        outbox.kept_bytes = kept
        self._trim_kept()

    def _expire_outbox(self: Distributor, origin: str) -> None:
        outbox = self._outboxes.pop(origin, None)
        if outbox is None:
            return
        if outbox.expiry is not None and outbox.expiry.active():
            outbox.expiry.cancel()
        self._admission.kept_outcome_bytes -= outbox.kept_bytes

    def _trim_kept(self: Distributor) -> None:
        """Drop the mailboxes of the peers away longest while all kept outcomes together are
        above ``max_outcome_bytes_kept`` (peers that never come back cannot fill memory)."""
        cap = self.config.max_outcome_bytes_kept
        if self._admission.kept_outcome_bytes <= cap:
            return
        for origin in list(self._outboxes):
            if self._admission.kept_outcome_bytes <= cap:
                return
            if origin in self._links:
                continue
            log.warn(
                "dropping the {count} outcomes kept for absent peer {peer}: outcomes kept for "
                "absent peers are above {cap} bytes (max_outcome_bytes_kept)",
                count=len(self._outboxes[origin].reports),
                peer=printable(origin, 80),
                cap=cap,
            )
            self._expire_outbox(origin)

    def _schedule_outbox(self: Distributor, origin: str, outbox: _Outbox) -> None:
        if outbox.flush_call is None and outbox.reports:
            outbox.flush_call = self._clock.callLater(0, self._flush_outbox, origin)

    def _flush_outbox(self: Distributor, origin: str) -> None:
        outbox = self._outboxes.get(origin)
        link = self._links.get(origin)
        if outbox is None:
            return
        outbox.flush_call = None
        if link is None or not outbox.reports:
            return
        session = link.protocol.session
        waiting, outbox.reports = outbox.reports, []
        reports: list[Report] = []
        for report in waiting:
            owned = self.gate.may_collect(session, outbox.owners.get(report.job_id))
            (reports if owned else outbox.reports).append(report)
        if outbox.reports:
            log.warn(
                "keeping {count} outcomes for {name}: user {user} did not enqueue those jobs",
                count=len(outbox.reports),
                name=origin,
                user=session.user,
            )
        put_back = [0]  # boxes fail in the order they were sent: keep that order
        for box in in_boxes(reports, _report_size, link.protocol.limits):
            self._send_outcomes(origin, link, outbox, box, put_back)

    def _send_outcomes(
        self: Distributor,
        origin: str,
        link: _NodeLink,
        outbox: _Outbox,
        box: list[Report],
        put_back: list[int],
    ) -> None:
        finals = {report.job_id for report in box if report.final}
        outbox.sending |= finals
        sent = self._call(link, Outcomes, reports=[report.to_wire() for report in box])
        sent.addBoth(_answered, outbox, finals)
        owners = {report.job_id: outbox.owners.get(report.job_id) for report in box}

        def delivered(_: Any) -> None:
            kept = self._outboxes.get(origin)
            still_kept = {report.job_id for report in kept.reports} if kept else set()
            for report in box:
                if kept is not None and report.job_id not in still_kept:
                    kept.owners.pop(report.job_id, None)

        def failed(failure: Failure) -> None:
            if failure.check(NotEncodable):
                if len(box) > 1:
                    for report in box:  # one outcome that cannot be sent loses only itself
                        self._send_outcomes(origin, link, outbox, [report], put_back)
                    return
                log.warn(
                    "peer {peer} did not take {count} outcomes: {error}",
                    peer=printable(origin, 80),
                    count=len(box),
                    error=printable(failure.getErrorMessage(), 300),
                )
                return
            # Kept either way (§4.6): the peer collects them when it is back, or they are
            # offered again after its error.
            kept = self._outboxes.setdefault(origin, _Outbox())
            at = put_back[0]
            kept.reports[at:at] = box
            kept.owners.update(owners)
            put_back[0] += len(box)
            self._recount_kept(origin)
            if failure.check(internet_error.ConnectionClosed, internet_error.ConnectionLost):
                return
            self._retry_outbox(origin, kept, failure)

        def taken(answer: Any) -> None:
            self._outcomes_taken(answer, origin, box)
            delivered(answer)

        sent.addCallbacks(taken, failed)
        sent.addErrback(log_failure, "handling the answer to Outcomes")

    def _outcomes_taken(self: Distributor, answer: Any, origin: str, box: list[Report]) -> None:
        outbox = self._outboxes.get(origin)
        if outbox is not None:
            outbox.retry_delay = 0.0
        self._delivered(answer, box)

    def _delivered(self: Distributor, _: Any, box: list[Report]) -> None:
        for report in box:
            if report.final and self._ledger.durable:
                self._ledger.add(("delivered", report.job_id))

    def _retry_outbox(self: Distributor, origin: str, outbox: _Outbox, failure: Failure) -> None:
        """The peer answered Outcomes with an error: offer the reports again, backing off."""
        delay = min(max(OUTCOME_RETRY_FIRST, outbox.retry_delay * 2), OUTCOME_RETRY_MAX)
        outbox.retry_delay = delay
        log.warn(
            "peer {peer} refused {count} outcomes ({error}); offering them again in {delay:g} s",
            peer=origin,
            count=len(outbox.reports),
            error=failure.getErrorMessage(),
            delay=delay,
        )
        if outbox.flush_call is not None and outbox.flush_call.active():
            outbox.flush_call.cancel()
        outbox.flush_call = self._clock.callLater(delay, self._flush_outbox, origin)


def _answered(result: Any, outbox: _Outbox, finals: set[str]) -> Any:
    """The peer answered (or the box is back in an outbox): no longer in flight."""
    outbox.sending -= finals
    return result
