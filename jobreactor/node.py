"""The node: takes jobs from distributors, stores them, runs each on time, reports back.

Every wait is a timer on the injected clock (``callLater``); nothing polls. A job is saved
before the node acknowledges it, and each state change is saved before the report that
describes it is sent. Reports go back on the link to the distributor that sent the job; while
that link is down they wait in its outbox and go out when it is back.
"""

from __future__ import annotations

import contextvars
import functools
import json
import math
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.application import service
from twisted.application.internet import ClientService
from twisted.internet import defer
from twisted.internet import error as internet_error
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python import threadable
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from jobreactor.chain import AttemptOutcome, run_attempt
from jobreactor.client import Submitter
from jobreactor.config import Config
from jobreactor.definitions import JobDefinition, JobRegistry, load_jobs_directory
from jobreactor.enqueueing import build_job, check_feedbacks
from jobreactor.errors import InvalidJobError, NotRunningError
from jobreactor.handle import JobHandle
from jobreactor.model import Job, Report, Status
from jobreactor.outcomes import Feedback
from jobreactor.protocol import (
    PROTOCOL_VERSION,
    BadMessage,
    CancelJobs,
    Hello,
    JobReactorAMP,
    JobsDone,
    Leaving,
    Outcomes,
    RunJobs,
    close_after_refusal,
    in_boxes,
    retry_policy,
)
from jobreactor.storage import IJobStorage, StorageError, open_storage

log = Logger()

#: A report bigger than this (args grown by the job) goes back with an error instead.
MAX_REPORT_BYTES = 12 * 1024 * 1024

_current_node: contextvars.ContextVar[Node] = contextvars.ContextVar("jobreactor_node")
_started_nodes: list[Node] = []


def _fire_once(deferred: Deferred[None]) -> None:
    if not deferred.called:  # it may have been cancelled by a timeout meanwhile
        deferred.callback(None)


def current_node() -> Node:
    """The node running the calling job, e.g. to enqueue follow-up jobs for other nodes::

        current_node().enqueue("resize", {"path": path}, success=...)

    Works in a job's function, callbacks and errbacks (also ``async def`` ones); in a
    ``defer=True`` job it works when the process runs one node, the usual case.
    """
    node = _current_node.get(None)
    if node is not None:
        return node
    if len(_started_nodes) == 1:
        return _started_nodes[0]
    raise NotRunningError(
        "current_node() is for code run by a node's job; "
        f"this process runs {len(_started_nodes)} nodes and none is running this code"
    )


#: Seconds a stopping node waits for a distributor to answer ``Leaving`` or ``JobsDone``.
STOP_MESSAGE_WAIT = 5.0

#: Statuses of jobs a restarted node picks up again.
UNFINISHED = (Status.NEW, Status.QUEUED, Status.IN_PROGRESS, Status.ERROR)


def endpoint_description(address: str | tuple[str, int]) -> str:
    """A distributor address as a client endpoint string; ``(host, port)`` means TCP."""
    if isinstance(address, tuple):
        host, port = address
        return f"tcp:host={host}:port={int(port)}"
    if not isinstance(address, str) or ":" not in address:
        raise ValueError(
            f"a distributor address is (host, port) or an endpoint string, not {address!r}"
        )
    return address


def _wire_report(report: Report) -> tuple[dict[str, Any], int]:
    """A report's wire form and size; args that cannot travel are replaced by an error."""
    data = report.to_wire()
    try:
        size = len(json.dumps(data, separators=(",", ":"), allow_nan=False))
    except (TypeError, ValueError, RecursionError) as error:
        data["args"] = {"error": f"the job's args could not be sent: {error}"}
        data["error"] = data["error"] or data["args"]["error"]
        size = len(json.dumps(data, separators=(",", ":"), default=repr))
    if size > MAX_REPORT_BYTES:
        message = f"the job's final args are {size} bytes, above the {MAX_REPORT_BYTES} limit"
        data["args"] = {"error": message}
        data["error"] = data["error"] or message
        size = len(json.dumps(data, separators=(",", ":"), default=repr))
    return data, size


class _NodeProtocolFactory(Factory):
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

    @RunJobs.responder
    def run_jobs(self, jobs: Any) -> Deferred[dict[str, Any]]:
        return self.node._accept(self.link, jobs)

    @CancelJobs.responder
    def cancel_jobs(self, job_ids: Any) -> dict[str, Any]:
        if not isinstance(job_ids, list):
            raise BadMessage("job_ids must be a list of job ids")
        return {"cancelled": self.node._cancel([str(job_id) for job_id in job_ids])}

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

    def flush(self) -> None:
        """Send the outbox in one ``JobsDone``; on a lost link keep it for the next one."""
        self.flush_call = None
        if self.protocol is None or not self.outbox:
            return
        reports, self.outbox = self.outbox, []
        wire = [_wire_report(report) for report in reports]
        put_back = [0]  # boxes fail in the order they were sent: keep the reports' order
        for box in in_boxes(list(zip(reports, wire, strict=True)), lambda pair: pair[1][1]):
            self._send_box([report for report, _ in box], [data for _, (data, _) in box], put_back)

    def _send_box(
        self, reports: list[Report], wire: list[dict[str, Any]], put_back: list[int]
    ) -> None:
        assert self.protocol is not None
        try:
            sent: Deferred[Any] = self.protocol.callRemote(JobsDone, reports=wire)
        except Exception:
            log.failure("could not send {count} reports", count=len(reports))
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


class Node(service.MultiService):
    """A worker: dials every distributor it is given and runs the jobs they send.

    ``slots`` is how many jobs it runs at once (and so how many a distributor sends it before
    it reports); jobs waiting for their time hold no slot. ``reactor`` gives endpoints and
    threads, ``clock`` every timer (a ``task.Clock`` in tests).
    """

    def __init__(
        self,
        name: str,
        distributors: Sequence[str | tuple[str, int]],
        *,
        storage: str | IJobStorage = "memory",
        jobs_directory: str | None = None,
        registry: JobRegistry | None = None,
        slots: int | None = None,
        config: Config | None = None,
        reactor: Any = None,
        clock: IReactorTime | None = None,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        if not isinstance(name, str) or not name:
            raise ValueError(f"a node needs a non-empty name, not {name!r}")
        self.name = name
        self.node_name: str = name  # Service.name is typed Optional; storage wants a str
        self.config = config if config is not None else Config()
        self.slots = slots if slots is not None else self.config.node_slots
        if isinstance(self.slots, bool) or not isinstance(self.slots, int) or self.slots < 1:
            raise ValueError(f"slots must be a positive integer, not {self.slots!r}")
        # Loaded now so that a broken jobs file stops the node before it connects anywhere.
        self.registry = (
            registry
            if registry is not None
            else load_jobs_directory(jobs_directory or self.config.job_directory)
        )
        self.storage: IJobStorage = open_storage(storage)
        self._reactor = reactor
        self._clock: IReactorTime = clock if clock is not None else reactor
        self._links: dict[str, _DistributorLink] = {}
        for address in distributors:
            endpoint = endpoint_description(address)
            self._links[endpoint] = _DistributorLink(endpoint, self)
        self._jobs: dict[str, Job] = {}
        self._timers: dict[str, IDelayedCall] = {}
        self._running: dict[str, Deferred[Any]] = {}
        self._cancelling: set[str] = set()
        self._ready: deque[str] = deque()
        self._threadpool = ThreadPool(
            minthreads=0, maxthreads=self.config.thread_pool_size, name=f"jobreactor-{name}"
        )
        # Daemon threads: a thread job that never ends must not keep a stopped node alive.
        self._threadpool.threadFactory = functools.partial(  # type: ignore[assignment]
            threading.Thread, daemon=True
        )
        self._started: Deferred[Node | None] | None = None
        self._stopping = False
        self._stopped: Deferred[None] | None = None
        self._drained: Deferred[None] | None = None
        self._handing_back: set[str] = set()
        self._starting: dict[str, Deferred[Any]] = {}
        self._ready_call: IDelayedCall | None = None
        #: Jobs being stored before RunJobs is answered, and cancels that came meanwhile.
        self._accepting: set[str] = set()
        self._cancel_when_accepted: set[str] = set()
        self._start_failure: Failure | None = None

    # -- service life --------------------------------------------------------------

    def startService(self) -> None:
        service.Service.startService(self)
        _started_nodes.append(self)
        self._threadpool.start()
        self._started = Deferred.fromCoroutine(self._start())
        self._started.addErrback(self._start_failed)

    async def _start(self) -> Node:
        # A storage server that is down at start (Redis restarting) is waited for: the node
        # dials no distributor until it can keep what it accepts.
        delay = 0.5
        while True:
            try:
                await self.storage.open()
                unfinished = (
                    await self.storage.jobs_for(self.node_name, UNFINISHED)
                    if self.config.retry_jobs_at_start
                    else []
                )
                break
            except StorageError as error:  # unreachable; anything else is a real fault
                if self._stopping or not self.running:
                    raise
                log.warn(
                    "node {node}: storage not available ({error}); trying again in {delay} s",
                    node=self.name,
                    error=error,
                    delay=delay,
                )
                await deferLater(self._clock, delay, lambda: None)
                delay = min(delay * 2, 10.0)
        for job in unfinished:
            self._hold(job)
        for link in self._links.values():
            link.service = ClientService(
                clientFromString(self._reactor, link.endpoint),
                _NodeProtocolFactory(self, link),
                retryPolicy=retry_policy(functools.partial(getattr, link, "refusals")),
                clock=self._clock,
                prepareConnection=functools.partial(self._hello, link),
            )
            link.service.setServiceParent(self)
        log.info(
            "node {node} started with {slots} slots, jobs: {jobs}",
            node=self.name,
            slots=self.slots,
            jobs=", ".join(self.registry.names()) or "(none)",
        )
        return self

    def _start_failed(self, failure: Failure) -> None:
        log.failure("node {node} could not start", failure, node=self.name)
        self._start_failure = failure  # handed to every when_started caller

    def when_started(self) -> Deferred[Node]:
        """Fire once storage is open and the distributors are being dialled."""
        if self._started is None:
            raise RuntimeError("start the node service first")
        done: Deferred[Node] = Deferred()

        def relay(result: Any) -> Any:
            if self._start_failure is not None:
                done.errback(self._start_failure)
            else:
                done.callback(self)
            return result

        self._started.addBoth(relay)
        return done

    def stopService(self) -> Deferred[Any]:
        """Stop gracefully: take no more jobs, hand back those not started, let running ones
        finish for up to ``shutdown_grace_period`` seconds (then hand them back too), deliver
        the reports, and only then close the connections and the storage."""
        if self._stopped is None:
            self._stopped = Deferred.fromCoroutine(self._stop())
            self._stopped.addErrback(self._log_failure, "stopping node {node}", node=self.name)
        done: Deferred[Any] = Deferred()

        def relay(result: Any) -> Any:
            done.callback(None)
            return result

        self._stopped.addBoth(relay)
        return done

    async def _stop(self) -> None:
        self._stopping = True
        if self in _started_nodes:
            _started_nodes.remove(self)
        config = self.config
        log.info("node {node} stopping", node=self.name)
        await self._bounded(
            [
                link.protocol.callRemote(Leaving)
                for link in self._links.values()
                if link.protocol is not None
            ],
            STOP_MESSAGE_WAIT,
        )
        for job in list(self._jobs.values()):
            if job.id not in self._running:
                self._hand_back(job)
        self._ready.clear()
        if self._running:
            self._drained = Deferred()
            self._drained.addTimeout(config.shutdown_grace_period, self._clock)
            try:
                await self._drained
            except defer.TimeoutError:
                log.warn(
                    "node {node}: {count} jobs still running after {seconds} s; handing them back",
                    node=self.name,
                    count=len(self._running),
                    seconds=config.shutdown_grace_period,
                )
                for job_id, running in list(self._running.items()):
                    self._handing_back.add(job_id)
                    running.cancel()
        for link in self._links.values():
            if link.flush_call is not None and link.flush_call.active():
                link.flush_call.cancel()
            link.flush()
        await self._bounded(
            [sent for link in self._links.values() for sent in link.in_flight], STOP_MESSAGE_WAIT
        )
        if self.running:
            await defer.maybeDeferred(service.MultiService.stopService, self)
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        # ThreadPool.stop joins its threads: do it off the reactor thread, and do not wait
        # forever for a thread job that never ends.
        if self._threadpool.working:
            # ThreadPool.stop joins its threads; a thread job that never ends would hold it
            # (and the reactor's own pool, at exit) for ever. Join in a daemon thread of its
            # own, wait a bounded time, and let process exit drop the daemon threads.
            joined: Deferred[None] = Deferred()

            def stop_pool() -> None:
                self._threadpool.stop()
                self._reactor.callFromThread(_fire_once, joined)

            threading.Thread(target=stop_pool, name="jobreactor-pool-stop", daemon=True).start()
            await self._bounded([joined], config.shutdown_grace_period or 1.0)
        else:
            self._threadpool.stop()  # idle threads end at once
        await self.storage.close()
        log.info("node {node} stopped", node=self.name)

    async def _bounded(self, waits: list[Deferred[Any]], seconds: float) -> None:
        if not waits:
            return
        together = DeferredList(waits, consumeErrors=True)
        together.addTimeout(seconds, self._clock)
        try:
            await together
        except defer.TimeoutError:
            log.warn(
                "node {node}: gave up waiting after {seconds} s", node=self.name, seconds=seconds
            )

    def _hand_back(self, job: Job) -> None:
        """Give an unstarted job back to its distributor (this node is stopping)."""
        self._forget(job.id)
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

    def enqueue(
        self,
        name: str,
        args: dict[str, Any] | None = None,
        *,
        success: Feedback | None = None,
        error: Feedback | None = None,
        via: str | None = None,
        **options: Any,
    ) -> JobHandle:
        """Enqueue a job for some node through a distributor this node dials (reactor thread).

        ``via`` picks the distributor (an endpoint string as given to the node); by default
        the first one connected. The feedbacks run here, in this node's process. From inside
        a job use ``current_node().enqueue(...)``.
        """
        if via is not None:
            link = self._links.get(endpoint_description(via))
            if link is None:
                raise ValueError(f"node {self.name} does not dial a distributor at {via!r}")
        else:
            connected = [link for link in self._links.values() if link.protocol is not None]
            if not connected and not self._links:
                raise NotRunningError(f"node {self.name} dials no distributor")
            link = (connected or list(self._links.values()))[0]
        # Checked here, in the caller's thread (a defer=True job's, maybe); the submitter
        # is only touched in the reactor thread.
        check_feedbacks(success, error)
        job = build_job(
            name,
            args,
            options,
            now=self._clock.seconds(),
            max_args_bytes=self.config.max_args_bytes,
        )
        handle = JobHandle(
            job.id, job.name, lambda h: self._in_reactor(lambda: link.submitter().cancel(h))
        )
        self._in_reactor(lambda: link.submitter().submit(job, success, error, handle))
        return handle

    def _in_reactor(self, call: Callable[[], Any]) -> None:
        if threadable.isInIOThread():
            call()
        else:
            self._reactor.callFromThread(call)

    def connected_distributors(self) -> list[str]:
        """Endpoints of the distributors this node has a live session with."""
        return [link.endpoint for link in self._links.values() if link.protocol is not None]

    @property
    def held(self) -> int:
        """Unfinished jobs this node holds (running, due, or waiting for their time)."""
        return len(self._jobs)

    def _hello(self, link: _DistributorLink, protocol: NodeProtocol) -> Deferred[Any]:
        # Jobs this node holds, and those whose outcome waits in the outbox: the distributor
        # must not run those again elsewhere; the outcome follows right after Hello.
        held = [job.id for job in self._jobs.values() if job.distributor == link.endpoint]
        held += [report.job_id for report in link.outbox if report.job_id not in self._jobs]
        said: Deferred[Any] = protocol.callRemote(
            Hello,
            name=self.name,
            slots=self.slots,
            version=PROTOCOL_VERSION,
            held=held,
            credentials=None,
        )

        def welcomed(answer: dict[str, Any]) -> None:
            link.protocol = protocol
            link.refusals = 0
            if link.distributor_id not in (None, answer["distributor_id"]) and link.outbox:
                log.warn(
                    "distributor {endpoint} restarted: dropping {count} reports meant for "
                    "its previous process",
                    endpoint=link.endpoint,
                    count=len(link.outbox),
                )
                link.outbox.clear()
            link.distributor_id = answer["distributor_id"]
            if link._submitter is not None:
                link._submitter.connected(protocol)
            protocol.start_heartbeat(
                self._clock, self.config.heartbeat_interval, self.config.heartbeat_timeout
            )
            for job_id in answer.get("drop") or []:
                self._forget(str(job_id))
                self.storage.remove(self.node_name, str(job_id)).addErrback(
                    self._log_failure, "removing job {job_id}", job_id=job_id
                )
            log.info(
                "node {node} joined distributor {endpoint}", node=self.name, endpoint=link.endpoint
            )
            link.flush()

        def refused(failure: Failure) -> None:
            link.refusals += 1
            log.error(
                "distributor {endpoint} refused node {node}: {error}",
                endpoint=link.endpoint,
                node=self.name,
                error=failure.getErrorMessage(),
            )
            close_after_refusal(protocol, self._clock)

        return said.addCallbacks(welcomed, refused)

    # -- taking jobs -------------------------------------------------------------------

    def _accept(self, link: _DistributorLink, raw_jobs: Any) -> Deferred[dict[str, Any]]:
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
                job = Job.from_wire(raw)
            except InvalidJobError as error:
                job_id = raw.get("id") if isinstance(raw, dict) else None
                rejected.append({"id": job_id, "error": str(error), "retry": False})
                continue
            if job.id in self._jobs or job.id in self._accepting:
                accepted.append(job.id)  # sent twice (e.g. after a reconnect): already held
                continue
            fresh.append(attrs.evolve(job, status=Status.QUEUED, distributor=link.endpoint))

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

        return DeferredList(saves, consumeErrors=True).addCallback(stored)

    def _hold(self, job: Job) -> None:
        self._jobs[job.id] = job
        delay = 0.0 if job.run_at is None else max(0.0, job.run_at - self._clock.seconds())
        self._timers[job.id] = self._clock.callLater(delay, self._due, job.id)

    def _due(self, job_id: str) -> None:
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
        if len(self._running) >= self.slots:
            self._ready.append(job_id)
            return
        self._start_attempt(job)

    def _start_next_ready(self) -> None:
        while self._ready and len(self._running) < self.slots and not self._stopping:
            job = self._jobs.get(self._ready.popleft())
            if job is not None:
                self._start_attempt(job)

    # -- running -------------------------------------------------------------------

    def _start_attempt(self, job: Job) -> None:
        job = attrs.evolve(
            job,
            status=Status.IN_PROGRESS,
            attempt=job.attempt + 1,
            run=job.run + 1 if job.attempt == 0 else job.run,
        )
        self._jobs[job.id] = job
        saved = self.storage.save(self.node_name, job)
        saved.addErrback(self._log_failure, "saving job {job_id}", job_id=job.id)
        # Until the attempt runs, this placeholder holds the slot; a cancel arriving while
        # the save is under way is honoured when it ends (the save itself is not cut short).
        self._running[job.id] = self._starting[job.id] = saved

        def saved_then_run(_: Any) -> None:
            self._starting.pop(job.id, None)
            if job.id in self._cancelling:
                self._attempt_done(AttemptOutcome("cancelled", job.args, "success"), job.id, None)
                return
            self._run(job)

        saved.addCallback(saved_then_run)
        saved.addErrback(self._log_failure, "starting job {job_id}", job_id=job.id)

    def _run(self, job: Job) -> None:
        definition = self.registry.get(job.name)
        if definition is None:
            known = ", ".join(self.registry.names()) or "none"
            error = f"no job named {job.name!r} is defined on node {self.name} (it has: {known})"
            args = dict(job.args, error=error, error_type="NoSuchJob")
            self._attempt_done(
                AttemptOutcome("error", args, "error", error, "NoSuchJob"), job.id, None
            )
            return
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
        finally:
            _current_node.reset(token)
        self._running[job.id] = attempt
        attempt.addCallback(self._attempt_done, job.id, definition)
        attempt.addErrback(self._log_failure, "finishing job {job_id}", job_id=job.id)

    def _job_itself(self, job: Job) -> dict[str, Any]:
        record = job.to_wire()
        del record["args"]
        record["node"] = self.name
        return record

    def _retry_delay(self, job: Job, definition: JobDefinition | None) -> float:
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
        self, outcome: AttemptOutcome, job_id: str, definition: JobDefinition | None
    ) -> None:
        self._running.pop(job_id, None)
        self._starting.pop(job_id, None)
        job = self._jobs.get(job_id)
        if job is None:  # dropped meanwhile (given to another node): only free its slot
            self._cancelling.discard(job_id)
            self._handing_back.discard(job_id)
            self._after_attempt()
            return
        self._settle_attempt(job, outcome, definition)
        self._after_attempt()

    def _after_attempt(self) -> None:
        # Start what waits for the freed slot on the next turn: starting it here would nest
        # one call per queued job (a job that ends at once starts the next one inside this
        # call), and thousands of jobs falling due together would exhaust the stack.
        if self._ready and self._ready_call is None:
            self._ready_call = self._clock.callLater(0, self._start_ready_now)
        if self._drained is not None and not self._running and not self._drained.called:
            self._drained.callback(None)

    def _start_ready_now(self) -> None:
        self._ready_call = None
        self._start_next_ready()

    def _settle_attempt(
        self, job: Job, outcome: AttemptOutcome, definition: JobDefinition | None
    ) -> None:
        job_id = job.id
        now = self._clock.seconds()
        if job_id in self._handing_back:
            self._handing_back.discard(job_id)
            self._hand_back(job)
        elif job_id in self._cancelling:
            self._cancelling.discard(job_id)
            self._end(attrs.evolve(job, status=Status.CANCELLED), None, outcome.args)
        elif outcome.kind == "success" and job.period is not None:
            after_run = attrs.evolve(
                job, status=Status.QUEUED, attempt=0, args=outcome.args, run_at=now + job.period
            )
            self._keep(after_run)
            self._report(after_run, "success", final=False, args=outcome.args)
        elif outcome.kind == "success":
            self._end(
                attrs.evolve(job, status=Status.COMPLETE, args=outcome.args),
                "success",
                outcome.args,
            )
        elif outcome.kind == "cancelled":
            log.info(
                "job {job_id} ({job_name}) cancelled itself on node {node} (attempt {attempt})",
                job_id=job.id,
                job_name=job.name,
                node=self.name,
                attempt=job.attempt,
            )
            self._end(
                attrs.evolve(job, status=Status.CANCELLED),
                outcome.feedback,
                outcome.args,
                error=outcome.error,
                error_type=outcome.error_type,
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
                    attrs.evolve(failed, status=Status.FAILED),
                    "error",
                    outcome.args,
                    error=outcome.error,
                    error_type=outcome.error_type,
                )

    def _keep(self, job: Job) -> None:
        if self._stopping:
            self._hand_back(job)
            return
        self.storage.save(self.node_name, job).addErrback(
            self._log_failure, "saving job {job_id}", job_id=job.id
        )
        self._hold(job)

    def _end(
        self,
        job: Job,
        feedback: str | None,
        args: dict[str, Any],
        *,
        error: str | None = None,
        error_type: str | None = None,
    ) -> None:
        self._forget(job.id)
        remove = {
            Status.COMPLETE: self.config.remove_done_jobs,
            Status.CANCELLED: self.config.remove_cancelled_jobs,
            Status.FAILED: self.config.remove_failed_jobs,
        }[job.status]
        stored = (
            self.storage.remove(self.node_name, job.id)
            if remove
            else self.storage.save(self.node_name, job)
        )
        stored.addErrback(self._log_failure, "storing the end of job {job_id}", job_id=job.id)
        self._report(job, feedback, final=True, args=args, error=error, error_type=error_type)

    def _report(
        self,
        job: Job,
        feedback: str | None,
        *,
        final: bool,
        args: dict[str, Any],
        error: str | None = None,
        error_type: str | None = None,
    ) -> None:
        report = Report(
            job.id,
            job.run,
            job.status,
            feedback,
            final,
            args,
            error,
            error_type,
            run_at=None if final else job.run_at,
            attempt=job.attempt,
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

    # -- cancelling and forgetting ---------------------------------------------------------

    def _forget(self, job_id: str) -> None:
        """Stop holding a job: no timer, no place in memory (storage is the caller's business)."""
        self._jobs.pop(job_id, None)
        timer = self._timers.pop(job_id, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _cancel(self, job_ids: list[str]) -> list[str]:
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
            self._end(attrs.evolve(job, status=Status.CANCELLED), None, job.args)
        return cancelled

    @staticmethod
    def _log_failure(failure: Failure, /, what: str, **fields: Any) -> None:
        log.failure("failure " + what, failure, **fields)
