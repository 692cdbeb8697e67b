"""Workflows across real processes: twistd jr-node children over TCP, a remote client."""

from __future__ import annotations

import datetime
import time
import uuid
from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from jobreactor import Client, Config, Distributor, JobCancelled, JobFailed, connect
from jobreactor.model import Job

from .conftest import NodeProcesses, bounded, port_of


@pytest.fixture
def paced_distributor() -> Iterator[Distributor]:
    config = Config(node_grace_period=1.0, rate_limits={"stamp": "20/s"})
    distributor = Distributor("tcp:0:interface=127.0.0.1", config=config, reactor=reactor)
    distributor.startService()
    pytest_twisted.blockon(distributor.when_listening().addTimeout(5, reactor))
    yield distributor
    pytest_twisted.blockon(distributor.stopService())


async def started_client(distributor: Distributor) -> Client:
    client = connect(f"tcp:host=127.0.0.1:port={port_of(distributor)}", name="app")
    await bounded(client.when_connected())
    return client


@pytest_twisted.ensureDeferred
async def test_a_rate_limit_holds_across_two_node_processes(
    paced_distributor: Distributor, nodes: NodeProcesses
) -> None:
    nodes.start("worker_1", port_of(paced_distributor))
    nodes.start("worker_2", port_of(paced_distributor))
    await bounded(paced_distributor.when_nodes(names=["worker_1", "worker_2"]))
    began = time.time()
    handles = [paced_distributor.enqueue("stamp", {"n": n}) for n in range(30)]
    results = await bounded(defer.gatherResults([h.deferred for h in handles]))
    starts = sorted(result["at"] for result in results)
    # 30 starts at 20/s: 1.45 s from the first to the last, 20 in a second at most (one more
    # for the jitter of real sockets).
    assert starts[-1] - starts[0] >= 1.3
    assert all(sum(1 for t in starts if at <= t < at + 1) <= 21 for at in starts)
    assert starts[0] >= began - 0.01


@pytest_twisted.ensureDeferred
async def test_unique_jobs_and_dependencies_through_a_remote_client(
    distributor: Distributor, nodes: NodeProcesses
) -> None:
    nodes.start("worker_1", port_of(distributor))
    await bounded(distributor.when_nodes(names=["worker_1"]))
    client = await started_client(distributor)
    try:
        first = client.enqueue("sleepy", {"seconds": 0.5}, unique_key="nightly")
        await bounded(first.accepted)
        again = client.enqueue("sleepy", {"seconds": 0.5}, unique_key="nightly")
        await bounded(again.accepted)
        assert again.id == first.id
        after = client.enqueue("my_job", {}, depends_on=[first])
        result = await bounded(after.deferred)
        assert (await bounded(again.deferred))["pid"] == result["depends_on"][first.id]["pid"]
        broken = client.enqueue("failing", {"n": 1})
        never = client.enqueue("my_job", {}, depends_on=[broken])
        with pytest.raises(JobFailed) as caught:
            await bounded(never.deferred)
        assert caught.value.error_type == "DependencyFailed"
    finally:
        await client.stopService()


@pytest_twisted.ensureDeferred
async def test_a_node_process_schedules_the_next_cron_run_in_the_zone(
    distributor: Distributor, nodes: NodeProcesses
) -> None:
    nodes.start("worker_1", port_of(distributor))
    await bounded(distributor.when_nodes(names=["worker_1"]))
    runs: list[dict[str, Any]] = []
    ran: defer.Deferred[None] = defer.Deferred()

    def success(args: dict[str, Any]) -> None:
        runs.append(args)
        if not ran.called:
            ran.callback(None)

    # Due now (a schedule's first run would be at the next minute): the node runs it, then
    # computes the next time from the expression in the zone.
    job = Job(
        id=str(uuid.uuid4()),
        name="count_runs",
        args={},
        run_at=time.time(),
        cron="*/5 * * * *",
        timezone="Asia/Kolkata",  # +05:30: the next time is on the zone's five minutes
    )
    handle = distributor.submit(job, success=success)
    await bounded(ran)
    assert runs[0]["runs"] == 1
    entry = distributor._owned[handle.id]
    next_at = datetime.datetime.fromtimestamp(entry.job.run_at or 0, ZoneInfo("Asia/Kolkata"))
    assert next_at.minute % 5 == 0 and next_at.second == 0
    assert 0 < (entry.job.run_at or 0) - time.time() <= 300
    handle.cancel()  # the schedule ends
    with pytest.raises(JobCancelled):
        await bounded(handle.deferred)
