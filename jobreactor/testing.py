"""Run jobs without sockets or waiting: a distributor and nodes joined in memory, one Clock.

For testing an application's jobs and feedbacks (and for this project's own unit tests)::

    cluster = LocalCluster(registry)          # jobs defined with @job into ``registry``
    node = cluster.add_node("worker_1")
    handle = cluster.distributor.enqueue("my_job", {"x": 1}, success=seen.append)
    cluster.run()                             # deliver everything that is due now
    cluster.advance(30)                       # and what falls due in the next 30 s

The same :class:`~jobreactor.Distributor` and :class:`~jobreactor.Node` run as in production;
only the transport (``twisted.test.iosim``) and the clock (``task.Clock``) are stand-ins.
``defer=True`` jobs still need real threads and the real reactor: test those end to end.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any

from twisted.internet.base import DelayedCall
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import Clock
from twisted.test import iosim

from jobreactor.client import Client, ClientProtocol
from jobreactor.config import Config
from jobreactor.definitions import JobRegistry
from jobreactor.distributor import Distributor, DistributorProtocol
from jobreactor.node import Node, NodeProtocol, _DistributorLink
from jobreactor.protocol import JobReactorAMP
from jobreactor.results import HandlerRegistry
from jobreactor.storage import IJobStorage

#: Rounds of "deliver bytes, run due timers" before :meth:`LocalCluster.run` gives up.
MAX_ROUNDS = 10_000


class HeapClock(Clock):
    """A ``task.Clock`` that keeps its calls in a heap.

    ``task.Clock`` sorts every pending call on each ``callLater``; with the ten thousand
    timers of a busy node that is quadratic, and a test of it takes minutes instead of
    seconds. Same interface, same order of calls (by time, then by scheduling order).
    """

    def __init__(self) -> None:
        super().__init__()
        self._heap: list[tuple[float, int, DelayedCall]] = []
        self._sequence = itertools.count()

    def callLater(self, delay: float, callable: Any, *args: Any, **kw: Any) -> IDelayedCall:
        call = DelayedCall(
            self.seconds() + delay, callable, args, kw, self._forget, self._push, self.seconds
        )
        self._push(call)
        return call

    def _push(self, call: DelayedCall) -> None:
        heapq.heappush(self._heap, (call.getTime(), next(self._sequence), call))

    def _forget(self, call: DelayedCall) -> None:
        """Cancelled calls stay in the heap and are skipped when they come up."""

    def _drop_stale(self) -> None:
        while self._heap:
            when, _, call = self._heap[0]
            if call.cancelled or call.called or when != call.getTime():
                heapq.heappop(self._heap)  # cancelled, or a reset pushed it again
                continue
            return

    def next_call_time(self) -> float | None:
        """When the earliest pending call is due, or None."""
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def getDelayedCalls(self) -> list[IDelayedCall]:
        seen: set[int] = set()
        calls: list[IDelayedCall] = []
        for when, _, call in sorted(self._heap, key=lambda item: item[:2]):
            if call.active() and when == call.getTime() and id(call) not in seen:
                seen.add(id(call))
                calls.append(call)
        return calls

    def advance(self, amount: float) -> None:
        self.rightNow += amount
        while True:
            due = self.next_call_time()
            if due is None or due > self.seconds():
                return
            _, _, call = heapq.heappop(self._heap)
            call.called = 1
            call.func(*call.args, **call.kw)


class LocalCluster:
    """One distributor and any number of nodes, connected through in-memory transports."""

    def __init__(
        self,
        registry: JobRegistry,
        *,
        config: Config | None = None,
        storage: str | Any = "memory",
        handlers: HandlerRegistry | None = None,
    ) -> None:
        """``storage`` and ``handlers`` are the distributor's (see :class:`Distributor`).

        A ``sqlite:`` or ``redis://`` storage is written by the real reactor (its thread
        pool, its connection), not by the Clock: let the reactor run between ``run()``
        calls, and wait for ``distributor.when_listening()`` (the reload is done) before
        adding nodes.
        """
        self.clock = HeapClock()
        self.config = config if config is not None else Config()
        self.registry = registry
        self.distributor = Distributor(
            None, config=self.config, storage=storage, handlers=handlers, clock=self.clock
        )
        self.distributor.startService()
        self.nodes: dict[str, Node] = {}
        self._pumps: dict[str, iosim.IOPump] = {}
        self._frozen: dict[str, iosim.IOPump] = {}
        self.clients: dict[str, Client] = {}

    def add_node(
        self, name: str, *, slots: int = 10, storage: str | IJobStorage = "memory"
    ) -> Node:
        """Start a node and join it to the distributor (it says hello at the next ``run``)."""
        node = Node(
            name,
            [],
            storage=storage,
            registry=self.registry,
            slots=slots,
            config=self.config,
            clock=self.clock,
        )
        node.startService()
        self.nodes[name] = node
        self.connect(name)
        return node

    def connect(self, name: str) -> None:
        """Open a fresh connection from node ``name`` to the distributor."""
        node = self.nodes[name]
        endpoint = f"memory:{self.distributor.id}"
        link = node._links.setdefault(endpoint, _DistributorLink(endpoint, node))
        server = DistributorProtocol(self.distributor)
        client = NodeProtocol(node, link)
        pump = iosim.connect(
            server,
            iosim.makeFakeServer(server),
            client,
            iosim.makeFakeClient(client),
            greet=False,
            clock=self.clock,
        )
        self._pumps[name] = pump
        node._hello(link, client).addErrback(lambda failure: None)  # refusals are logged
        self.run()

    def add_client(self, name: str) -> Client:
        """A remote client of the distributor (as :func:`jobreactor.connect` makes), joined in
        memory; it says hello at once. Its ``enqueue`` works like the distributor's."""
        client = Client(
            f"memory:{self.distributor.id}", name=name, config=self.config, clock=self.clock
        )
        self.clients[name] = client
        self.connect_client(name)
        return client

    def connect_client(self, name: str) -> None:
        """Open a fresh connection from client ``name`` (after :meth:`disconnect`)."""
        client = self.clients[name]
        server = DistributorProtocol(self.distributor)
        protocol = ClientProtocol(client)
        self._pumps[name] = iosim.connect(
            server,
            iosim.makeFakeServer(server),
            protocol,
            iosim.makeFakeClient(protocol),
            greet=False,
            clock=self.clock,
        )
        client._hello(protocol).addErrback(lambda failure: None)
        self.run()

    def connect_raw(self, name: str, protocol: Any = None) -> iosim.IOPump:
        """Open a connection to the distributor from ``protocol`` (a bare
        :class:`~jobreactor.protocol.JobReactorAMP` by default) that says nothing by itself:
        for tests that send hand-made boxes or bytes. The pump is kept under ``name``."""
        server = DistributorProtocol(self.distributor)
        peer = protocol if protocol is not None else JobReactorAMP()
        pump: iosim.IOPump = iosim.connect(
            server,
            iosim.makeFakeServer(server),
            peer,
            iosim.makeFakeClient(peer),
            greet=False,
            clock=self.clock,
        )
        self._pumps[name] = pump
        return pump

    def disconnect(self, name: str) -> None:
        """Drop node or client ``name``'s connection, as a network failure would."""
        pump = self._pumps.pop(name)
        if pump.client.transport is not None:
            pump.client.transport.loseConnection()
            pump.flush()

    def freeze(self, name: str) -> None:
        """Stop delivering node ``name``'s traffic both ways, as a stopped process would."""
        self._frozen[name] = self._pumps.pop(name)

    def thaw(self, name: str) -> None:
        """Deliver node ``name``'s traffic again (what piled up goes first).

        If the distributor dropped the connection meanwhile, the node learns it now; call
        :meth:`connect` for it to come back, as its reconnecting service would.
        """
        pump = self._frozen.pop(name)
        if pump.serverIO.disconnected:
            pump.clientIO.disconnected = True
            pump.clientIO.reportDisconnect()
        else:
            self._pumps[name] = pump
        self.run()

    def _drop_from_frozen(self) -> None:
        """A distributor that aborts a frozen node's connection sees it closed at once."""
        for pump in self._frozen.values():
            if pump.serverIO.disconnecting and not pump.serverIO.disconnected:
                pump.serverIO.disconnected = True
                pump.serverIO.reportDisconnect()

    def stop_node(self, name: str) -> None:
        """Stop node ``name`` and drop its connection, as a crash without storage would."""
        if name in self._pumps:
            self.disconnect(name)
        self.nodes.pop(name).stopService()

    def run(self) -> None:
        """Deliver every message and run every timer due now, until nothing moves."""
        for _ in range(MAX_ROUNDS):
            moved = any([pump.pump() for pump in list(self._pumps.values())])
            self._drop_from_frozen()
            next_call = self.clock.next_call_time()
            due = next_call is not None and next_call <= self.clock.seconds()
            if due:
                self.clock.advance(0)
            if not moved and not due:
                return
        raise RuntimeError(f"LocalCluster.run: still busy after {MAX_ROUNDS} rounds")

    def advance(self, seconds: float, step: float | None = None) -> None:
        """Move time forward by ``seconds``, stopping at each timer on the way."""
        end = self.clock.seconds() + seconds
        self.run()
        while True:
            next_call = self.clock.next_call_time()
            target = next_call if next_call is not None and next_call <= end else end
            if step is not None:
                target = min(target, self.clock.seconds() + step)
            self.clock.advance(max(0.0, target - self.clock.seconds()))
            self.run()
            if self.clock.seconds() >= end:
                return

    def stop(self) -> Any:
        """Stop every node and the distributor."""
        for name in list(self.nodes):
            self.stop_node(name)
        for name in list(self.clients):
            if name in self._pumps:
                self.disconnect(name)
        return self.distributor.stopService()
