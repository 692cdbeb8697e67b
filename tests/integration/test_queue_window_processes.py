"""The queue beyond a node's slots, with real node processes over TCP."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import defer

from jobreactor import Distributor

from .conftest import NodeProcesses, bounded, port_of
from .test_faults import until


@pytest_twisted.ensureDeferred
async def test_jobs_queued_on_a_busy_node_run_on_a_node_that_comes_with_an_idle_slot(
    nodes: NodeProcesses, distributor: Distributor
) -> None:
    busy = nodes.start("busy", port_of(distributor), slots=1)
    await bounded(distributor.when_nodes(names=["busy"]))
    # As if it had run short jobs: a queue of up to 4 beyond its one slot.
    distributor._links["busy"].measure(duration=0.001, round_trip=0.01)
    blocker = distributor.enqueue("sleepy", {"seconds": 60})
    queued = [distributor.enqueue("sleepy", {"seconds": 0.5, "n": n}) for n in range(2)]
    await until(lambda: distributor.nodes()[0].holding == 3)  # all three went to "busy"
    assert distributor.waiting == 0
    nodes.start("idle", port_of(distributor), slots=1)
    results = await bounded(defer.gatherResults([h.deferred for h in queued]), 20)
    # Both ran on the node that came later, one after the other, long before the minute.
    assert {result["pid"] for result in results} != {busy.pid}
    assert len({result["pid"] for result in results}) == 1
    assert not blocker.done
