# mypy: disable-error-code="misc"
# (mixin methods take ``self: Distributor``, a subclass of their own class, on purpose)
"""Sessions: the connections of nodes and clients, their Hello, and losing them.

A peer is nobody until its ``Hello`` is accepted; a lost node's jobs stay its own for
``node_grace_period`` (it may come back), then go back to the waiting line.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.protocols import amp
from twisted.python.failure import Failure

from jobreactor.access import BEFORE_HELLO, Session
from jobreactor.distributor.records import (
    FUTURE_MARGIN,
    NodeInfo,
    _NodeLink,
    log,
)
from jobreactor.distributor.routing import read_hello_jobs
from jobreactor.errors import InvalidJobError
from jobreactor.limits import Limits, check_name
from jobreactor.protocol import (
    PROTOCOL_VERSION,
    BadMessage,
    CancelJobs,
    Challenge,
    DuplicateNodeName,
    Enqueue,
    GetOutcome,
    Hello,
    HelloFirst,
    JobReactorAMP,
    JobsDone,
    Leaving,
    ProtocolError,
    RetryJobs,
    Unauthorized,
    UnsupportedVersion,
)
from jobreactor.results import Outcome

if TYPE_CHECKING:
    from jobreactor.distributor.service import Distributor


class DistributorProtocol(JobReactorAMP):
    """One node's connection; nothing but ``Hello`` is accepted until the node has said it."""

    def __init__(self, distributor: Distributor) -> None:
        super().__init__()
        self.distributor = distributor
        self.limits = Limits.from_config(distributor.config)
        self.link: _NodeLink | None = None
        self._hello_timer: IDelayedCall | None = None
        #: When the peer last sent a command other than Heartbeat (the idle timeout).
        self.last_command = 0.0
        self.idle_timer: IDelayedCall | None = None
        #: Who the peer proved to be (see :mod:`jobreactor.access`).
        self.session = Session()
        self.lost = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self.last_command = self.distributor._clock.seconds()
        if not self.distributor._admission.opened(self):
            if self.transport is not None:
                self.transport.abortConnection()  # type: ignore[attr-defined]
            return
        self._hello_timer = self.distributor._clock.callLater(
            self.distributor.config.hello_timeout, self._no_hello
        )

    def _commandReceived(self, box: Any) -> None:
        if box.get(b"_command") != b"Heartbeat":
            self.last_command = self.distributor._clock.seconds()
        super()._commandReceived(box)

    def _no_hello(self) -> None:
        self._hello_timer = None
        log.warn(
            "closing connection from {peer}: no Hello within {seconds} s",
            peer=self.transport.getPeer() if self.transport else None,
            seconds=self.distributor.config.hello_timeout,
        )
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def locateResponder(self, name: bytes) -> Any:
        if self.link is None and name not in BEFORE_HELLO and name != b"StartTLS":
            # Nothing but the authentication exchange is answered before Hello.
            def refuse(box: Any) -> Deferred[Any]:
                command = name.decode("ascii", "replace")
                return fail(amp.RemoteAmpError(b"HELLO_FIRST", f"send Hello before {command}"))

            return refuse
        return super().locateResponder(name)

    @Challenge.responder
    def challenge(self, user: str) -> dict[str, Any]:
        return self.distributor.gate.challenge(self.session, user)

    @Hello.responder
    def hello(
        self, name: str, slots: int, version: int, held: Any, credentials: Any, jobs: Any = None
    ) -> Deferred[dict[str, Any]]:
        try:
            self.distributor._check_version(version)  # an old peer learns this first
        except ProtocolError:
            if self.link is None:
                self._close_after_answer()
            raise
        gate = self.distributor.gate
        admitted = gate.admit(self.session, self.transport, name, slots, credentials)

        def welcome(signature: str | None) -> dict[str, Any]:
            if self.lost:
                raise Unauthorized("the connection was lost during the login")
            answer = self.distributor._hello(self, name, slots, version, held, jobs)
            if signature is not None:
                answer["server_signature"] = signature
            return answer

        def refused(failure: Failure) -> Failure:
            # A refused Hello ends the connection (protocol.md §3.3): one login attempt per
            # connection, so a password guesser must reconnect for each.
            if failure.check(ProtocolError, Unauthorized) and self.link is None:
                self._close_after_answer()
            return failure

        return admitted.addCallback(welcome).addErrback(refused)

    def bad_arguments(self, command: type[amp.Command]) -> None:
        if command is Hello and self.link is None:
            self._close_after_answer()

    def _close_after_answer(self) -> None:
        """A refused Hello ends the connection (protocol.md §3.3), once the error is out."""
        transport = self.transport
        if transport is not None:
            self.distributor._clock.callLater(0, transport.loseConnection)

    @Enqueue.responder
    def enqueue(self, jobs: Any) -> Deferred[dict[str, Any]]:
        if self.link is None:
            raise HelloFirst("send Hello before Enqueue")
        self.distributor.gate.check_enqueue(self.session)
        return self.distributor._remote_enqueue(self.link, jobs, self.session.user)

    @CancelJobs.responder
    def cancel_jobs(self, job_ids: Any) -> dict[str, Any]:
        if self.link is None:
            raise HelloFirst("send Hello before CancelJobs")
        if not isinstance(job_ids, list) or not all(isinstance(i, str) for i in job_ids):
            raise BadMessage("job_ids must be a list of job ids")
        return {"cancelled": self.distributor._cancel_ids(job_ids, self.session, self.link.name)}

    @GetOutcome.responder
    def get_outcome(self, job_id: str) -> Deferred[dict[str, Any]]:
        if self.link is None:
            raise HelloFirst("send Hello before GetOutcome")

        def answer(outcome: Outcome | None) -> dict[str, Any]:
            if outcome is None:
                return {"outcome": None}
            if not self._may_see(outcome):
                raise Unauthorized(f"job {job_id} was not enqueued by this peer")
            data = outcome.to_json()
            data.pop("job", None)
            data.pop("origin", None)
            return {"outcome": data}

        return self.distributor.outcome(job_id).addCallback(answer)

    @RetryJobs.responder
    def retry_jobs(self, job_ids: Any) -> Deferred[dict[str, Any]]:
        if self.link is None:
            raise HelloFirst("send Hello before RetryJobs")
        if not isinstance(job_ids, list) or not all(isinstance(i, str) for i in job_ids):
            raise BadMessage("job_ids must be a list of job ids")
        return Deferred.fromCoroutine(self._retry_own(job_ids))

    def _may_see(self, outcome: Outcome) -> bool:
        """With authentication, a stored outcome is this peer's if a peer of its name
        enqueued the job (names are bound to users), or if the peer is an admin."""
        assert self.link is not None
        return self.distributor.gate.may_see(self.session, outcome.origin, self.link.name)

    async def _retry_own(self, job_ids: list[str]) -> dict[str, Any]:
        mine: list[str] = []
        refused: list[dict[str, Any]] = []
        for job_id in job_ids:
            outcome = await self.distributor.outcome(job_id) if self.session.peer else None
            if outcome is not None and not self._may_see(outcome):
                refused.append({"id": job_id, "error": "not enqueued by this peer"})
            else:
                mine.append(job_id)
        answer = await self.distributor._retry_ids(mine)
        answer["rejected"] += refused
        return answer

    @Leaving.responder
    def leaving(self) -> dict[str, Any]:
        if self.link is None:
            raise HelloFirst("send Hello before Leaving")
        if self.link.slots == 0:
            raise BadMessage("Leaving is for nodes; a client closes its connection instead")
        self.link.leaving = True
        log.info("node {node} is stopping: no more jobs for it", node=self.link.name)
        return {}

    @JobsDone.responder
    def jobs_done(self, reports: Any) -> Deferred[dict[str, Any]]:
        if self.link is None:
            raise HelloFirst("send Hello before JobsDone")
        self.distributor._reports(self.link, reports)
        # Answered once the outcomes are written: until then the node keeps the reports.
        return self.distributor._ledger.written().addCallback(lambda _: {})

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.lost = True
        if self._hello_timer is not None and self._hello_timer.active():
            self._hello_timer.cancel()
        self._hello_timer = None
        if self.idle_timer is not None and self.idle_timer.active():
            self.idle_timer.cancel()
        self.idle_timer = None
        self.distributor._admission.closed(self)
        if self.link is not None:
            self.distributor._admission.forget(self.link.name)
            self.distributor._node_lost(self.link)


class Sessions:
    """The distributor's side of sessions (mixed into :class:`Distributor`)."""

    def when_nodes(
        self: Distributor, count: int = 1, names: Iterable[str] = ()
    ) -> Deferred[list[NodeInfo]]:
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

    def _check_node_waiters(self: Distributor) -> None:
        for pair in list(self._node_waiters):
            (count, names), waiter = pair
            working = {name for name, link in self._links.items() if link.slots > 0}
            if len(working) >= count and names <= working:
                self._node_waiters.remove(pair)
                waiter.callback(self.nodes())

    def nodes(self: Distributor) -> list[NodeInfo]:
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
                last_heard=link.protocol._last_heard or None,
            )
            for link in self._links.values()
            if link.slots > 0
        ]

    @staticmethod
    def _check_version(version: int) -> None:
        if version != PROTOCOL_VERSION:
            raise UnsupportedVersion(
                f"this distributor speaks protocol version {PROTOCOL_VERSION}, not {version}: "
                "run the same jobreactor version on both sides"
            )

    def _hello(
        self: Distributor,
        protocol: DistributorProtocol,
        name: str,
        slots: int,
        version: int,
        held: Any,
        jobs: Any = None,
    ) -> dict[str, Any]:
        job_names = read_hello_jobs(jobs)
        self._check_version(version)
        if protocol.link is not None:
            raise BadMessage("Hello was already sent on this connection")
        if not name or slots < 0:
            raise BadMessage("a peer needs a non-empty name and slots of 0 (a client) or more")
        try:
            check_name(name, "the peer's name", protocol.limits)
        except InvalidJobError as error:
            raise BadMessage(str(error)) from None
        if not isinstance(held, list) or not all(isinstance(job_id, str) for job_id in held):
            raise BadMessage("held must be a list of job ids")
        if name in self._links:
            kind = "client" if self._links[name].slots == 0 else "node"
            raise DuplicateNodeName(f"a {kind} named {name!r} is already connected")
        if protocol._hello_timer is not None and protocol._hello_timer.active():
            protocol._hello_timer.cancel()
        protocol._hello_timer = None
        link = _NodeLink(
            name=name,
            slots=slots,
            protocol=protocol,
            queue_limit=self.config.node_queue_limit if slots > 0 else 0,
        )
        if job_names is not None:
            self._node_jobs(link, job_names)
        self._links[name] = link
        protocol.link = link
        protocol.peer_name = name
        if slots == 0:
            self._admission.watch_idle(protocol)
        protocol.start_heartbeat(
            self._clock, self.config.heartbeat_interval, self.config.heartbeat_timeout
        )
        timer = self._grace_timers.pop(name, None)
        if timer is not None and timer.active():
            timer.cancel()
        held_ids = set(held)
        due_by = self._clock.seconds() + FUTURE_MARGIN
        drop = []
        for job_id in held_ids:
            entry = self._owned.get(job_id)
            if (
                entry is None
                or entry.node not in (None, name)
                # waiting here, and never sent to this node: not this node's to keep
                or (entry.node is None and not entry.was_sent_to(name))
            ):
                drop.append(job_id)
                entry = None
            elif entry.node is None:
                self._unqueue(entry)
                entry.node = name
                self._keep_node(entry)
            if entry is not None and entry.node == name:
                if entry.job.run_at is None or entry.job.run_at <= due_by:
                    link.load.add(job_id)  # running or due there: it holds a slot (§4.1)
                if entry.cancel_requested:
                    self._clock.callLater(0, self._cancel_on, name, job_id)  # after the answer
        lost = [e for e in self._owned.values() if e.node == name and e.job.id not in held_ids]
        self._requeue(lost)
        self._log_hello(name, slots, len(held_ids) - len(drop))
        self._schedule_dispatch()
        self._clock.callLater(0, self._check_node_waiters)
        outbox = self._outboxes.get(name)
        if outbox is not None:
            if outbox.expiry is not None and outbox.expiry.active():
                outbox.expiry.cancel()
            outbox.expiry = None
            self._recount_kept(name)  # here again: no longer counted as kept
            self._schedule_outbox(name, outbox)
        return {"distributor_id": self.id, "version": PROTOCOL_VERSION, "drop": drop}

    def _log_hello(self: Distributor, name: str, slots: int, held: int) -> None:
        """A peer with 0 slots is a client (an application enqueueing), not a node."""
        if slots == 0:
            log.info("client {client} connected", client=name)
        else:
            log.info(
                "node {node} connected with {slots} slots, holding {held} jobs",
                node=name,
                slots=slots,
                held=held,
            )

    def _node_lost(self: Distributor, link: _NodeLink) -> None:
        if self._links.get(link.name) is not link:
            return
        del self._links[link.name]
        outbox = self._outboxes.get(link.name)
        if outbox is not None and self.running:
            outbox.expiry = self._clock.callLater(
                self.config.outcome_keep_seconds, self._expire_outbox, link.name
            )
            self._recount_kept(link.name)
        holding = sum(1 for entry in self._owned.values() if entry.node == link.name)
        if link.slots == 0:
            log.info("client {client} disconnected", client=link.name)
        else:
            log.info("node {node} disconnected holding {count} jobs", node=link.name, count=holding)
        if holding and self.running:
            self._grace_timers[link.name] = self._clock.callLater(
                self.config.node_grace_period, self._reroute, link.name
            )

    def _reroute(self: Distributor, name: str) -> None:
        self._grace_timers.pop(name, None)
        lost = [entry for entry in self._owned.values() if entry.node == name]
        log.info("re-routing {count} jobs of lost node {node}", count=len(lost), node=name)
        self._requeue(lost)
