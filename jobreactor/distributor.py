"""The distributor: owns every job from ``enqueue`` to its outcome and routes it to nodes.

Jobs wait in one FIFO queue until a connected node that the job allows has room; a pass
over the queue is triggered (once per reactor turn, however many events asked for it) when
a job arrives, a node connects, or a node reports, so nothing ever spins while waiting. A
job sent to a node stays owned here until its final report: if the node is lost, its jobs go
back to the queue after ``node_grace_period``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from twisted.application import service
from twisted.internet import defer
from twisted.internet import error as internet_error
from twisted.internet.defer import Deferred, DeferredList, fail, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from jobreactor.config import Config
from jobreactor.enqueueing import build_job, check_feedbacks
from jobreactor.errors import InvalidJobError, JobCancelled
from jobreactor.handle import JobHandle
from jobreactor.model import Job, Report, Status, encode_args
from jobreactor.outcomes import final_outcome, fire_feedback, refusal_report
from jobreactor.protocol import (
    PROTOCOL_VERSION,
    BadMessage,
    CancelJobs,
    DuplicateNodeName,
    Enqueue,
    Hello,
    HelloFirst,
    JobReactorAMP,
    JobsDone,
    Leaving,
    Outcomes,
    RunJobs,
    UnsupportedVersion,
    in_boxes,
)
from jobreactor.waiting import WaitingLine

Feedback = Callable[[dict[str, Any]], Any]

#: Seconds ``stopService`` waits for nodes to answer the jobs already sent to them.
STOP_WAIT = 5.0
#: A job due more than this many seconds ahead is sent to a node at once, to wait there.
FUTURE_MARGIN = 1.0
#: Seconds a node that refused jobs for its own trouble gets none.
REST_SECONDS = 1.0

log = Logger()


@attrs.define(eq=False)
class _Entry:
    """A job the distributor owns, with the application's feedbacks and handle."""

    job: Job
    handle: JobHandle
    success: Feedback | None
    error: Feedback | None
    #: The node holding the job, or None while it waits here.
    node: str | None = None
    #: The last run whose feedback fired: a report for it again is a duplicate.
    last_run: int = 0
    #: Bytes of the job's JSON form, roughly: what it costs in a RunJobs box.
    size: int = 0
    #: The name of the remote peer that enqueued the job: its reports go back there.
    origin: str | None = None
    #: The application asked to cancel it while it was on a node.
    cancel_requested: bool = False


@attrs.frozen
class NodeInfo:
    """A connected node as the distributor sees it."""

    name: str
    slots: int
    #: Jobs sent to the node that it has not yet started waiting on or finished.
    load: int
    #: All unfinished jobs this distributor placed on the node.
    holding: int
    address: str


@attrs.define(eq=False)
class _NodeLink:
    name: str
    slots: int
    protocol: DistributorProtocol
    load: set[str] = attrs.Factory(set)
    #: The node said it is stopping: it gets no more jobs.
    leaving: bool = False
    #: The node refused jobs for its own trouble (storage down): rest it a moment.
    resting: bool = False

    @property
    def room(self) -> int:
        if self.leaving or self.resting:
            return 0
        return self.slots - len(self.load)


@attrs.define(eq=False)
class _Outbox:
    """Reports for one remote peer, sent together; kept while the peer is away."""

    reports: list[Report] = attrs.Factory(list)
    flush_call: IDelayedCall | None = None
    expiry: IDelayedCall | None = None


def _priority(entry: _Entry) -> int:
    return entry.job.priority


def _report_size(report: Report) -> int:
    return len(json.dumps(report.args, separators=(",", ":"), default=repr)) + 400


class DistributorProtocol(JobReactorAMP):
    """One node's connection; nothing but ``Hello`` is accepted until the node has said it."""

    def __init__(self, distributor: Distributor) -> None:
        super().__init__()
        self.distributor = distributor
        self.link: _NodeLink | None = None
        self._hello_timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._hello_timer = self.distributor._clock.callLater(
            self.distributor.config.hello_timeout, self._no_hello
        )

    def _no_hello(self) -> None:
        self._hello_timer = None
        log.warn(
            "closing connection from {peer}: no Hello within {seconds} s",
            peer=self.transport.getPeer() if self.transport else None,
            seconds=self.distributor.config.hello_timeout,
        )
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    @Hello.responder
    def hello(
        self, name: str, slots: int, version: int, held: Any, credentials: Any
    ) -> dict[str, Any]:
        return self.distributor._hello(self, name, slots, version, held)

    @Enqueue.responder
    def enqueue(self, jobs: Any) -> dict[str, Any]:
        if self.link is None:
            raise HelloFirst("send Hello before Enqueue")
        return self.distributor._remote_enqueue(self.link, jobs)

    @CancelJobs.responder
    def cancel_jobs(self, job_ids: Any) -> dict[str, Any]:
        if self.link is None:
            raise HelloFirst("send Hello before CancelJobs")
        if not isinstance(job_ids, list) or not all(isinstance(i, str) for i in job_ids):
            raise BadMessage("job_ids must be a list of job ids")
        return {"cancelled": self.distributor._cancel_ids(job_ids)}

    @Leaving.responder
    def leaving(self) -> dict[str, Any]:
        if self.link is None:
            raise HelloFirst("send Hello before Leaving")
        self.link.leaving = True
        log.info("node {node} is stopping: no more jobs for it", node=self.link.name)
        return {}

    @JobsDone.responder
    def jobs_done(self, reports: Any) -> dict[str, Any]:
        if self.link is None:
            raise HelloFirst("send Hello before JobsDone")
        self.distributor._reports(self.link, reports)
        return {}

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        if self._hello_timer is not None and self._hello_timer.active():
            self._hello_timer.cancel()
        self._hello_timer = None
        if self.link is not None:
            self.distributor._node_lost(self.link)


class Distributor(service.Service):
    """Accepts nodes on ``listen`` (a Twisted endpoint string) and routes jobs to them.

    ``listen=None`` opens no port: nodes are then joined in memory (see
    :mod:`jobreactor.testing`).

    Call its methods in the reactor thread; :data:`jobreactor.JR` does the thread hop for
    applications that run the reactor in a background thread. Feedbacks run in the reactor
    thread too.
    """

    def __init__(
        self,
        listen: str | None,
        *,
        config: Config | None = None,
        reactor: Any = None,
        clock: IReactorTime | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.listen = listen
        self.config = config if config is not None else Config()
        self.id = str(uuid.uuid4())
        self._reactor = reactor
        self._clock: IReactorTime = clock if clock is not None else reactor
        self._owned: dict[str, _Entry] = {}
        self._waiting: WaitingLine[_Entry] = WaitingLine(_priority)
        self._future: WaitingLine[_Entry] = WaitingLine(_priority)
        self._links: dict[str, _NodeLink] = {}
        self._grace_timers: dict[str, IDelayedCall] = {}
        self._dispatch_call: IDelayedCall | None = None
        self._in_flight: set[Deferred[Any]] = set()
        self._outboxes: dict[str, _Outbox] = {}
        self._port: IListeningPort | None = None
        self._listening: Deferred[IListeningPort] | None = None
        self._node_waiters: list[tuple[tuple[int, frozenset[str]], Deferred[list[NodeInfo]]]] = []

    # -- service life --------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self.listen is None:
            self._listening = succeed(None)  # type: ignore[arg-type]
            return
        endpoint = serverFromString(self._reactor, self.listen)
        factory = Factory.forProtocol(lambda: DistributorProtocol(self))
        self._listening = endpoint.listen(factory)
        self._listening.addCallback(self._listened)

    def when_nodes(self, count: int = 1, names: Iterable[str] = ()) -> Deferred[list[NodeInfo]]:
        """Fire with :meth:`nodes` once at least ``count`` nodes, ``names`` among them, are here.

        Lets an application or a test wait for workers without polling; bound the wait with
        ``addTimeout``.
        """
        wanted = (count, frozenset(names))
        waiter: Deferred[list[NodeInfo]] = Deferred(lambda d: self._node_waiters.remove(pair))
        pair = (wanted, waiter)
        self._node_waiters.append(pair)
        self._check_node_waiters()
        return waiter

    def _check_node_waiters(self) -> None:
        for pair in list(self._node_waiters):
            (count, names), waiter = pair
            working = {name for name, link in self._links.items() if link.slots > 0}
            if len(working) >= count and names <= working:
                self._node_waiters.remove(pair)
                waiter.callback(self.nodes())

    def _listened(self, port: IListeningPort) -> IListeningPort:
        self._port = port
        log.info("distributor {id} listening on {address}", id=self.id, address=port.getHost())
        return port

    def when_listening(self) -> Deferred[Distributor]:
        """Fire with this distributor once its port is open (or fail if it cannot be)."""
        if self._listening is None:
            raise RuntimeError("start the distributor service first")
        done: Deferred[Distributor] = Deferred()

        def listened(port: IListeningPort) -> IListeningPort:
            done.callback(self)
            return port

        def failed(failure: Failure) -> None:
            done.errback(failure)

        self._listening.addCallbacks(listened, failed)
        return done

    @property
    def address(self) -> Any:
        """The listening address (``.host``, ``.port``), once listening."""
        return self._port.getHost() if self._port is not None else None

    def stopService(self) -> Deferred[None]:
        """Stop taking nodes and sending jobs; wait (at most ``STOP_WAIT`` s) for the
        ``RunJobs`` boxes already sent to be answered, then close every connection."""
        super().stopService()
        for timer in [self._dispatch_call, *self._grace_timers.values()]:
            if timer is not None and timer.active():
                timer.cancel()
        self._grace_timers.clear()
        self._dispatch_call = None
        stopped: Deferred[Any] = succeed(None)
        if self._port is not None:
            stopped = maybeDeferred(self._port.stopListening)
            self._port = None
        answered = DeferredList(list(self._in_flight), consumeErrors=True)
        answered.addTimeout(STOP_WAIT, self._clock)

        def close(_: Any) -> Deferred[Any]:
            for link in list(self._links.values()):
                if link.protocol.transport is not None:
                    link.protocol.transport.loseConnection()
            return stopped

        return answered.addBoth(close).addCallback(lambda _: None)

    # -- the application's side --------------------------------------------------------

    def enqueue(
        self,
        name: str,
        args: dict[str, Any] | None = None,
        *,
        success: Feedback | None = None,
        error: Feedback | None = None,
        **options: Any,
    ) -> JobHandle:
        """Validate and queue a job; return its handle. Reactor thread only.

        ``success(args)`` / ``error(args)`` are the feedbacks, called in the reactor thread
        with the args as the node left them. Raises :class:`InvalidJobError` at once for a
        bad name, args or option.
        """
        job = build_job(
            name,
            args,
            options,
            now=self._clock.seconds(),
            max_args_bytes=self.config.max_args_bytes,
        )
        return self.submit(job, success=success, error=error)

    def new_handle(self, job: Job, cancel: Callable[[JobHandle], None] | None = None) -> JobHandle:
        return JobHandle(job.id, job.name, cancel or self.cancel)

    def submit(
        self,
        job: Job,
        *,
        success: Feedback | None = None,
        error: Feedback | None = None,
        handle: JobHandle | None = None,
    ) -> JobHandle:
        """Queue an already validated job (made by :func:`build_job`)."""
        check_feedbacks(success, error)
        if job.id in self._owned:
            raise InvalidJobError(f"job id {job.id} is already queued")
        handle = handle or self.new_handle(job)
        size = len(json.dumps(job.args, separators=(",", ":"))) + 400  # the other fields
        entry = _Entry(job=job, handle=handle, success=success, error=error, size=size)
        self._owned[job.id] = entry
        self._queue_for(entry).append(entry)
        self._schedule_dispatch()
        return handle

    def _queue_for(self, entry: _Entry) -> WaitingLine[_Entry]:
        """Jobs due later wait apart: they take no slot, so no slot should hold them up."""
        run_at = entry.job.run_at
        if run_at is not None and run_at > self._clock.seconds() + FUTURE_MARGIN:
            return self._future
        return self._waiting

    def cancel(self, handle: JobHandle) -> None:
        """Stop the job of ``handle``: drop it if it waits here, else ask its node."""
        entry = self._owned.get(handle.id)
        if entry is None:
            return
        if entry.node is None:
            self._unqueue(entry)
            self._finish(entry, None, Failure(JobCancelled(entry.job.id, entry.job.name)))
            return
        entry.cancel_requested = True  # also honoured if the node is away right now
        self._cancel_on(entry.node, entry.job.id)

    def _remote_enqueue(self, link: _NodeLink, raw_jobs: Any) -> dict[str, Any]:
        if not isinstance(raw_jobs, list):
            raise BadMessage("jobs must be a list of job objects")
        accepted: list[str] = []
        rejected: list[dict[str, Any]] = []
        now = self._clock.seconds()
        for raw in raw_jobs:
            job_id = raw.get("id") if isinstance(raw, dict) else None
            try:
                job = Job.from_wire(raw)
                encode_args(job.args, self.config.max_args_bytes)
            except InvalidJobError as error:
                rejected.append({"id": job_id, "error": str(error)})
                continue
            entry = self._owned.get(job.id)
            if entry is not None:
                if entry.origin == link.name:
                    accepted.append(job.id)  # resent after a reconnect: already ours
                else:
                    rejected.append({"id": job.id, "error": f"job id {job.id} is taken"})
                continue
            job = attrs.evolve(job, status=Status.NEW, enqueued_at=job.enqueued_at or now)
            self.submit(job)
            self._owned[job.id].origin = link.name
            accepted.append(job.id)
        return {"accepted": accepted, "rejected": rejected}

    def _cancel_ids(self, job_ids: list[str]) -> list[str]:
        cancelled = []
        for job_id in job_ids:
            entry = self._owned.get(job_id)
            if entry is not None:
                cancelled.append(job_id)
                self.cancel(entry.handle)
        return cancelled

    def _forward(self, origin: str, report: Report) -> None:
        outbox = self._outboxes.setdefault(origin, _Outbox())
        outbox.reports.append(report)
        if origin in self._links:
            self._schedule_outbox(origin, outbox)
        elif outbox.expiry is None and self.running:
            outbox.expiry = self._clock.callLater(
                self.config.outcome_keep_seconds, self._outboxes.pop, origin, None
            )

    def _schedule_outbox(self, origin: str, outbox: _Outbox) -> None:
        if outbox.flush_call is None and outbox.reports:
            outbox.flush_call = self._clock.callLater(0, self._flush_outbox, origin)

    def _flush_outbox(self, origin: str) -> None:
        outbox = self._outboxes.get(origin)
        link = self._links.get(origin)
        if outbox is None:
            return
        outbox.flush_call = None
        if link is None or not outbox.reports:
            return
        reports, outbox.reports = outbox.reports, []
        put_back = [0]  # boxes fail in the order they were sent: keep that order
        for box in in_boxes(reports, _report_size):
            sent = self._call(link, Outcomes, reports=[report.to_wire() for report in box])

            def failed(failure: Failure, box: list[Report] = box) -> None:
                if failure.check(internet_error.ConnectionClosed, internet_error.ConnectionLost):
                    kept = self._outboxes.setdefault(origin, _Outbox())
                    at = put_back[0]
                    kept.reports[at:at] = box  # the peer collects them when it is back
                    put_back[0] += len(box)
                    return
                log.failure(
                    "peer {peer} refused {count} outcomes", failure, peer=origin, count=len(box)
                )

            sent.addErrback(failed)

    def nodes(self) -> list[NodeInfo]:
        """The connected nodes, with their slots and load."""
        holding: dict[str, int] = {}
        for entry in self._owned.values():
            if entry.node is not None:
                holding[entry.node] = holding.get(entry.node, 0) + 1
        return [
            NodeInfo(
                name=link.name,
                slots=link.slots,
                load=len(link.load),
                holding=holding.get(link.name, 0),
                address=str(link.protocol.transport.getPeer()) if link.protocol.transport else "",
            )
            for link in self._links.values()
            if link.slots > 0
        ]

    @property
    def waiting(self) -> int:
        """Jobs waiting here for a node."""
        return len(self._waiting) + len(self._future)

    @property
    def pending(self) -> int:
        """Jobs owned here that have no final outcome yet."""
        return len(self._owned)

    # -- routing -------------------------------------------------------------------

    def _schedule_dispatch(self) -> None:
        if self._dispatch_call is None and self.running:
            self._dispatch_call = self._clock.callLater(0, self._dispatch)

    def _dispatch(self) -> None:
        self._dispatch_call = None
        batches: dict[str, list[_Entry]] = {}
        if self._future:
            # Any node that takes jobs will park these until their time.
            open_links = {
                name: link.room
                for name, link in self._links.items()
                if link.slots > 0 and not (link.leaving or link.resting)
            }
            waiting_longer: list[_Entry] = []
            due_by = self._clock.seconds() + FUTURE_MARGIN
            while self._future and open_links:
                entry = self._future.popleft()
                if entry.job.run_at is None or entry.job.run_at <= due_by:
                    self._waiting.append(entry)  # its time came while it waited: needs a slot
                    continue
                target = self._choose(entry.job, open_links)
                if target is None:
                    waiting_longer.append(entry)
                    continue
                batches.setdefault(target, []).append(entry)
                open_links[target] -= 1  # spread them out
            self._future.put_back(waiting_longer)
        rooms = {name: link.room for name, link in self._links.items() if link.room > 0}
        skipped: list[_Entry] = []
        while self._waiting and rooms:
            entry = self._waiting.popleft()
            target = self._choose(entry.job, rooms)
            if target is None:
                skipped.append(entry)
                continue
            batches.setdefault(target, []).append(entry)
            rooms[target] -= 1
            if rooms[target] == 0:
                del rooms[target]
        self._waiting.put_back(skipped)
        for name, entries in batches.items():
            self._send(self._links[name], entries)

    def _choose(self, job: Job, rooms: dict[str, int]) -> str | None:
        if job.node is not None:
            if job.node in rooms and job.allows(job.node):
                return job.node
            if self.config.always_use_specified_node:
                return None
        best = None
        for name, room in rooms.items():
            if job.allows(name) and (best is None or room > rooms[best]):
                best = name
        return best

    def _send(self, link: _NodeLink, entries: list[_Entry]) -> None:
        later = self._clock.seconds() + FUTURE_MARGIN
        for entry in entries:
            entry.node = link.name
            if entry.job.run_at is None or entry.job.run_at <= later:
                link.load.add(entry.job.id)  # it will take one of the node's slots
        for batch in in_boxes(entries, lambda entry: entry.size):
            sent = self._call(link, RunJobs, jobs=[entry.job.to_wire() for entry in batch])
            self._in_flight.add(sent)
            sent.addBoth(self._landed, sent)
            sent.addCallbacks(
                self._sent, self._send_failed, callbackArgs=(link, batch), errbackArgs=(link, batch)
            )
            sent.addErrback(self._log_failure, "handling the answer to RunJobs")

    def _call(self, link: _NodeLink, command: Any, **arguments: Any) -> Deferred[Any]:
        try:
            result: Deferred[Any] = link.protocol.callRemote(command, **arguments)
        except Exception:  # AMP raises TooLong and friends synchronously
            return fail()
        return result

    def _landed(self, result: Any, sent: Deferred[Any]) -> Any:
        self._in_flight.discard(sent)
        return result

    def _rest(self, link: _NodeLink) -> None:
        if link.resting:
            return
        link.resting = True

        def wake() -> None:
            link.resting = False
            self._schedule_dispatch()

        self._clock.callLater(REST_SECONDS, wake)

    def _sent(self, answer: dict[str, Any], link: _NodeLink, batch: list[_Entry]) -> None:
        for job_id in answer.get("parked") or []:
            link.load.discard(job_id)
        retry_elsewhere: list[_Entry] = []
        for refusal in answer.get("rejected") or []:
            entry = self._owned.get(str(refusal.get("id"))) if isinstance(refusal, dict) else None
            if entry is None:
                continue
            link.load.discard(entry.job.id)
            if refusal.get("retry") and entry.node == link.name:
                log.warn(
                    "node {node} could not take job {job_id}: {error}",
                    node=link.name,
                    job_id=entry.job.id,
                    error=refusal.get("error"),
                )
                retry_elsewhere.append(entry)
                continue
            message = str(refusal.get("error", "refused by the node"))
            self._finish_with_report(entry, refusal_report(entry.job, message, "RejectedByNode"))
        if retry_elsewhere:
            self._rest(link)
            self._requeue(retry_elsewhere)
        self._schedule_dispatch()

    def _send_failed(self, failure: Failure, link: _NodeLink, batch: list[_Entry]) -> None:
        if failure.check(internet_error.ConnectionClosed, defer.CancelledError):
            return  # _node_lost (or a stopping distributor) decides what becomes of them
        log.failure(
            "node {node} could not take {count} jobs", failure, node=link.name, count=len(batch)
        )
        for entry in batch:
            link.load.discard(entry.job.id)
            message = (
                f"{failure.type.__name__ if failure.type else 'Error'}: {failure.getErrorMessage()}"
            )
            self._finish_with_report(entry, refusal_report(entry.job, message, "DispatchFailed"))

    # -- nodes --------------------------------------------------------------------

    def _hello(
        self, protocol: DistributorProtocol, name: str, slots: int, version: int, held: Any
    ) -> dict[str, Any]:
        if version != PROTOCOL_VERSION:
            raise UnsupportedVersion(
                f"this distributor speaks protocol version {PROTOCOL_VERSION}, not {version}"
            )
        if protocol.link is not None:
            raise BadMessage("Hello was already sent on this connection")
        if not name or slots < 0:
            raise BadMessage("a peer needs a non-empty name and slots of 0 (a client) or more")
        if not isinstance(held, list) or not all(isinstance(job_id, str) for job_id in held):
            raise BadMessage("held must be a list of job ids")
        if name in self._links:
            raise DuplicateNodeName(f"a node named {name!r} is already connected")
        if protocol._hello_timer is not None and protocol._hello_timer.active():
            protocol._hello_timer.cancel()
        protocol._hello_timer = None
        link = _NodeLink(name=name, slots=slots, protocol=protocol)
        self._links[name] = link
        protocol.link = link
        protocol.start_heartbeat(
            self._clock, self.config.heartbeat_interval, self.config.heartbeat_timeout
        )
        timer = self._grace_timers.pop(name, None)
        if timer is not None and timer.active():
            timer.cancel()
        held_ids = set(held)
        drop = []
        for job_id in held_ids:
            entry = self._owned.get(job_id)
            if entry is None or (entry.node is not None and entry.node != name):
                drop.append(job_id)
            elif entry.node is None:
                self._unqueue(entry)
                entry.node = name
            if entry is not None and entry.node == name and entry.cancel_requested:
                self._clock.callLater(0, self._cancel_on, name, job_id)  # after the answer
        lost = [e for e in self._owned.values() if e.node == name and e.job.id not in held_ids]
        self._requeue(lost)
        log.info(
            "node {node} connected with {slots} slots, holding {held} jobs",
            node=name,
            slots=slots,
            held=len(held_ids) - len(drop),
        )
        self._schedule_dispatch()
        self._clock.callLater(0, self._check_node_waiters)
        outbox = self._outboxes.get(name)
        if outbox is not None:
            if outbox.expiry is not None and outbox.expiry.active():
                outbox.expiry.cancel()
            outbox.expiry = None
            self._schedule_outbox(name, outbox)
        return {"distributor_id": self.id, "version": PROTOCOL_VERSION, "drop": drop}

    def _node_lost(self, link: _NodeLink) -> None:
        if self._links.get(link.name) is not link:
            return
        del self._links[link.name]
        outbox = self._outboxes.get(link.name)
        if outbox is not None and self.running:
            outbox.expiry = self._clock.callLater(
                self.config.outcome_keep_seconds, self._outboxes.pop, link.name, None
            )
        holding = sum(1 for entry in self._owned.values() if entry.node == link.name)
        log.info("node {node} disconnected holding {count} jobs", node=link.name, count=holding)
        if holding and self.running:
            self._grace_timers[link.name] = self._clock.callLater(
                self.config.node_grace_period, self._reroute, link.name
            )

    def _reroute(self, name: str) -> None:
        self._grace_timers.pop(name, None)
        lost = [entry for entry in self._owned.values() if entry.node == name]
        log.info("re-routing {count} jobs of lost node {node}", count=len(lost), node=name)
        self._requeue(lost)

    def _requeue(self, entries: Iterable[_Entry]) -> None:
        """Put jobs back at the head of the queue, in the order they were enqueued."""
        entries = list(entries)
        for entry in reversed(entries):
            entry.node = None
            if entry.cancel_requested:  # it was to stop anyway: do not send it anywhere
                self._finish(entry, None, Failure(JobCancelled(entry.job.id, entry.job.name)))
                continue
            self._queue_for(entry).appendleft(entry)
        if entries:
            self._schedule_dispatch()

    def _unqueue(self, entry: _Entry) -> None:
        for queue in (self._waiting, self._future):
            if entry in queue:
                queue.remove(entry)
                return

    # -- outcomes -------------------------------------------------------------------

    def _reports(self, link: _NodeLink, raw: Any) -> None:
        if not isinstance(raw, list):
            raise BadMessage("reports must be a list of report objects")
        try:
            reports = [Report.from_wire(item) for item in raw]
        except InvalidJobError as error:
            raise BadMessage(str(error)) from None
        for report in reports:
            link.load.discard(report.job_id)
            entry = self._owned.get(report.job_id)
            if entry is None:
                log.debug("ignoring a report for job {job_id}: not pending", job_id=report.job_id)
                continue
            if report.handed_back:
                if entry.node == link.name:
                    self._requeue([entry])
                continue
            elsewhere = entry.node
            applied = self._apply(entry, report)
            if applied and report.final and elsewhere not in (None, link.name):
                self._cancel_on(elsewhere, entry.job.id)  # a late node finished it first
        self._schedule_dispatch()

    def _cancel_on(self, node: str | None, job_id: str) -> None:
        link = self._links.get(node or "")
        if link is not None:
            self._call(link, CancelJobs, job_ids=[job_id]).addErrback(
                self._log_failure, "cancelling job {job_id}", job_id=job_id
            )

    def _apply(self, entry: _Entry, report: Report) -> bool:
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
        if report.final:
            entry.job = attrs.evolve(
                entry.job, status=report.status, run=report.run, args=report.args
            )
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
        if report.final:
            self._finish_with_report(entry, report)
        elif report.feedback is not None:
            self._fire(entry, report)
        return True

    def _finish_with_report(self, entry: _Entry, report: Report) -> None:
        self._finish(entry, report, final_outcome(entry.job, report))

    def _finish(self, entry: _Entry, report: Report | None, outcome: Any) -> None:
        self._owned.pop(entry.job.id, None)
        if entry.node is not None and entry.node in self._links:
            self._links[entry.node].load.discard(entry.job.id)
        if entry.origin is not None:
            if report is None:  # ended here (cancelled while waiting): tell the origin
                report = Report(
                    entry.job.id, entry.job.run, Status.CANCELLED, None, True, entry.job.args
                )
            self._forward(entry.origin, report)
        elif report is not None:
            self._fire(entry, report)
        entry.handle._settle(outcome)

    def _fire(self, entry: _Entry, report: Report) -> None:
        if entry.origin is not None:
            self._forward(entry.origin, report)
        else:
            fire_feedback(entry.job, report, entry.success, entry.error)

    @staticmethod
    def _log_failure(failure: Failure, /, what: str, **fields: Any) -> None:
        log.failure("failure " + what, failure, **fields)
