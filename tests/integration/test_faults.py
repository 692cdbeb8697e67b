"""Faults with real processes: a stopped (SIGSTOP) node, a graceful SIGTERM, a SIGKILL."""

from __future__ import annotations

import signal
from collections import Counter
from typing import Any

import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from jobreactor import Config, Distributor

from .conftest import NodeProcesses, bounded, port_of


def fast_fault_distributor() -> Distributor:
    config = Config(heartbeat_interval=0.3, heartbeat_timeout=1.5, node_grace_period=1.0)
    distributor = Distributor("tcp:0:interface=127.0.0.1", config=config, reactor=reactor)
    distributor.startService()
    return distributor


async def until(predicate: Any, seconds: float = 30) -> None:
    """Wait for something only a real process can make true, checking every 0.1 s."""
    for _ in range(int(seconds * 10)):
        if predicate():
            return
        await deferLater(reactor, 0.1, lambda: None)
    raise AssertionError(f"not true within {seconds} s: {predicate}")


@pytest_twisted.ensureDeferred
async def test_stopped_node_is_noticed_by_heartbeat_and_feedback_fires_once(
    nodes: NodeProcesses,
) -> None:
    distributor = fast_fault_distributor()
    try:
        await bounded(distributor.when_listening())
        frozen = nodes.start("frozen", port_of(distributor))
        await bounded(distributor.when_nodes(names=["frozen"]))
        fired: Counter[str] = Counter()
        handles = [
            distributor.enqueue(
                "sleepy", {"seconds": 1.0, "n": n}, success=lambda a: fired.update([a["n"]])
            )
            for n in range(4)
        ]
        await until(lambda: distributor.nodes()[0].holding == 4)
        frozen.send_signal(signal.SIGSTOP)
        nodes.start("awake", port_of(distributor))
        await until(lambda: [n.name for n in distributor.nodes()] == ["awake"], 10)
        results = await bounded(defer.gatherResults([h.deferred for h in handles]))
        awake_pid = results[0]["pid"]
        assert {result["pid"] for result in results} == {awake_pid}
        frozen.send_signal(signal.SIGCONT)
        await deferLater(reactor, 3, lambda: None)  # let the woken node report what it had
        assert fired == Counter({0: 1, 1: 1, 2: 1, 3: 1}), "each feedback fired exactly once"
    finally:
        await distributor.stopService()


@pytest_twisted.ensureDeferred
async def test_sigterm_finishes_running_jobs_and_hands_back_the_rest(
    distributor: Distributor, nodes: NodeProcesses
) -> None:
    leaving = nodes.start("leaving", port_of(distributor), slots=3)
    await bounded(distributor.when_nodes(names=["leaving"]))
    running = [distributor.enqueue("blocking", {"seconds": 1.5}, defer=True) for _ in range(3)]
    later = [distributor.enqueue("stamp", {}, after=2) for _ in range(2)]
    await until(lambda: distributor.nodes()[0].holding == 5)
    await deferLater(reactor, 0.3, lambda: None)  # the blocking jobs have started
    leaving.send_signal(signal.SIGTERM)
    nodes.start("staying", port_of(distributor))
    exit_code = await bounded(deferToThread(leaving.wait, 20))
    assert exit_code == 0
    finished = await bounded(defer.gatherResults([h.deferred for h in running]))
    assert {result["pid"] for result in finished} == {leaving.pid}, "finished where they ran"
    handed_back = await bounded(defer.gatherResults([h.deferred for h in later]))
    assert all(result["thread"] == "MainThread" for result in handed_back)
    assert [info.name for info in distributor.nodes()] == ["staying"]
    assert "stopped" in nodes.log("leaving")


class _Proxy:
    """A TCP forwarder the test controls: it can cut every connection through it."""

    def __init__(self, target_port: int) -> None:
        from twisted.protocols import portforward

        proxy = self
        self.connections: list[Any] = []

        class Server(portforward.ProxyServer):
            def connectionMade(self) -> None:
                proxy.connections.append(self)
                super().connectionMade()

        self.factory = portforward.ProxyFactory("127.0.0.1", target_port)
        self.factory.protocol = Server
        self.port: Any = None

    async def start(self) -> int:
        from twisted.internet.endpoints import TCP4ServerEndpoint

        self.port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(self.factory)
        number: int = self.port.getHost().port
        return number

    def cut(self) -> None:
        for connection in self.connections:
            if connection.transport is not None:
                connection.transport.abortConnection()
        self.connections.clear()


@pytest_twisted.ensureDeferred
async def test_broken_link_keeps_outcomes_until_the_node_is_back(
    distributor: Distributor, nodes: NodeProcesses
) -> None:
    proxy = _Proxy(port_of(distributor))
    proxy_port = await proxy.start()
    try:
        nodes.start("worker_1", proxy_port)
        await bounded(distributor.when_nodes(names=["worker_1"]))
        fired: Counter[int] = Counter()
        handles = [
            distributor.enqueue(
                "sleepy", {"seconds": 0.8, "n": n}, success=lambda a: fired.update([a["n"]])
            )
            for n in range(5)
        ]
        await until(lambda: distributor.nodes()[0].holding == 5)
        proxy.cut()
        await until(lambda: not distributor.nodes(), 5)
        results = await bounded(defer.gatherResults([h.deferred for h in handles]))
        assert len({result["pid"] for result in results}) == 1, "nothing was re-routed"
        await deferLater(reactor, 0.5, lambda: None)
        assert fired == Counter(range(5)), "each feedback exactly once"
        assert "joined distributor" in nodes.log("worker_1")
    finally:
        await proxy.port.stopListening()
        proxy.cut()


@pytest_twisted.ensureDeferred
async def test_sigterm_is_bounded_even_with_a_thread_job_that_does_not_end(
    distributor: Distributor, nodes: NodeProcesses
) -> None:
    node = nodes.start("stuck", port_of(distributor), "--setting", "shutdown_grace_period=1")
    await bounded(distributor.when_nodes(names=["stuck"]))
    distributor.enqueue("blocking", {"seconds": 60}, defer=True)
    await until(lambda: distributor.nodes()[0].holding == 1)
    await deferLater(reactor, 0.3, lambda: None)
    node.send_signal(signal.SIGTERM)
    assert await bounded(deferToThread(node.wait, 20)) == 0, "exits although the thread runs on"
