"""The node service: takes jobs from distributors, stores them, runs each on time, reports back.

Concerns live in their own modules, mixed in here: links (connections, Hello, outboxes),
takeup (stored jobs taken up once their distributor answers Hello), scheduling (accepting,
timers, slots, cancels), running (attempts, retries, ends); the storage lease is held by a
:class:`~jobreactor.node.lease.StorageLease`. A job is saved before the node acknowledges it.
"""

from __future__ import annotations

import functools
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python import threadable
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from jobreactor.config import Config
from jobreactor.definitions import JobRegistry, load_jobs_directory
from jobreactor.dialing import DialReport, reporting_service
from jobreactor.enqueueing import build_job, check_feedbacks
from jobreactor.errors import NotRunningError
from jobreactor.handle import JobHandle
from jobreactor.login import Credentials, check_credentials
from jobreactor.model import Job, Status
from jobreactor.node.context import _started_nodes
from jobreactor.node.lease import StorageLease
from jobreactor.node.links import (
    Links,
    _DistributorLink,
    _NodeProtocolFactory,
    endpoint_description,
)
from jobreactor.node.running import Running
from jobreactor.node.scheduling import Scheduling
from jobreactor.node.takeup import TakingUp
from jobreactor.outcomes import Feedback
from jobreactor.protocol import (
    Leaving,
    retry_policy,
)
from jobreactor.storage import IJobStorage, PermanentStorageError, StorageError, open_storage

log = Logger()


def _fire_once(deferred: Deferred[None]) -> None:
    if not deferred.called:  # it may have been cancelled by a timeout meanwhile
        deferred.callback(None)


#: Seconds a stopping node waits for a distributor to answer ``Leaving`` or ``JobsDone``.
STOP_MESSAGE_WAIT = 5.0

#: Statuses of jobs a restarted node picks up again.
UNFINISHED = (Status.NEW, Status.QUEUED, Status.IN_PROGRESS, Status.ERROR)


class Node(Links, TakingUp, Scheduling, Running, service.MultiService):
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
        credentials: Credentials | None = None,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        if not isinstance(name, str) or not name:
            raise ValueError(f"a node needs a non-empty name, not {name!r}")
        #: ``(user, password)`` for distributors that ask for credentials.
        self.credentials = check_credentials(credentials)
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
        #: Jobs due now (an ordered set), started together by ``_due_call`` on the next turn.
        self._due_now: dict[str, None] = {}
        self._due_call: IDelayedCall | None = None
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
        #: When each running attempt started, then (once it ended) how long it ran: the
        #: ``duration`` of the attempt's report.
        self._attempt_started: dict[str, float] = {}
        self._attempt_seconds: dict[str, float] = {}
        self._ready_call: IDelayedCall | None = None
        #: Attempts finished so far, and who wants to hear of each (see node/recycling.py).
        self.jobs_run = 0
        self.after_attempt: Callable[[], Any] | None = None
        #: Jobs being stored before RunJobs is answered, and cancels that came meanwhile.
        self._accepting: set[str] = set()
        self._cancel_when_accepted: set[str] = set()
        self._start_failure: Failure | None = None
        #: Jobs loaded from storage at start, per distributor endpoint, not yet taken up:
        #: they are once that distributor has answered this node's Hello.
        self._stored: dict[str, dict[str, Job]] = {}
        self._lease = StorageLease(
            self.storage,
            name,
            self.config.storage_lease_seconds,
            self._clock,
            self._lease_lost,
        )

    # -- service life --------------------------------------------------------------

    def startService(self) -> None:
        service.Service.startService(self)
        _started_nodes.append(self)
        self._threadpool.start()
        self._started = Deferred.fromCoroutine(self._start())
        self._started.addErrback(self._start_failed)

    async def _start(self) -> Node:
        # A storage server that is down at start (Redis restarting) is waited for: the node
        # dials no distributor until it can keep what it accepts. Nor while another process
        # holds the lease on this node's storage: it would run the same stored jobs.
        delay = 0.5
        while True:
            try:
                await self.storage.open()
                if not self._lease.held and not await self._lease.acquire(self._still_starting):
                    return self  # stopped while waiting for the lease: dial nobody
                if not self._still_starting():
                    await self._lease.release()  # stopped meanwhile, after its own release
                    return self
                unfinished = (
                    await self.storage.jobs_for(self.node_name, UNFINISHED)
                    if self.config.retry_jobs_at_start
                    else []
                )
                break
            except StorageError as error:  # unreachable; anything else is a real fault
                if self._stopping or not self.running or isinstance(error, PermanentStorageError):
                    raise
                log.warn(
                    "node {node}: storage not available ({error}); trying again in {delay} s",
                    node=self.name,
                    error=error,
                    delay=delay,
                )
                await deferLater(self._clock, delay, lambda: None)
                delay = min(delay * 2, 10.0)
        if self._stopping:
            return self
        self._keep_stored(unfinished)  # taken up when their distributor answers Hello
        for link in self._links.values():
            link.dial_report = DialReport(f"node {self.name}", link.endpoint)
            link.service = reporting_service(
                self._reactor,
                link.dial_report,
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

    def _still_starting(self) -> bool:
        return bool(self.running) and not self._stopping

    def _lease_lost(self) -> None:
        """Another process took this node's storage: leave its jobs to it and stop."""
        self._stored.clear()
        for job_id in list(self._jobs):
            self._forget(job_id)  # not removed from storage: they are the other process's
        self._ready.clear()
        for job_id, running in list(self._running.items()):
            if job_id not in self._starting:
                running.cancel()
        self.stopService()

    def _start_failed(self, failure: Failure) -> None:
        if failure.check(PermanentStorageError):
            # Not an outage: no traceback, one line that says what to fix.
            log.error(
                "node {node} could not start: storage unusable, not retried: {error}",
                node=self.name,
                error=failure.getErrorMessage(),
            )
        else:
            log.failure("node {node} could not start", failure, node=self.name)
        self._start_failure = failure  # handed to every when_started caller

    def when_started(self) -> Deferred[Node]:
        """Fire once storage is open, its lease taken, and the distributors are being dialled."""
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
        if self._due_call is not None and self._due_call.active():
            self._due_call.cancel()
        self._due_call = None
        self._due_now.clear()
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
        await self._lease.release()
        await self.storage.close()
        for link in self._links.values():
            if link.dial_report is not None:
                link.dial_report.forget()
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

    @property
    def held(self) -> int:
        """Unfinished jobs this node holds (running, due, or waiting for their time)."""
        return len(self._jobs)

    @staticmethod
    def _log_failure(failure: Failure, /, what: str, **fields: Any) -> None:
        log.failure("failure " + what, failure, **fields)
