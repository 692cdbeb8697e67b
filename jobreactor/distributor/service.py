"""The distributor service: owns every job from ``enqueue`` to its outcome.

The concerns live in their own modules and are mixed in here: sessions (who is
connected), dispatch (waiting and routing), outcomes (reports, feedbacks, outboxes). A job
sent to a node stays owned here until its final report: if the node is lost, its jobs go
back to the queue after ``node_grace_period``.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application import service
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorTime
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from jobreactor.access import Gate, Session, is_open_to_others
from jobreactor.config import Config
from jobreactor.credentials import Authority, certificate_authority
from jobreactor.distributor.admission import Admission
from jobreactor.distributor.dependencies import Blocked, Dependencies
from jobreactor.distributor.dispatch import Dispatch
from jobreactor.distributor.keeping import Keeping
from jobreactor.distributor.ledger import GroupCommit
from jobreactor.distributor.outcomes import OutcomeDesk
from jobreactor.distributor.records import (
    STOP_WAIT,
    Feedback,
    NodeInfo,
    WeakHandles,
    _Entry,
    _job_size,
    _NodeLink,
    _Outbox,
    _priority,
    log,
    log_failure,
)
from jobreactor.distributor.routing import Routing
from jobreactor.distributor.sessions import DistributorProtocol, Sessions
from jobreactor.distributor.unique import EndedKey, UniqueJobs
from jobreactor.distributor.views import ClusterViews
from jobreactor.enqueueing import build_job_sized, check_feedbacks
from jobreactor.errors import InvalidJobError, JobCancelled
from jobreactor.handle import JobHandle, WeakableHandle
from jobreactor.limits import Limits, printable
from jobreactor.model import Job, Status
from jobreactor.protocol import BadMessage, QueueFull
from jobreactor.ratelimit import Pacer
from jobreactor.results import HandlerRegistry, default_handlers
from jobreactor.stats import ClusterStats
from jobreactor.storage.ledger import open_ledger
from jobreactor.tls import requires_client_certificates
from jobreactor.waiting import WaitingLine


class Distributor(
    Sessions,
    Dispatch,
    OutcomeDesk,
    Keeping,
    ClusterViews,
    UniqueJobs,
    Dependencies,
    Routing,
    service.Service,
):
    """Accepts nodes on ``listen`` (a Twisted endpoint string) and routes jobs to them.

    ``listen=None`` opens no port: nodes are then joined in memory (see
    :mod:`jobreactor.testing`).

    ``portal`` (a twisted.cred ``Portal`` giving :class:`~jobreactor.credentials.IPeer`
    avatars, or an :class:`~jobreactor.credentials.Authority`, e.g. from
    ``authority_from_string("file:PATH")``) makes every peer log in first.
    ``client_certificates=True`` takes the common name of a peer's TLS certificate as its
    user: set it only when the endpoint verifies client certificates (``jr-tls:`` with
    ``clientCA`` does, and sets it by default). See docs/security.md.

    Call its methods in the reactor thread; :data:`jobreactor.JR` does the thread hop for
    applications that run the reactor in a background thread. Feedbacks run in the reactor
    thread too.
    """

    def __init__(
        self,
        listen: str | None,
        *,
        config: Config | None = None,
        storage: str | Any = "memory",
        handlers: HandlerRegistry | None = None,
        reactor: Any = None,
        clock: IReactorTime | None = None,
        portal: Portal | Authority | None = None,
        client_certificates: bool | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.listen = listen
        if client_certificates is None:
            client_certificates = requires_client_certificates(listen)
        authority = Authority(portal) if isinstance(portal, Portal) else portal
        if authority is None and client_certificates:
            authority = certificate_authority()
        #: Who may connect and what each connection may do (:mod:`jobreactor.access`).
        self.gate = Gate(authority, client_certificates)
        self.config = config if config is not None else Config()
        #: Kept in storage: a restarted distributor with storage is the same distributor.
        self.id: str = str(uuid.uuid4())
        self._reactor = reactor
        self._clock: IReactorTime = clock if clock is not None else reactor
        self._owned: dict[str, _Entry] = {}
        self._waiting: WaitingLine[_Entry] = WaitingLine(_priority)
        self._future: WaitingLine[_Entry] = WaitingLine(_priority)
        self._links: dict[str, _NodeLink] = {}
        #: Jobs routed so far: orders the nodes' last turns, so equals take turns.
        self._routed = 0
        self._grace_timers: dict[str, IDelayedCall] = {}
        self._dispatch_call: IDelayedCall | None = None
        self._in_flight: set[Deferred[Any]] = set()
        self._outboxes: dict[str, _Outbox] = {}
        self._port: IListeningPort | None = None
        self._listening: Deferred[IListeningPort] | None = None
        self._node_waiters: list[tuple[tuple[int, frozenset[str]], Deferred[list[NodeInfo]]]] = []
        #: Where jobs, outcomes and the id are kept (``memory``, ``sqlite:``, ``redis://``).
        self.storage: Any = open_ledger(storage)
        self._ledger = GroupCommit(self.storage, self._clock)
        #: Result handlers by job name: the application's ``@on_result`` functions by default.
        self.handlers = handlers if handlers is not None else default_handlers
        self._handler_runs: dict[str, Deferred[Any]] = {}
        #: Handlers that failed, waiting for their next attempt (cancelled at stop).
        self._handler_retries: dict[str, IDelayedCall] = {}
        self._seq: int = 0
        self._expiry_call: IDelayedCall | None = None
        self._sweeping: Deferred[Any] | None = None
        self._expiry_marks: deque[float] = deque()
        #: Fires once storage is open and what it held is loaded (listening comes after).
        self._loaded: Deferred[None] | None = None
        #: Counters, histograms and rates for the dashboard, ``/metrics`` and ``jr stats``.
        self.stats = ClusterStats(self._clock)
        self._admission = Admission(self.config, self._clock)
        #: Unique keys: of owned jobs (key to id), and of ended ones within ``unique_for``.
        self._unique_owned: dict[str, str] = {}
        self._unique_ended: dict[str, EndedKey] = {}
        self._unique_sweep = 0
        #: Jobs waiting for their dependencies, and who waits for each dependency.
        self._blocked: dict[str, Blocked] = {}
        self._dependents: dict[str, set[str]] = {}
        #: Rate limits by job name; jobs no node runs, since when; the wake-up for paced jobs.
        self._pacers: dict[str, Pacer] = {}
        self._held: dict[str, WaitingLine[_Entry]] = {}
        self._unroutable: dict[str, float] = {}
        self._pace_call: IDelayedCall | None = None
        #: What every handle made here calls to cancel: one bound method for all of them
        #: (a bound method made for each handle cost a third of the handle's memory).
        self._cancel_handle: Callable[[JobHandle], None] = self.cancel
        #: Handles made by ``enqueue`` that only their caller holds, by job id: a handle
        #: nobody holds any more leaves by itself (see ``_own``).
        self._handles = WeakHandles()

    # -- service life --------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._loaded = Deferred.fromCoroutine(self._load())
        self._listening = self._loaded.addCallback(lambda _: self._listen())

    def _listen(self) -> Deferred[IListeningPort]:
        if self.listen is None or not self.running:
            return succeed(None)  # type: ignore[arg-type]
        endpoint = serverFromString(self._reactor, self.listen)
        factory = Factory.forProtocol(lambda: DistributorProtocol(self))
        listening: Deferred[IListeningPort] = endpoint.listen(factory)
        return listening.addCallback(self._listened)

    def _listened(self, port: IListeningPort) -> IListeningPort:
        self._port = port
        log.info("distributor {id} listening on {address}", id=self.id, address=port.getHost())
        if not self.gate.required and is_open_to_others(port.getHost()):
            log.warn(
                "distributor {id} listens on {address} without authentication: anyone who "
                "can reach the port can enqueue, cancel and take jobs (use --auth or "
                "auth=, see docs/security.md)",
                id=self.id,
                address=port.getHost(),
            )
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
        timers = [self._dispatch_call, self._pace_call, *self._grace_timers.values()]
        flushes = [outbox.flush_call for outbox in self._outboxes.values()]
        for timer in [*timers, *self._handler_retries.values(), *flushes]:
            if timer is not None and timer.active():
                timer.cancel()
        self._grace_timers.clear()
        self._handler_retries.clear()
        self._dispatch_call = None
        if self._expiry_call is not None and self._expiry_call.active():
            self._expiry_call.cancel()
        self._expiry_call = None
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

        def close_storage(_: Any) -> Deferred[Any]:
            last = Deferred.fromCoroutine(self._write_last())
            last.addTimeout(STOP_WAIT, self._clock)
            last.addErrback(self._log_failure, "writing the last changes at stop")
            return last.addBoth(lambda _: self.storage.close())

        closed = answered.addBoth(close).addBoth(close_storage)
        return closed.addErrback(self._log_failure, "stopping").addCallback(lambda _: None)

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
        job, args_bytes = build_job_sized(
            name,
            args,
            options,
            now=self._clock.seconds(),
            max_args_bytes=self.config.max_args_bytes,
            limits=Limits.from_config(self.config),
        )
        handle = self.new_handle(job)
        owned = self._own(job, success, error, handle, None, _job_size(job, args_bytes), weak=True)
        return owned if isinstance(owned, JobHandle) else handle

    def new_handle(
        self, job: Job, cancel: Callable[[JobHandle], None] | None = None
    ) -> WeakableHandle:
        return WeakableHandle(job.id, job.name, cancel or self._cancel_handle)

    def submit(
        self,
        job: Job,
        *,
        success: Feedback | None = None,
        error: Feedback | None = None,
        handle: JobHandle | None = None,
        origin: str | None = None,
    ) -> JobHandle:
        """Queue an already validated job (made by :func:`build_job`).

        With persistent storage the job is written first: ``handle.accepted`` fires once
        it is (at once with memory storage); it waits here in the meantime and may already
        be sent to a node, but a restart forgets it until then.

        Raises :class:`QueueFullError` when the distributor holds ``max_waiting_jobs``
        (or ``max_waiting_bytes``) already. ``origin`` names the remote peer that sent it.
        """
        if handle is not None:  # the caller's: it may have been used already (held, as ever)
            owned = self._own(job, success, error, handle, origin)
            return owned if isinstance(owned, JobHandle) else handle
        handle = self.new_handle(job)
        owned = self._own(job, success, error, handle, origin, weak=True)
        return owned if isinstance(owned, JobHandle) else handle

    def _own(
        self,
        job: Job,
        success: Feedback | None,
        error: Feedback | None,
        handle: JobHandle | None,
        origin: str | None,
        size: int | None = None,
        *,
        weak: bool = False,
    ) -> JobHandle | _Entry:
        """Own ``job``: its entry, or the handle of the job that holds its unique key.

        ``handle`` None: nobody in this process can hold one (a remote peer's job), so none
        is made (most of the memory of a waiting job was its handle). ``weak``: the handle
        was just made here for the caller, who may drop it at once (a job enqueued with
        feedbacks only): it is held weakly (:attr:`_handles`) until ``handle.deferred`` is
        made, and a handle nobody holds costs nothing while the job waits.
        """
        check_feedbacks(success, error)
        twin = self._unique_twin(job, success, error, origin)
        if twin is not None:
            return twin
        if job.id in self._owned:
            raise InvalidJobError(f"job id {job.id} is already queued")
        if size is None:
            size = _job_size(job)
        if origin is None:
            self._admission.check_local(size)
        entry = _Entry(
            job=job,
            handle=None if weak else handle,
            success=success,
            error=error,
            size=size,
            origin=origin,
        )
        if weak and isinstance(handle, WeakableHandle):
            self._handles.add(job.id, handle)
            handle._keeper = self._keep_handle
        self._admission.add(origin, size)
        self._owned[job.id] = entry
        self._unique_claim(entry)
        self._keep_job(entry)
        if self._ledger.durable and handle is not None:
            handle._awaiting_acceptance()
            self._ledger.written().addCallbacks(lambda _: handle._accepted(), handle._accepted)
        self.stats.enqueued(job)
        if not self._awaits_dependencies(entry):
            self._line_up(entry)  # (packed if deep: see PACK_BEYOND)
        self._schedule_dispatch()
        return entry

    def _handle_of(self, entry: _Entry) -> JobHandle:
        """The entry's handle (held from now on), made now if nobody asked for one before
        (a remote job) or if nobody holds the one made at enqueue any more."""
        if entry.handle is None:
            handle = self._handles.pop(entry.job.id)
            entry.handle = handle if handle is not None else self.new_handle(entry.job)
        return entry.handle

    def _keep_handle(self, handle: JobHandle) -> None:
        """Hold a weakly held handle from now on (its Deferred was made: see ``_own``)."""
        entry = self._owned.get(handle.id)
        if entry is not None and entry.handle is None:
            entry.handle = handle
            self._handles.pop(handle.id)

    def cancel(self, handle: JobHandle) -> None:
        """Stop the job of ``handle``: drop it if it waits here, else ask its node."""
        entry = self._owned.get(handle.id)
        if entry is not None:
            self._cancel_entry(entry)

    def _cancel_entry(self, entry: _Entry) -> None:
        if entry.node is None:
            self._unqueue(entry)
            self._finish(entry, None, Failure(JobCancelled(entry.job.id, entry.job.name)))
            return
        entry.cancel_requested = True  # also honoured if the node is away right now
        self._cancel_on(entry.node, entry.job.id)

    def _remote_enqueue(
        self, link: _NodeLink, raw_jobs: Any, owner: str | None = None
    ) -> Deferred[dict[str, Any]]:
        """Own the jobs a peer sent; answer once they are written (nothing is acknowledged
        before it would survive a restart). ``owner``: the user that sent them."""
        if not isinstance(raw_jobs, list):
            raise BadMessage("jobs must be a list of job objects")
        accepted: list[str] = []
        rejected: list[dict[str, Any]] = []
        merged: dict[str, str] = {}
        now = self._clock.seconds()
        finished = self._awaiting_delivery(link.name)
        limits = link.protocol.limits
        fresh: list[tuple[Job, int]] = []
        for raw in raw_jobs:
            job_id = raw.get("id") if isinstance(raw, dict) else None
            if not isinstance(job_id, str) or len(job_id) > limits.max_name_length:
                job_id = None  # echo back only what can be sent back
            try:
                job, args_bytes = Job.from_wire_sized(raw, limits)
            except InvalidJobError as error:
                rejected.append({"id": job_id, "error": printable(str(error), 500)})
                continue
            entry = self._owned.get(job.id)
            if entry is not None:
                if (entry.origin == link.name and entry.owner == owner) or self._follows(
                    entry, link.name
                ):
                    accepted.append(job.id)  # resent after a reconnect: already ours
                else:
                    rejected.append({"id": job.id, "error": f"job id {job.id} is taken"})
                continue
            if job.id in finished or self._resent_after_end(link.name, job):
                accepted.append(job.id)  # finished already: its outcome is on its way
                continue
            # A sender cannot choose how many runs or attempts a job has had (§4.5).
            if job.status is not Status.NEW or job.run or job.attempt or not job.enqueued_at:
                job = attrs.evolve(
                    job, status=Status.NEW, run=0, attempt=0, enqueued_at=job.enqueued_at or now
                )
            fresh.append((job, args_bytes))
        full = None
        for job, args_bytes in fresh:
            if job.id in self._owned:  # twice in one box
                accepted.append(job.id)
                continue
            size = _job_size(job, args_bytes)
            full = full or self._admission.full(link.name, 1, size)
            if full is not None:
                # Past a cap: this job (and the rest) stay with the sender, who offers them
                # again later; the distributor stops reading from it until its jobs drain.
                rejected.append({"id": job.id, "error": f"queue full: {full}", "queue_full": True})
                continue
            owned = self._own(job, None, None, None, link.name, size)
            if isinstance(owned, JobHandle):  # a unique key's existing job: the sender follows it
                merged[job.id] = owned.id
            else:
                owned.owner = owner
            accepted.append(job.id)
        if full is not None:
            self._admission.pause(link.name, link.protocol)
            if not accepted:
                raise QueueFull(f"queue full: {full}; send these jobs again later")
        answer = {"accepted": accepted, "rejected": rejected, "merged": merged or None}
        return self._ledger.written().addCallback(lambda _: answer)

    def _awaiting_delivery(self, origin: str) -> set[str]:
        """Ids of ``origin``'s jobs that ended here and whose outcome it has not yet taken
        (waiting in its outbox, or sent and unanswered): a resend of one is not a new job."""
        outbox = self._outboxes.get(origin)
        if outbox is None:
            return set()
        return {report.job_id for report in outbox.reports} | outbox.sending

    def _cancel_ids(
        self, job_ids: list[str], session: Session | None = None, peer: str = ""
    ) -> list[str]:
        cancelled = []
        for job_id in job_ids:
            entry = self._owned.get(job_id)
            if entry is None:
                continue
            if session is not None and not self.gate.may_cancel(session, entry.owner):
                log.warn(
                    "refused to cancel job {job_id} for {peer} (user {user}): "
                    "another user enqueued it",
                    job_id=job_id,
                    peer=peer,
                    user=session.user,
                )
                continue
            cancelled.append(job_id)
            self._cancel_entry(entry)
        return cancelled

    async def _write_last(self) -> None:
        """Let running result handlers end and every change be written (handled marks
        too, so a clean stop never runs a handler twice)."""
        while self._handler_runs or not self._ledger.idle or self._sweeping is not None:
            runs = list(self._handler_runs.values())
            if self._sweeping is not None:
                runs.append(self._sweeping)
            if runs:
                await DeferredList(runs, consumeErrors=True)
            await self._ledger.written()

    @property
    def waiting(self) -> int:
        """Jobs waiting here for a node."""
        return len(self._waiting) + len(self._future) + self.paced

    @property
    def pending(self) -> int:
        """Jobs owned here that have no final outcome yet."""
        return len(self._owned)

    _log_failure = staticmethod(log_failure)
