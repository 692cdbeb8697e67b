# mypy: disable-error-code="misc"
# (mixin methods take ``self: Node``, a subclass of their own class, on purpose)
"""Links: the node's connection to each distributor, its Hello, and the outbox of reports.

Reports go back on the link to the distributor that sent the job; while that link is down
they wait in its outbox and go out when it is back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
from twisted.application.internet import ClientService
from twisted.internet import error as internet_error
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from jobreactor.client import Submitter
from jobreactor.dialing import DialReport, check_client_endpoint
from jobreactor.jsontext import compact
from jobreactor.limits import DEFAULT_LIMITS, Limits, cut_error_text, printable
from jobreactor.login import say_hello
from jobreactor.model import Job, Report, Status, encode_args, flat_json
from jobreactor.protocol import (
    BadMessage,
    CancelJobs,
    Encoded,
    GiveBack,
    JobReactorAMP,
    JobsDone,
    Outcomes,
    RunJobs,
    close_after_refusal,
    in_boxes,
)

log = Logger()

if TYPE_CHECKING:
    from jobreactor.node.service import Node


#: A report bigger than this (args grown by the job) goes back with an error instead.
MAX_REPORT_BYTES = 12 * 1024 * 1024


def endpoint_description(address: str | tuple[str, int]) -> str:
    """A distributor address as a client endpoint string; ``(host, port)`` means TCP."""
    if isinstance(address, tuple):
        host, port = address
        return f"tcp:host={host}:port={int(port)}"
    if not isinstance(address, str) or ":" not in address:
        raise ValueError(
            f"a distributor address is (host, port) or an endpoint string, not {address!r}"
        )
    return check_client_endpoint(address)  # a URL or host:port gets the right form


def _wire_report(report: Report, limits: Limits = DEFAULT_LIMITS) -> str | None:
    """A report's JSON text, within the limits the distributor checks: error texts are cut to
    ``max_error_length``, and args that cannot travel (not JSON, too large, too deep) are
    replaced by an error, so one job's outcome never sinks the others' box. The text is
    sent as it is (``Encoded``): each report is encoded once, its length is its size. None
    (and a warning) for the rare report that still cannot be encoded: it alone is lost."""
    data = report.to_wire()
    data["error"] = None if report.error is None else cut_error_text(report.error, limits)
    if report.error_type is not None and len(report.error_type) > limits.max_name_length:
        data["error_type"] = report.error_type[: limits.max_name_length]
    trace = data.get("traceback")
    if isinstance(trace, str) and len(trace) > limits.max_error_length:
        data["traceback"] = "[...cut] " + trace[-(limits.max_error_length - 9) :]  # its end
    limit = min(limits.max_args_bytes, MAX_REPORT_BYTES)
    if limits.max_depth >= 1 and flat_json(report.args):
        # Plain args need no walk: one encoding of the whole report gives its size, and
        # bounds the args' (within the limit) and their Unicode (no escaped surrogate).
        try:
            text = compact(data)
        except (TypeError, ValueError, RecursionError):
            pass  # an error text JSON cannot carry? the full checks below say
        else:
            if len(text) <= limit and "\\ud" not in text:
                return text
    try:
        encode_args(report.args, limit, limits.max_depth)
        return compact(data)
    except (TypeError, ValueError, RecursionError) as error:
        message = cut_error_text(f"the job's args could not be sent: {error}", limits)
        data["args"] = {"error": message}
        data["error"] = data["error"] or message
        try:
            return compact(data)
        except (TypeError, ValueError, RecursionError) as error:
            log.warn(
                "could not send the report of job {job_id}: {error}",
                job_id=printable(report.job_id),
                error=printable(error),
            )
            return None


class _NodeProtocolFactory(Factory):
    #: No "Starting factory" / "Stopping factory" line at each attempt: DialReport says what
    #: matters (where, why, once per change).
    noisy = False

    def __init__(self, node: Node, link: _DistributorLink) -> None:
        self.node = node
        self.link = link

    def buildProtocol(self, addr: Any) -> NodeProtocol:
        protocol = NodeProtocol(self.node, self.link)
        protocol.factory = self
        return protocol


class NodeProtocol(JobReactorAMP):
    """The node's end of one distributor connection."""

    def __init__(self, node: Node, link: _DistributorLink) -> None:
        super().__init__()
        self.node = node
        self.link = link
        self.limits = Limits.from_config(node.config)

    @RunJobs.responder
    def run_jobs(self, jobs: Any) -> Deferred[dict[str, Any]]:
        return self.node._accept(self.link, jobs)

    @CancelJobs.responder
    def cancel_jobs(self, job_ids: Any) -> dict[str, Any]:
        if not isinstance(job_ids, list):
            raise BadMessage("job_ids must be a list of job ids")
        return {"cancelled": self.node._cancel([str(job_id) for job_id in job_ids])}

    @GiveBack.responder
    def give_back(self, job_ids: Any, count: int) -> dict[str, Any]:
        if not isinstance(job_ids, list) or not all(isinstance(i, str) for i in job_ids):
            raise BadMessage("job_ids must be a list of job ids")
        return {"given_back": self.node._give_back(self.link, job_ids, count)}

    @Outcomes.responder
    def outcomes(self, reports: Any) -> dict[str, Any]:
        self.link.submitter().outcomes(reports)
        return {}

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        if self.link.protocol is self:
            self.link.protocol = None
            if self.link._submitter is not None:
                self.link._submitter.disconnected()
            log.info("lost distributor {endpoint}", endpoint=self.link.endpoint)


@attrs.define(eq=False)
class _DistributorLink:
    """The node's side of one distributor: its connection and the reports waiting for it."""

    endpoint: str
    node: Node
    service: ClientService | None = None
    #: Set once Hello was answered; None while disconnected.
    protocol: NodeProtocol | None = None
    distributor_id: str | None = None
    outbox: list[Report] = attrs.Factory(list)
    flush_call: IDelayedCall | None = None
    in_flight: set[Deferred[Any]] = attrs.Factory(set)
    #: Hellos refused in a row (a duplicate name, say): slows the reconnecting down.
    refusals: int = 0
    #: Where this link dials and why it last failed (made when the node starts dialling).
    dial_report: DialReport | None = None
    _submitter: Submitter | None = None

    def submitter(self) -> Submitter:
        """The jobs this node enqueued through this distributor (made on first use)."""
        if self._submitter is None:
            self._submitter = Submitter(self.node._clock, self.node.config.max_args_bytes)
            if self.protocol is not None:
                self._submitter.connected(self.protocol)
        return self._submitter

    def send(self, report: Report) -> None:
        self.outbox.append(report)
        if self.flush_call is None and self.protocol is not None:
            self.flush_call = self.node._clock.callLater(0, self.flush)

    def flush_now(self) -> None:
        """Send what waits for the next turn's flush now, in this turn's write.

        A batch of jobs that ran at once reports in the same TCP write as the answer that
        accepted them: one packet and one reactor wake-up less per job on both sides.
        """
        if self.flush_call is not None and self.flush_call.active():
            self.flush_call.cancel()
            self.flush()

    def flush(self) -> None:
        """Send the outbox in one ``JobsDone``; on a lost link keep it for the next one."""
        self.flush_call = None
        if self.protocol is None or not self.outbox:
            return
        reports, self.outbox = self.outbox, []
        limits = Limits.from_config(self.node.config)
        encoded = [(report, _wire_report(report, limits)) for report in reports]
        sendable = [(report, text) for report, text in encoded if text is not None]
        put_back = [0]  # boxes fail in the order they were sent: keep the reports' order
        boxes = in_boxes(sendable, lambda pair: len(pair[1]), limits)
        for box in boxes:
            self._send_box([report for report, _ in box], [text for _, text in box], put_back)

    def _send_box(self, reports: list[Report], texts: list[str], put_back: list[int]) -> None:
        assert self.protocol is not None
        try:
            sent: Deferred[Any] = self.protocol.callRemote(
                JobsDone, reports=Encoded(f"[{','.join(texts)}]")
            )
        except Exception as error:  # cannot be sent: one bad report must sink only itself
            if len(reports) > 1:
                for report, text in zip(reports, texts, strict=True):
                    self._send_box([report], [text], put_back)
                return
            log.warn(
                "could not send the report of job {job_id}: {error}",
                job_id=printable(reports[0].job_id),
                error=printable(error),
            )
            return
        self.in_flight.add(sent)

        def landed(result: Any) -> Any:
            self.in_flight.discard(sent)
            return result

        sent.addBoth(landed)

        def failed(failure: Failure) -> None:
            if failure.check(internet_error.ConnectionClosed):
                at = put_back[0]
                self.outbox[at:at] = reports  # delivered when the link is back
                put_back[0] += len(reports)
                return
            log.failure(
                "distributor {endpoint} refused {count} reports",
                failure,
                endpoint=self.endpoint,
                count=len(reports),
            )

        sent.addErrback(failed)


class Links:
    """The node's side of its distributor links (mixed into :class:`Node`)."""

    def connected_distributors(self: Node) -> list[str]:
        """Endpoints of the distributors this node has a live session with."""
        return [link.endpoint for link in self._links.values() if link.protocol is not None]

    def _job_names(self: Node) -> dict[str, Any] | None:
        """What this node runs, for Hello: job name to its global rate limit (if any)."""
        if self.slots == 0:
            return None
        return {
            name: {"rate_limit": definition.rate_limit}
            for name, definition in self.registry.definitions.items()
            if definition.function is not None
        }

    def _hello(self: Node, link: _DistributorLink, protocol: NodeProtocol) -> Deferred[Any]:
        # Jobs this node holds, and those whose outcome waits in the outbox: the distributor
        # must not run those again elsewhere; the outcome follows right after Hello.
        # Stored jobs not taken up yet are listed too: they are taken up once Hello is answered.
        held = [job.id for job in self._jobs.values() if job.distributor == link.endpoint]
        held += self._stored_for(link)
        held += [report.job_id for report in link.outbox if report.job_id not in self._jobs]
        held = list(dict.fromkeys(held))  # a job with reports waiting is listed once
        said = say_hello(
            protocol,
            name=self.node_name,
            slots=self.slots,
            held=held,
            credentials=self.credentials,
            endpoint=link.endpoint,
            jobs=self._job_names(),
        )

        def welcomed(answer: dict[str, Any]) -> None:
            link.protocol = protocol
            link.refusals = 0
            if link.dial_report is not None:
                link.dial_report.accepted()
            previous_id, link.distributor_id = link.distributor_id, answer["distributor_id"]
            if link._submitter is not None:
                link._submitter.connected(protocol)
            protocol.start_heartbeat(
                self._clock, self.config.heartbeat_interval, self.config.heartbeat_timeout
            )
            self._take_up(link, answer, previous_id)  # drop what it does not know, run the rest
            log.info(
                "node {node} joined distributor {endpoint}", node=self.name, endpoint=link.endpoint
            )
            link.flush()

        def refused(failure: Failure) -> None:
            link.refusals += 1
            if link.dial_report is not None:
                link.dial_report.hello_refused(failure)  # once per change of reason
            close_after_refusal(protocol, self._clock)

        return said.addCallbacks(welcomed, refused)

    def _report(
        self: Node,
        job: Job,
        feedback: str | None,
        *,
        final: bool,
        args: dict[str, Any],
        status: Status | None = None,
        error: str | None = None,
        error_type: str | None = None,
        traceback: str | None = None,
    ) -> None:
        report = Report(
            job.id,
            job.run,
            job.status if status is None else status,
            feedback,
            final,
            args,
            error,
            error_type,
            run_at=None if final else job.run_at,
            attempt=job.attempt,
            duration=self._attempt_seconds.pop(job.id, None),
            traceback=traceback,
        )
        link = self._links.get(job.distributor or "")
        if link is None:
            log.warn(
                "job {job_id} came from distributor {endpoint}, which this node no longer dials; "
                "its outcome is dropped",
                job_id=job.id,
                endpoint=job.distributor,
            )
            return
        link.send(report)
