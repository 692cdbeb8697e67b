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
import math
import uuid
from collections.abc import Callable
from typing import Any

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
from jobreactor.enqueueing import check_feedbacks, job_fields, new_job_id
from jobreactor.errors import InvalidJobError, NotRunningError, QueueFullError
from jobreactor.handle import JobHandle
from jobreactor.jsontext import compact
from jobreactor.limits import printable
from jobreactor.login import Credentials, check_credentials, say_hello
from jobreactor.model import Job, Report, Status
from jobreactor.outcomes import Feedback, final_outcome, fire_feedback, refusal_report
from jobreactor.protocol import (
    BadMessage,
    CancelJobs,
    Encoded,
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


#: Most distinct job shapes (name and options) kept to be shared by the jobs held next;
#: past it the cache starts afresh (held jobs keep theirs).
_MAX_SHAPES = 1024
_SHAPES: dict[tuple[str, str, str], tuple[str, str, str]] = {}
#: The shape of a job of this name enqueued with no option.
_PLAIN_SHAPES: dict[str, tuple[str, str, str]] = {}


def _quoted(text: str) -> str:
    """``text`` as a JSON string, as ``compact`` writes it (ids and names rarely need escapes)."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return compact(text)


def _number(value: Any) -> str:
    """A number (or None) as ``compact`` writes it; NaN and infinities raise ``ValueError``."""
    if type(value) is float and math.isfinite(value):
        return float.__repr__(value)
    return compact(value)


def _shape(wire: dict[str, Any]) -> tuple[str, str, str]:
    """The text of a job's wire form around its id, args and ``enqueued_at``, shared by the
    held jobs of one name and options (it is most of the text)."""
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    part = before
    for key, value in wire.items():
        if key == "enqueued_at":
            part = after  # the fields after it, in their order
        elif key not in ("id", "name", "args"):
            part[key] = value
    shape = (
        f',"name":{_quoted(wire["name"])},"args":',
        f',{compact(before)[1:-1]},"enqueued_at":',
        f",{compact(after)[1:]}",
    )
    if len(_SHAPES) >= _MAX_SHAPES:
        _SHAPES.clear()  # shapes of one job each (a run_at of its own) crowded it out
    return _SHAPES.setdefault(shape, shape)


class _Submitted:
    """One job held here until its final outcome.

    The job is kept as its wire text in pieces (its args' JSON, a shape shared by jobs of
    the same name and options, ``enqueued_at``; the id is the handle's), not as a Job and
    its args dict: a client may hold a million of them, each sent as this text as it is.
    """

    __slots__ = (
        "args",
        "at",
        "error",
        "ever_sent",
        "handle",
        "last_run",
        "queued",
        "shape",
        "success",
        "twins",
    )

    def __init__(
        self,
        handle: JobHandle,
        success: Feedback | None,
        error: Feedback | None,
        shape: tuple[str, str, str],
        args: str,
        at: Any,
    ) -> None:
        self.handle = handle
        self.success = success
        self.error = error
        self.shape = shape
        #: The args' JSON text, checked at enqueue.
        self.args = args
        #: ``enqueued_at``.
        self.at = at
        #: Sent at least once: the distributor may have it even if no answer came back.
        self.ever_sent = False
        #: In the submitter's list of jobs to send.
        self.queued = False
        self.last_run = 0
        #: Later enqueues here with this job's ``unique_key`` that became this job.
        self.twins: list[_Submitted] | None = None

    @property
    def size(self) -> int:
        """The estimate ``in_boxes`` cuts boxes by."""
        return len(self.args) + 400

    def wire(self) -> str:
        """The job's wire form as JSON text: ``compact(job.to_wire())``."""
        head, middle, tail = self.shape
        return f'{{"id":{_quoted(self.handle.id)}{head}{self.args}{middle}{_number(self.at)}{tail}'

    def job(self) -> Job:
        """The job as a record, for the rare paths that need one (a refusal, a cancel)."""
        data = json.loads(self.wire())
        data["status"] = Status(data["status"])
        data["not_node"] = tuple(data["not_node"])
        data["depends_on"] = tuple(data.get("depends_on", ()))
        return Job(**data)

    def everyone(self) -> list[_Submitted]:
        return [self] if self.twins is None else [self, *self.twins]


def _size(submitted: _Submitted) -> int:
    return submitted.size


#: The args of the template job a shape is cut from (its text is never used).
_NO_ARGS: dict[str, Any] = {}


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
        #: Jobs to send in the next Enqueue, in enqueue order: those still ``queued`` (a job
        #: settled or merged meanwhile is skipped). Filled only while connected: a
        #: connection sends every held job.
        self._to_send: list[_Submitted] = []
        #: One bound method for every handle, not one each.
        self._cancel = self.cancel
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
        fields, text = job_fields(
            name, args, options, now=self._clock.seconds(), max_args_bytes=self._max_args_bytes
        )
        at = fields.pop("enqueued_at")
        shape = _PLAIN_SHAPES.get(name) if not fields else None  # the usual job: no options
        if shape is None:
            shape = _shape(Job(id="", name=name, args=_NO_ARGS, **fields).to_wire())
            if not fields:
                if len(_PLAIN_SHAPES) >= _MAX_SHAPES:
                    _PLAIN_SHAPES.clear()
                _PLAIN_SHAPES[name] = shape
        self._check_room()
        handle = JobHandle(new_job_id(), name, self._cancel)
        self._hold_new(_Submitted(handle, success, error, shape, text, at))
        return handle

    def submit(
        self,
        job: Job,
        success: Feedback | None,
        error: Feedback | None,
        handle: JobHandle | None = None,
    ) -> JobHandle:
        """Hold ``job`` (made by ``build_job``, with a handle of its id) until the
        distributor owns it."""
        self._check_room()
        handle = handle or JobHandle(job.id, job.name, self._cancel)
        try:
            submitted = _Submitted(
                handle, success, error, _shape(job.to_wire()), compact(job.args), job.enqueued_at
            )
            _number(job.enqueued_at)
        except (TypeError, ValueError, RecursionError) as problem:
            # Made without enqueue's checks: it fails alone, not with its whole box.
            submitted = _Submitted(handle, success, error, ("", "", ""), "{}", None)
            self._hold_new(submitted)
            message = f"the job cannot be sent as JSON: {problem}"
            self._settle(submitted, refusal_report(job, message, "EnqueueFailed"))
            return handle
        self._hold_new(submitted)
        return handle

    def _check_room(self) -> None:
        if self.full:
            raise QueueFullError(
                f"this client holds {len(self._jobs)} jobs without an outcome "
                "(max_waiting_jobs_per_sender); try again later"
            )

    def _hold_new(self, submitted: _Submitted) -> None:
        submitted.handle._awaiting_acceptance()  # until the distributor answers that it owns it
        self._jobs[submitted.handle.id] = submitted
        if self.protocol is not None:  # else the connection sends every held job
            submitted.queued = True
            self._to_send.append(submitted)
            self.schedule_send()

    def cancel(self, handle: JobHandle) -> None:
        submitted = self._jobs.get(handle.id)
        if submitted is None:
            return
        if not submitted.ever_sent:
            # never left this process: it ends here
            report = Report(handle.id, 0, Status.CANCELLED, None, True, json.loads(submitted.args))
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
            submitted.queued = True  # resend: the distributor may never have got it
        self._to_send = list(self._jobs.values())
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
        unsent = [submitted for submitted in self._to_send if submitted.queued]
        self._to_send = []
        for box in in_boxes(unsent, _size, protocol.limits):
            for submitted in box:
                submitted.queued = False
                submitted.ever_sent = True
            try:
                # Each job's text as enqueue checked it: the box is not encoded again.
                jobs = Encoded(f"[{','.join([submitted.wire() for submitted in box])}]")
                sent: Deferred[Any] = protocol.callRemote(Enqueue, jobs=jobs)
            except Exception:
                log.failure("could not send {count} jobs", count=len(box))
                for submitted in box:  # sent again with the next batch or after a reconnect
                    if not submitted.queued:
                        submitted.queued = True
                        self._to_send.append(submitted)
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
                held.append(submitted)
                continue
            message = str(refusal.get("error", "refused by the distributor"))
            self._settle(
                submitted, refusal_report(submitted.job(), message, "RejectedByDistributor")
            )
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
        sent_id = submitted.handle.id
        self._jobs.pop(sent_id, None)
        submitted.queued = False
        submitted.handle.id = existing_id  # its wire form names that job from now on
        kept = self._jobs.get(existing_id)
        if kept is not None and kept is not submitted:
            if kept.twins is None:
                kept.twins = []
            kept.twins.append(submitted)
        else:
            self._jobs[existing_id] = submitted
        log.info(
            "job {sent_id} is job {job_id}: same unique key", sent_id=sent_id, job_id=existing_id
        )
        return submitted

    def _unsent(self, failure: Failure, box: list[_Submitted]) -> None:
        if failure.check(QueueFull):
            self._hold(box, failure.getErrorMessage())
            return
        if not failure.check(*LINK_LOST):
            log.failure("distributor refused {count} jobs", failure, count=len(box))
            message = failure.getErrorMessage()
            for submitted in box:
                self._settle(submitted, refusal_report(submitted.job(), message, "EnqueueFailed"))

    def _hold(self, box: list[_Submitted], reason: str) -> None:
        """The distributor is full: keep the jobs (in their order) and offer them again
        later, every ``QUEUE_FULL_RETRY`` seconds, until it takes them."""
        first = [s for s in box if self._jobs.get(s.handle.id) is s]
        for submitted in first:
            submitted.queued = True
        ahead = set(map(id, first))
        self._to_send = first + [s for s in self._to_send if s.queued and id(s) not in ahead]
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
                report = Report.from_wire(item)
            except InvalidJobError as error:  # one bad report loses only itself
                log.warn("ignoring a malformed outcome: {error}", error=printable(error, 300))
                continue
            reports.append(report)
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
                for each in submitted.everyone():
                    fire_feedback(each.handle, report, each.success, each.error)

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
        self._jobs.pop(submitted.handle.id, None)
        submitted.queued = False
        for each in submitted.everyone():
            handle = each.handle
            handle._accepted()
            if report.feedback is not None:
                fire_feedback(handle, report, each.success, each.error)
            handle._settle(final_outcome(handle, report))


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
