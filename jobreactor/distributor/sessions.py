# mypy: disable-error-code="misc"
# (mixin methods take ``self: Distributor``, a subclass of their own class, on purpose)
"""Sessions: the connections of nodes and clients, their Hello, and losing them.

A peer is nobody until its ``Hello`` is accepted; a lost node's jobs stay its own for
``node_grace_period`` (it may come back), then go back to the waiting line.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from jobreactor.distributor.records import (
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
    DuplicateNodeName,
    Enqueue,
    GetOutcome,
    Hello,
    HelloFirst,
    JobReactorAMP,
    JobsDone,
    Leaving,
    RetryJobs,
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

    @Hello.responder
    def hello(
        self, name: str, slots: int, version: int, held: Any, credentials: Any, jobs: Any = None
    ) -> dict[str, Any]:
        return self.distributor._hello(self, name, slots, version, held, jobs)

    @Enqueue.responder
    def enqueue(self, jobs: Any) -> Deferred[dict[str, Any]]:
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

    @GetOutcome.responder
    def get_outcome(self, job_id: str) -> Deferred[dict[str, Any]]:
        if self.link is None:
            raise HelloFirst("send Hello before GetOutcome")

        def answer(outcome: Outcome | None) -> dict[str, Any]:
            if outcome is None:
                return {"outcome": None}
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
        return Deferred.fromCoroutine(self.distributor._retry_ids(job_ids))

    @Leaving.responder
    def leaving(self) -> dict[str, Any]:
        if self.link is None:
            raise HelloFirst("send Hello before Leaving")
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
        if version != PROTOCOL_VERSION:
            raise UnsupportedVersion(
                f"this distributor speaks protocol version {PROTOCOL_VERSION}, not {version}"
            )
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
            raise DuplicateNodeName(f"a node named {name!r} is already connected")
        if protocol._hello_timer is not None and protocol._hello_timer.active():
            protocol._hello_timer.cancel()
        protocol._hello_timer = None
        link = _NodeLink(name=name, slots=slots, protocol=protocol)
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
        drop = []
        for job_id in held_ids:
            entry = self._owned.get(job_id)
            if entry is None or (entry.node is not None and entry.node != name):
                drop.append(job_id)
            elif entry.node is None:
                self._unqueue(entry)
                entry.node = name
                self._keep_node(entry)
            if entry is not None and entry.node == name and entry.cancel_requested:
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
