"""Back-pressure over real TCP (issue 12, case 3): a client that enqueues faster than any node
takes is held back by the distributor, which stops reading from it instead of buffering; the
client keeps the refused jobs, its connection stays up through the pause, and every job runs
once a node arrives."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

from jobreactor import Config, Distributor, JobRegistry, Node, connect, job
from jobreactor.definitions import registering_into

from .conftest import bounded, port_of


@pytest_twisted.ensureDeferred
async def test_a_flood_without_a_node_is_held_back_and_then_runs_in_full() -> None:
    config = Config(
        max_waiting_jobs=30,
        max_waiting_jobs_per_sender=1000,
        heartbeat_interval=0.3,
        heartbeat_timeout=1.5,
    )
    distributor = Distributor("tcp:0:interface=127.0.0.1", config=config, reactor=reactor)
    distributor.startService()
    client = None
    node = None
    try:
        await bounded(distributor.when_listening())
        client = connect(f"tcp:host=127.0.0.1:port={port_of(distributor)}", config=config)
        await bounded(client.when_connected())
        fired: Counter[int] = Counter()
        handles = [
            client.enqueue("count", {"n": n}, success=lambda a: fired.update([a["n"]]))
            for n in range(100)
        ]
        await deferLater(reactor, 0.5, lambda: None)
        assert distributor.pending == 30  # its cap: the other 70 wait in the client
        assert client.pending == 100
        server = distributor._links[client.client_name].protocol
        assert server._reading_paused
        # Paused for several heartbeat timeouts: neither side takes the other for dead.
        await deferLater(reactor, 4.0, lambda: None)
        assert client.connected and distributor._links[client.client_name].protocol is server

        registry = JobRegistry()
        with registering_into(registry):

            @job("count")
            def count(args: dict[str, Any]) -> dict[str, Any]:
                return {"n": args["n"]}

        node = Node(
            "worker",
            [f"tcp:host=127.0.0.1:port={port_of(distributor)}"],
            registry=registry,
            slots=10,
            config=config,
        )
        node.startService()
        await bounded(defer.gatherResults([h.deferred for h in handles]), 60)
        assert fired == Counter(range(100))  # every job once: none lost, none twice
        assert distributor._links[client.client_name].protocol is server
        assert not server._reading_paused
    finally:
        if node is not None:
            await node.stopService()
        if client is not None:
            await client.stopService()
        await distributor.stopService()
