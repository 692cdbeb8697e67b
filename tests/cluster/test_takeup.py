"""A node's stored jobs and its storage lease, on a Clock: jobs are taken up only after the
distributor accepts the node's Hello, and two nodes never work one storage at once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import attrs
import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.test import iosim
from zope.interface import provider

from jobreactor import Config, Distributor, JobRegistry, Node, job
from jobreactor.definitions import registering_into
from jobreactor.distributor import DistributorProtocol
from jobreactor.model import Job, Status
from jobreactor.node import NodeProtocol
from jobreactor.storage import MemoryStorage
from jobreactor.testing import HeapClock

ENDPOINT = "tcp:host=127.0.0.1:port=7001"


class Harness:
    """A distributor and nodes on one Clock, joined in memory by hand (as LocalCluster does),
    with the nodes dialling a real endpoint string on a MemoryReactor that never connects."""

    def __init__(self) -> None:
        self.clock = HeapClock()
        self.config = Config(node_grace_period=10.0, max_attempt=1)
        self.runs: list[str] = []
        self.pending: list[Deferred[None]] = []
        self.registry = JobRegistry()
        with registering_into(self.registry):

            @job("work")
            def work(args: dict[str, Any]) -> dict[str, Any]:
                self.runs.append(args["label"])
                return {"ran": True}

            @job("breaks_later")
            def breaks_later(args: dict[str, Any]) -> Deferred[None]:
                self.pending.append(Deferred())
                return self.pending[-1]

        self.distributor = self.new_distributor()
        self.pumps: list[iosim.IOPump] = []
        self.nodes: list[Node] = []
        self.reactor = MemoryReactorClock()

    def new_distributor(self) -> Distributor:
        distributor = Distributor(None, config=self.config, clock=self.clock)
        distributor.startService()
        return distributor

    def node(self, name: str, storage: Any) -> Node:
        node = Node(
            name,
            [ENDPOINT],
            storage=storage,
            registry=self.registry,
            config=self.config,
            reactor=self.reactor,
            clock=self.clock,
        )
        node.startService()
        self.nodes.append(node)
        return node

    def hello(self, node: Node) -> Deferred[Any]:
        """Connect ``node`` to the current distributor and say Hello; the answer's Deferred."""
        link = node._links[ENDPOINT]
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
        self.pumps.append(pump)
        said = node._hello(link, client)
        said.addErrback(lambda failure: failure.value)  # a refusal is an answer too
        self.run()
        return said

    def drop_connections(self) -> None:
        for pump in self.pumps:
            if pump.client.transport is not None:
                pump.client.transport.loseConnection()
            pump.flush()
        self.pumps.clear()
        self.run()

    def run(self, seconds: float = 0.0) -> None:
        end = self.clock.seconds() + seconds
        while True:
            for _ in range(100):
                moved = any([pump.pump() for pump in self.pumps])
                self.clock.advance(0)
                if not moved:
                    break
            next_call = self.clock.next_call_time()
            if next_call is None or next_call > end:
                self.clock.advance(max(0.0, end - self.clock.seconds()))
                return
            self.clock.advance(max(0.0, next_call - self.clock.seconds()))


@pytest.fixture
def harness() -> Iterator[Harness]:
    harness = Harness()
    yield harness
    for node in harness.nodes:
        if node.running:
            node.stopService()
    harness.run(60)
    harness.distributor.stopService()


@pytest.fixture
def logged() -> Iterator[list[str]]:
    lines: list[str] = []

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def stored_job(harness: Harness, label: str, **options: Any) -> Job:
    """A job the distributor knows and waits to place, as a node would have stored it: sent
    to the node ``worker`` before (a node may keep through ``held`` only jobs sent to it)."""
    handle = harness.distributor.enqueue("work", {"label": label}, **options)
    harness.distributor._owned[handle.id].sent_to += ("worker",)
    waiting = harness.distributor._owned[handle.id].job
    return attrs.evolve(waiting, status=Status.QUEUED, distributor=ENDPOINT)


def stored(storage: MemoryStorage, node: str) -> list[Job]:
    jobs: list[Job] = storage.jobs_for(node).result  # type: ignore[assignment]  # already fired
    return jobs


def statuses(storage: MemoryStorage, node: str) -> dict[str, str]:
    jobs = stored(storage, node)
    return {job.id: job.status.value for job in jobs}


def test_stored_jobs_run_only_after_the_distributor_answers_hello(harness: Harness) -> None:
    storage = MemoryStorage()
    kept = stored_job(harness, "kept")
    storage.save("worker", kept)
    node = harness.node("worker", storage)
    harness.run(30)
    assert harness.runs == [], "nothing runs before the distributor accepted the node"

    harness.hello(node)
    harness.run(1)

    assert harness.runs == ["kept"]
    assert statuses(storage, "worker") == {}, "done and removed (remove_done_jobs)"


def test_a_refused_node_runs_nothing_from_its_storage(harness: Harness, logged: list[str]) -> None:
    harness.hello(harness.node("worker", MemoryStorage()))  # the real worker is connected
    storage = MemoryStorage()
    kept = stored_job(harness, "kept")
    storage.save("worker", kept)
    impostor = harness.node("worker", storage)

    harness.hello(impostor)
    harness.run(30)

    assert any("refused node worker" in line and "already connected" in line for line in logged)
    assert harness.runs == ["kept"], "run once, by the real worker the distributor gave it to"
    assert impostor.held == 0
    assert statuses(storage, "worker") == {kept.id: "queued"}, "left in storage as it was"


def test_jobs_the_distributor_does_not_know_are_dropped_not_run(
    harness: Harness, logged: list[str]
) -> None:
    storage = MemoryStorage()
    known = stored_job(harness, "known")
    unknown = attrs.evolve(known, id="not-known-anywhere")
    storage.save("worker", known)
    storage.save("worker", unknown)
    node = harness.node("worker", storage)

    harness.hello(node)
    harness.run(1)

    assert harness.runs == ["known"]
    assert unknown.id not in statuses(storage, "worker")
    assert any("does not know 1 jobs this node held" in line for line in logged)


def test_jobs_stored_for_a_distributor_no_longer_dialled_stay_and_do_not_run(
    harness: Harness, logged: list[str]
) -> None:
    storage = MemoryStorage()
    elsewhere = attrs.evolve(
        stored_job(harness, "old"), id="from-old", distributor="tcp:host=old:port=1"
    )
    storage.save("worker", elsewhere)
    node = harness.node("worker", storage)

    harness.hello(node)
    harness.run(30)

    assert harness.runs == ["old"], "only the copy the distributor itself placed ran"
    assert statuses(storage, "worker") == {elsewhere.id: "queued"}
    warnings = [line for line in logged if "no longer dials" in line]
    assert len(warnings) == 1 and "1 stored jobs" in warnings[0]
    assert "tcp:host=old:port=1: 1" in warnings[0]


def test_a_restarted_distributor_without_storage_drops_held_jobs_with_a_warning_but_keeps_records_of_finished_ones(  # noqa: E501
    harness: Harness, logged: list[str]
) -> None:
    storage = MemoryStorage()
    node = harness.node("worker", storage)
    harness.hello(node)
    later = harness.distributor.enqueue("work", {"label": "later"}, after=20)
    broken = harness.distributor.enqueue("breaks_later", {})
    harness.run()
    assert node.held == 2
    harness.drop_connections()
    harness.pending[0].errback(ValueError("broken"))  # fails for good while the link is down
    harness.run()
    link = node._links[ENDPOINT]
    assert [report.job_id for report in link.outbox] == [broken.id]
    assert statuses(storage, "worker")[broken.id] == "failed"

    harness.distributor = harness.new_distributor()  # restarted, without storage
    harness.hello(node)
    harness.run(30)

    assert harness.runs == [] and node.held == 0, "the dropped job does not run"
    assert link.outbox == []
    assert statuses(storage, "worker") == {broken.id: "failed"}, (
        "the failed job's record stays (remove_failed_jobs is off); the dropped one goes"
    )
    assert later.id not in statuses(storage, "worker")
    assert any(
        f"distributor {ENDPOINT} restarted without storage and does not know 1 held jobs; "
        "dropping them (give the distributor storage= to keep them)" in line
        for line in logged
    )
    assert any("does not know the jobs of 1 reports" in line for line in logged)


def test_a_second_node_on_the_same_storage_waits_for_the_lease_and_dials_nobody(
    harness: Harness, logged: list[str]
) -> None:
    storage = MemoryStorage()
    first = harness.node("worker", storage)
    harness.hello(first)
    dialled = len(harness.reactor.tcpClients)

    second = harness.node("worker", storage)
    harness.run(10)

    assert len(harness.reactor.tcpClients) == dialled, "the second node dials nobody"
    waiting = [line for line in logged if "in use by another process; waiting for it" in line]
    assert len(waiting) == 1, "said once, not every second"
    assert "storage of node worker" in waiting[0]

    first.stopService()
    harness.run(1.5)

    assert len(harness.reactor.tcpClients) == dialled + 1, "it takes the storage at once"
    assert second.when_started().called
    second.stopService()
    harness.run(1)


class ExpiringStorage(MemoryStorage):
    """A memory storage whose lease can be taken away, as a Redis lease that expired."""

    leases_expire: ClassVar[bool] = True
    renewals: ClassVar[list[float]] = []

    def renew_lease(self, node: str, owner: str, seconds: float) -> Deferred[bool]:
        ExpiringStorage.renewals.append(seconds)
        return succeed(self._leases.get(node) == owner)


def test_a_node_that_loses_its_lease_stops_and_leaves_its_jobs_stored(
    harness: Harness, logged: list[str]
) -> None:
    harness.config.storage_lease_seconds = 9.0
    storage = ExpiringStorage()
    node = harness.node("worker", storage)
    harness.hello(node)
    harness.distributor.enqueue("work", {"label": "later"}, after=60)
    harness.run(10)
    assert ExpiringStorage.renewals == [9.0, 9.0, 9.0], "renewed every third of the lease"
    assert node.held == 1

    storage._leases["worker"] = "someone else"
    harness.run(4)

    assert not node.running
    assert any("lost its storage lease to another process" in line for line in logged)
    assert len(stored(storage, "worker")) == 1, "left to the process that has it now"
    harness.run(60)
    assert harness.runs == []
