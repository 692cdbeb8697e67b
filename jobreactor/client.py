"""Enqueueing through a distributor in another process: the remote client, and the same
machinery a node uses to enqueue jobs for other nodes.

A client is a peer that says ``Hello`` with 0 slots: it takes no jobs, it only sends
``Enqueue`` and receives ``Outcomes``. Jobs are validated and given their id here, in the
caller's process; until the distributor acknowledges them they stay in the client and are
sent again after a reconnect (the distributor takes a resent id as already accepted). The
distributor keeps outcomes for a client that is away and hands them over when a client of
the same name says hello again, so a blip loses nothing; each run's feedback fires once.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application import service
from twisted.application.internet import ClientService
from twisted.internet import error as internet_error
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from jobreactor.config import Config
from jobreactor.dialing import DialReport, check_client_endpoint, reporting_service
from jobreactor.enqueueing import build_job_sized, check_feedbacks
from jobreactor.errors import InvalidJobError, NotRunningError, QueueFullError
from jobreactor.handle import JobHandle
from jobreactor.limits import printable
from jobreactor.login import Credentials, check_credentials, say_hello
from jobreactor.model import Job, Report, Status
from jobreactor.outcomes import Feedback, final_outcome, fire_feedback, refusal_report
from jobreactor.protocol import (
    BadMessage,
    CancelJobs,
    Enqueue,
    GetOutcome,
    JobReactorAMP,
    Outcomes,
    QueueFull,
    close_after_refusal,
    in_boxes,
    retry_policy,
)
from jobreactor.results import Outcome

log = Logger()

#: Failures that mean "the connection went away", not "the distributor said no".
LINK_LOST = (internet_error.ConnectionClosed, internet_error.ConnectionLost)
#: Seconds between offers of held jobs to a distributor that answered ``QUEUE_FULL``.
QUEUE_FULL_RETRY = 1.0


@attrs.define(eq=False)
class _Submitted:
    job: Job
    handle: JobHandle
    success: Feedback | None
    error: Feedback | None
    acknowledged: bool = False
    #: Sent at least once: the distributor may have it even if no answer came back.
    ever_sent: bool = False
    last_run: int = 0
    size: int = 0
    #: Later enqueues here with this job's ``unique_key`` that became this job.
    twins: list[_Submitted] = attrs.Factory(list)


class Submitter:
    """The jobs one peer enqueued through one distributor connection, until their outcome.

    ``protocol`` is the live connection (None while away); the owner sets it after a
    successful ``Hello`` and clears it when the connection is lost.
    """

    def __init__(
        self, clock: IReactorTime, max_args_bytes: int, max_held: int | None = None
    ) -> None:
        self._clock = clock
        self._max_args_bytes = max_args_bytes
        #: Most jobs held here at once (None: no cap); past it ``submit`` raises.
        self.max_held = max_held
        self._queue_full_retry: IDelayedCall | None = None
        self._queue_full_since: float | None = None
        self.protocol: JobReactorAMP | None = None
        self._jobs: dict[str, _Submitted] = {}
        self._send_call: IDelayedCall | None = None
        #: Jobs to send in the next Enqueue, in enqueue order.
        self._to_send: dict[str, _Submitted] = {}
        self._cancel_later: set[str] = set()
        #: Called with each report for a job this process does not know: outcomes the
        #: distributor kept for a previous process of the same client name.
        self.on_unknown_outcome: Callable[[dict[str, Any]], Any] | None = None

    @property
    def pending(self) -> int:
        """Jobs enqueued here that have no final outcome yet."""
        return len(self._jobs)

    @property
    def full(self) -> bool:
        """Whether this client holds as many jobs as it may (``submit`` would raise)."""
        return self.max_held is not None and len(self._jobs) >= self.max_held

    def enqueue(
        self,
        name: str,
        args: dict[str, Any] | None,
        options: dict[str, Any],
        success: Feedback | None,
        error: Feedback | None,
    ) -> JobHandle:
        check_feedbacks(success, error)
        job, args_bytes = build_job_sized(
            name, args, options, now=self._clock.seconds(), max_args_bytes=self._max_args_bytes
        )
        return self.submit(job, success, error, args_bytes=args_bytes)

    def submit(
        self,
        job: Job,
        success: Feedback | None,
        error: Feedback | None,
        handle: JobHandle | None = None,
        *,
        args_bytes: int | None = None,
    ) -> JobHandle:
        """Hold ``job`` until the distributor owns it. ``args_bytes``: its args' JSON size
        where the caller just measured it (not encoded again)."""
        if self.full:
            raise QueueFullError(
                f"this client holds {len(self._jobs)} jobs without an outcome "
                "(max_waiting_jobs_per_sender); try again later"
            )
        handle = handle or JobHandle(job.id, job.name, self.cancel)
        handle._awaiting_acceptance()  # until the distributor answers that it owns the job
        if args_bytes is None:
            args_bytes = len(json.dumps(job.args, separators=(",", ":")))
        size = args_bytes + 400
        self._jobs[job.id] = self._to_send[job.id] = _Submitted(
            job, handle, success, error, size=size
        )
        self.schedule_send()
        return handle

    def cancel(self, handle: JobHandle) -> None:
        submitted = self._jobs.get(handle.id)
        if submitted is None:
            return
        if not submitted.ever_sent:
            # never left this process: it ends here
            report = Report(handle.id, 0, Status.CANCELLED, None, True, submitted.job.args)
            self._settle(submitted, report)
            return
        if self.protocol is None:
            self._cancel_later.add(handle.id)  # asked for as soon as the link is back
            return
        self._ask_cancel([handle.id])

    def _ask_cancel(self, job_ids: list[str]) -> None:
        assert self.protocol is not None
        try:
            asked: Deferred[Any] = self.protocol.callRemote(CancelJobs, job_ids=job_ids)
        except Exception:
            self._cancel_later.update(job_ids)  # the connection is closing: ask again later
            return

        def failed(failure: Failure) -> None:
            if failure.check(*LINK_LOST):
                self._cancel_later.update(job_ids)  # the link went: ask again when it is back
                return
            log.failure("cancelling jobs {job_ids}", failure, job_ids=job_ids)

        asked.addErrback(failed)

    def connected(self, protocol: JobReactorAMP) -> None:
        self.protocol = protocol
        for submitted in self._jobs.values():
            submitted.acknowledged = False  # resend: the distributor may never have got it
        self._to_send = dict(self._jobs)
        self.schedule_send()
        cancels = [job_id for job_id in self._cancel_later if job_id in self._jobs]
        self._cancel_later.clear()
        if cancels:
            self._clock.callLater(0, self._ask_cancel, cancels)  # after the resend

    def disconnected(self) -> None:
        self.protocol = None

    def schedule_send(self) -> None:
        if self._queue_full_retry is not None:
            return  # the distributor is full: the retry sends everything held
        if self._send_call is None and self.protocol is not None:
            self._send_call = self._clock.callLater(0, self._send)

    def _send(self) -> None:
        self._send_call = None
        protocol = self.protocol
        if protocol is None:
            return
        unsent = list(self._to_send.values())
        self._to_send.clear()
        for box in in_boxes(unsent, lambda submitted: submitted.size):
            for submitted in box:
                submitted.acknowledged = True  # in flight; a lost connection resets it
                submitted.ever_sent = True
            try:
                sent: Deferred[Any] = protocol.callRemote(
                    Enqueue, jobs=[submitted.job.to_wire() for submitted in box]
                )
            except Exception:
                log.failure("could not send {count} jobs", count=len(box))
                for submitted in box:  # sent again with the next batch or after a reconnect
                    submitted.acknowledged = False
                    self._to_send[submitted.job.id] = submitted
                continue
            sent.addCallbacks(self._answered, self._unsent, errbackArgs=(box,))
            sent.addErrback(lambda failure: log.failure("handling an Enqueue answer", failure))

    def _answered(self, answer: dict[str, Any]) -> None:
        merged = answer.get("merged") or {}
        for job_id in answer.get("accepted") or []:
            kept = self._jobs.get(str(job_id))
            if kept is not None:
                if job_id in merged:
                    kept = self._merge(kept, str(merged[job_id]))
                kept.handle._accepted()
        held: list[_Submitted] = []
        for refusal in answer.get("rejected") or []:
            submitted = (
                self._jobs.get(str(refusal.get("id"))) if isinstance(refusal, dict) else None
            )
            if submitted is None:
                continue
            if refusal.get("queue_full"):
                submitted.acknowledged = False
                held.append(submitted)
                continue
            message = str(refusal.get("error", "refused by the distributor"))
            self._settle(submitted, refusal_report(submitted.job, message, "RejectedByDistributor"))
        if held:
            self._hold(held, "the distributor's queue is full")
        elif self._queue_full_since is not None and self._queue_full_retry is None:
            log.info(
                "distributor takes jobs again after {seconds:.1f} s",
                seconds=self._clock.seconds() - self._queue_full_since,
            )
            self._queue_full_since = None

    def _merge(self, submitted: _Submitted, existing_id: str) -> _Submitted:
        """The distributor already had a job with this one's ``unique_key``: from now on
        the handle is that job's, and settles with its outcome."""
        sent_id = submitted.job.id
        self._jobs.pop(sent_id, None)
        self._to_send.pop(sent_id, None)
        submitted.job = attrs.evolve(submitted.job, id=existing_id)
        submitted.handle.id = existing_id
        kept = self._jobs.get(existing_id)
        if kept is not None and kept is not submitted:
            kept.twins.append(submitted)
        else:
            self._jobs[existing_id] = submitted
        log.info(
            "job {sent_id} is job {job_id}: same unique key", sent_id=sent_id, job_id=existing_id
        )
        return submitted

    def _unsent(self, failure: Failure, box: list[_Submitted]) -> None:
        for submitted in box:
            submitted.acknowledged = False
        if failure.check(QueueFull):
            self._hold(box, failure.getErrorMessage())
            return
        if not failure.check(*LINK_LOST):
            log.failure("distributor refused {count} jobs", failure, count=len(box))
            message = failure.getErrorMessage()
            for submitted in box:
                self._settle(submitted, refusal_report(submitted.job, message, "EnqueueFailed"))

    def _hold(self, box: list[_Submitted], reason: str) -> None:
        """The distributor is full: keep the jobs (in their order) and offer them again
        later, every ``QUEUE_FULL_RETRY`` seconds, until it takes them."""
        self._to_send = {s.job.id: s for s in box if s.job.id in self._jobs} | self._to_send
        if self._queue_full_since is None:
            self._queue_full_since = self._clock.seconds()
            log.warn("distributor is full, holding jobs here: {reason}", reason=reason)
        if self._queue_full_retry is None:

            def retry() -> None:
                self._queue_full_retry = None
                self.schedule_send()

            self._queue_full_retry = self._clock.callLater(QUEUE_FULL_RETRY, retry)

    def outcomes(self, raw: Any) -> None:
        """Apply ``Outcomes`` from the distributor: fire feedbacks once per run, settle handles."""
        if not isinstance(raw, list):
            raise BadMessage("reports must be a list of report objects")
        reports = []
        for item in raw:
            try:
                reports.append(Report.from_wire(item))
            except InvalidJobError as error:  # one bad report loses only itself
                log.warn("ignoring a malformed outcome: {error}", error=printable(error, 300))
        for report in reports:
            submitted = self._jobs.get(report.job_id)
            if submitted is None:
                self._unknown(report)
                continue
            if report.feedback is not None:
                if report.run <= submitted.last_run and report.run > 0:
                    continue
                submitted.last_run = report.run
            if report.final:
                self._settle(submitted, report)
            else:
                for each in (submitted, *submitted.twins):
                    fire_feedback(each.job, report, each.success, each.error)

    def _unknown(self, report: Report) -> None:
        """A report for no job of this process: a late duplicate, or an outcome kept for a
        previous process of this client name, which only ``on_unknown_outcome`` can use."""
        if self.on_unknown_outcome is None:
            log.info("outcome of job {job_id} has no handle here: dropped", job_id=report.job_id)
            return
        try:
            self.on_unknown_outcome(report.to_wire())
        except Exception:
            log.failure("on_unknown_outcome raised for job {job_id}", job_id=report.job_id)

    def _settle(self, submitted: _Submitted, report: Report) -> None:
        if report.error_type in ("RejectedByDistributor", "EnqueueFailed") or (
            not submitted.ever_sent
        ):
            submitted.handle._accepted(Failure(InvalidJobError(report.error or "not accepted")))
        else:
            submitted.handle._accepted()  # an outcome came back: the distributor had it
        self._jobs.pop(submitted.job.id, None)
        self._to_send.pop(submitted.job.id, None)
        for each in (submitted, *submitted.twins):
            each.handle._accepted()
            fire_feedback(each.job, report, each.success, each.error)
            each.handle._settle(final_outcome(each.job, report))


class ClientProtocol(JobReactorAMP):
    def __init__(self, client: Client) -> None:
        super().__init__()
        self.client = client

    @Outcomes.responder
    def outcomes(self, reports: Any) -> dict[str, Any]:
        self.client.submitter.outcomes(reports)
        return {}

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        if self.client.submitter.protocol is self:
            self.client.submitter.disconnected()
            log.info("client {name} lost its distributor", name=self.client.name)


class _ClientFactory(Factory):
    #: No "Starting factory" / "Stopping factory" line at each attempt: DialReport says what
    #: matters (where, why, once per change).
    noisy = False

    def __init__(self, client: Client) -> None:
        self.client = client

    def buildProtocol(self, addr: Any) -> ClientProtocol:
        protocol = ClientProtocol(self.client)
        protocol.factory = self
        return protocol


class Client(service.Service):
    """An application's connection to a standalone distributor (``twistd jr-distributor``).

    ``enqueue`` gives the same handle, Deferred and feedbacks as an embedded
    :class:`~jobreactor.Distributor`; call it in the reactor thread (``JR.enqueue`` does the
    thread hop). ``name`` identifies the client to the distributor: keep it stable across
    restarts of a long-lived process to collect outcomes that arrived while it was away:
    jobs of this process get their feedbacks and handles as usual; reports for jobs of a
    previous process (no handle here) go to ``on_unknown_outcome(report_dict)``.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        name: str | None = None,
        config: Config | None = None,
        reactor: Any = None,
        clock: IReactorTime | None = None,
        on_unknown_outcome: Callable[[dict[str, Any]], Any] | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.endpoint = endpoint
        self.client_name = name or f"client-{uuid.uuid4()}"
        self.name = self.client_name
        self.config = config if config is not None else Config()
        self._reactor = reactor
        self._clock: IReactorTime = clock if clock is not None else reactor
        self.submitter = Submitter(
            self._clock, self.config.max_args_bytes, self.config.max_waiting_jobs_per_sender
        )
        self.submitter.on_unknown_outcome = on_unknown_outcome
        self._service: ClientService | None = None
        self._waiting_connect: list[Deferred[Client]] = []
        self.distributor_id: str | None = None
        self._refusals = 0
        self.credentials = check_credentials(credentials)
        self.dial_report = DialReport(f"client {self.client_name}", endpoint)

    def startService(self) -> None:
        super().startService()
        self._service = reporting_service(
            self._reactor,
            self.dial_report,
            _ClientFactory(self),
            retryPolicy=retry_policy(lambda: self._refusals),
            clock=self._clock,
            prepareConnection=self._hello,
        )
        self._service.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.dial_report.forget()
        if self._service is not None:
            stopped: Deferred[None] = self._service.stopService()
            return stopped
        return succeed(None)

    def _hello(self, protocol: Any) -> Deferred[Any]:
        said = say_hello(
            protocol,
            name=self.client_name,
            slots=0,
            held=[],
            credentials=self.credentials,
            endpoint=self.endpoint,
        )

        def welcomed(answer: dict[str, Any]) -> None:
            self._refusals = 0
            self.dial_report.accepted()
            self.distributor_id = answer["distributor_id"]
            protocol.start_heartbeat(
                self._clock, self.config.heartbeat_interval, self.config.heartbeat_timeout
            )
            self.submitter.connected(protocol)
            log.info(
                "client {name} connected to {endpoint}",
                name=self.client_name,
                endpoint=self.endpoint,
            )
            waiting, self._waiting_connect = self._waiting_connect, []
            for waiter in waiting:
                waiter.callback(self)

        def refused(failure: Failure) -> None:
            self._refusals += 1
            self.dial_report.hello_refused(failure)
            close_after_refusal(protocol, self._clock)
            waiting, self._waiting_connect = self._waiting_connect, []
            for waiter in waiting:  # JR.connect / when_connected learn why at once
                waiter.errback(failure)

        return said.addCallbacks(welcomed, refused)

    def when_connected(self) -> Deferred[Client]:
        """Fire once the distributor has accepted this client (bound it with addTimeout)."""
        waiter: Deferred[Client] = Deferred(lambda d: self._waiting_connect.remove(d))
        if self.submitter.protocol is not None:
            waiter.callback(self)
        else:
            self._waiting_connect.append(waiter)
        return waiter

    @property
    def connected(self) -> bool:
        return self.submitter.protocol is not None

    @property
    def pending(self) -> int:
        """Jobs enqueued through this client that have no final outcome yet."""
        return self.submitter.pending

    def enqueue(
        self,
        name: str,
        args: dict[str, Any] | None = None,
        *,
        success: Feedback | None = None,
        error: Feedback | None = None,
        **options: Any,
    ) -> JobHandle:
        """Validate a job here and send it to the distributor (now, or once connected)."""
        return self.submitter.enqueue(name, args, options, success, error)

    def submit(
        self,
        job: Job,
        *,
        success: Feedback | None = None,
        error: Feedback | None = None,
        handle: JobHandle | None = None,
    ) -> JobHandle:
        return self.submitter.submit(job, success, error, handle)

    def cancel(self, handle: JobHandle) -> None:
        self.submitter.cancel(handle)

    def outcome(self, job_id: str) -> Deferred[Outcome | None]:
        """The distributor's stored final outcome of ``job_id`` (None if it has none).

        Fails with ``NotRunningError`` while not connected.
        """
        protocol = self.submitter.protocol
        if protocol is None:
            return fail(NotRunningError(f"client {self.client_name} is not connected"))
        asked: Deferred[dict[str, Any]] = protocol.callRemote(GetOutcome, job_id=job_id)
        return asked.addCallback(
            lambda answer: (
                None if answer["outcome"] is None else Outcome.from_json(answer["outcome"])
            )
        )


def connect(
    endpoint: str,
    *,
    name: str | None = None,
    config: Config | None = None,
    reactor: Any = None,
    on_unknown_outcome: Callable[[dict[str, Any]], Any] | None = None,
    credentials: Credentials | None = None,
) -> Client:
    """Start a :class:`Client` of the distributor at ``endpoint`` (``"tcp:host=H:port=P"``).

    Call in the reactor thread. Jobs enqueued before the connection is up wait in the
    client; ``client.when_connected()`` fires once it is. ``credentials=(user, password)``
    for a distributor started with ``--auth`` (docs/security.md).
    """
    check_client_endpoint(endpoint, reactor)
    client = Client(
        endpoint,
        name=name,
        config=config,
        reactor=reactor,
        on_unknown_outcome=on_unknown_outcome,
        credentials=credentials,
    )
    client.startService()
    return client
