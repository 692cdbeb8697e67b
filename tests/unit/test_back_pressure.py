"""Back-pressure and caps (issue 12, cases 3, 5 and 9): a sender that floods the distributor
is held back without losing a job, outcomes for an absent peer are capped, and connections
are capped overall, per address and when idle."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import pytest
from twisted.internet.address import IPv4Address
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.test import iosim

from jobreactor import Config, JobRegistry, QueueFullError, job
from jobreactor.definitions import registering_into
from jobreactor.distributor import DistributorProtocol
from jobreactor.model import Report, Status
from jobreactor.protocol import PROTOCOL_VERSION, Enqueue, Hello, JobReactorAMP
from jobreactor.testing import LocalCluster

CAPS: dict[str, Any] = {
    "max_attempt": 1,
    "max_waiting_jobs": 50,
    "max_waiting_jobs_per_sender": 20,
    "max_outcomes_kept": 5,
    "idle_timeout": 60.0,
}


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []
    observer = cast(ILogObserver, seen.append)
    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)


def new_cluster(**settings: Any) -> LocalCluster:
    registry = JobRegistry()
    with registering_into(registry):

        @job("double")
        def double(args: dict[str, Any]) -> dict[str, Any]:
            return {"result": args["x"] * 2}

    return LocalCluster(registry, config=Config(**{**CAPS, **settings}))


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    cluster = new_cluster()
    yield cluster
    cluster.stop()


def test_3_a_flood_with_no_node_is_held_by_its_sender_and_nothing_is_lost(
    cluster: LocalCluster, events: list[dict[str, Any]]
) -> None:
    client = cluster.add_client("flood")
    results: list[dict[str, Any]] = []
    for x in range(20):
        client.enqueue("double", {"x": x}, success=results.append)
    cluster.run()
    assert cluster.distributor.pending == 20  # the sender's cap, not more
    # The client itself holds at most its cap too: past it, enqueue says so at once.
    with pytest.raises(QueueFullError, match="max_waiting_jobs_per_sender"):
        client.enqueue("double", {"x": 99})
    # The distributor stopped reading from the sender instead of buffering.
    server = next(
        link.protocol for name, link in cluster.distributor._links.items() if name == "flood"
    )
    assert not server._reading_paused  # 20 fit exactly: nothing refused yet
    cluster.add_node("worker", slots=5)
    cluster.advance(3)
    assert sorted(r["result"] for r in results) == [2 * x for x in range(20)]


def test_3_queue_full_is_answered_and_the_client_offers_the_jobs_again(
    cluster: LocalCluster, events: list[dict[str, Any]]
) -> None:
    first = cluster.add_client("first")
    second = cluster.add_client("second")
    cluster.config.max_waiting_jobs_per_sender = 1000  # only the overall cap of 50 binds
    first.submitter.max_held = second.submitter.max_held = 1000
    results: list[dict[str, Any]] = []
    for x in range(40):
        first.enqueue("double", {"x": x}, success=results.append)
    cluster.run()
    for x in range(40, 80):
        second.enqueue("double", {"x": x}, success=results.append)
    cluster.run()
    assert cluster.distributor.pending == 50
    assert second.submitter.pending == 40  # 10 taken, 30 held in the client
    paused = cluster.distributor._links["second"].protocol
    assert paused._reading_paused
    assert any("queue full" in formatEvent(e) for e in events)
    # Paused for a while: the heartbeat does not take that for a silent peer.
    cluster.advance(20)
    assert "second" in cluster.distributor._links
    # A node arrives: the queue drains, the paused sender is read again, nothing is lost.
    cluster.add_node("worker", slots=10)
    cluster.advance(30)
    assert sorted(r["result"] for r in results) == [2 * x for x in range(80)]
    assert not paused._reading_paused


def test_3_enqueueing_from_another_peer_answers_queue_full_as_a_declared_error(
    cluster: LocalCluster,
) -> None:
    cluster.config.max_waiting_jobs_per_sender = 2
    peer = JobReactorAMP()
    cluster.connect_raw("raw", peer)
    answers: list[Any] = []
    peer.callRemote(
        Hello, name="raw", slots=0, version=PROTOCOL_VERSION, held=[], credentials=None
    ).addBoth(answers.append)
    jobs = [{"id": f"j{x}", "name": "double", "args": {"x": x}} for x in range(3)]
    peer.callRemote(Enqueue, jobs=jobs).addBoth(answers.append)
    peer.callRemote(Enqueue, jobs=[{"id": "more", "name": "double", "args": {}}]).addBoth(
        answers.append
    )
    cluster.run()
    assert answers[1]["accepted"] == ["j0", "j1"]
    assert answers[1]["rejected"][0]["queue_full"] is True
    assert answers[2].value.__class__.__name__ == "QueueFull"
    assert "max_waiting_jobs_per_sender" in answers[2].getErrorMessage()


def test_5_outcomes_for_an_absent_peer_are_capped(
    cluster: LocalCluster, events: list[dict[str, Any]]
) -> None:
    client = cluster.add_client("gone")
    handles = [client.enqueue("double", {"x": x}) for x in range(12)]
    cluster.run()
    cluster.disconnect("gone")
    owned = cluster.distributor._owned
    for handle in handles:  # e.g. a fast periodic job's runs, its sender gone for good
        report = Report(handle.id, 1, Status.COMPLETE, "success", True, {"x": 1})
        cluster.distributor._finish_with_report(owned[handle.id], report)
    assert len(cluster.distributor._outboxes["gone"].reports) == 5
    warned = [formatEvent(e) for e in events if "max_outcomes_kept" in formatEvent(e)]
    assert len(warned) == 1


def connect_from(cluster: LocalCluster, host: str) -> iosim.IOPump:
    """A connection to the distributor from ``host``, as if over TCP."""
    server = DistributorProtocol(cluster.distributor)
    peer = JobReactorAMP()
    address = IPv4Address("TCP", host, 40000)
    server_io = iosim.FakeTransport(server, isServer=True, peerAddress=address)
    client_io = iosim.FakeTransport(peer, isServer=False)
    pump: iosim.IOPump = iosim.connect(
        server, server_io, peer, client_io, greet=False, clock=cluster.clock
    )
    return pump


def test_9_connections_are_capped_per_address_and_overall(
    events: list[dict[str, Any]],
) -> None:
    cluster = new_cluster(max_connections=6, max_connections_per_address=3)
    try:
        pumps = [connect_from(cluster, "10.0.0.1") for _ in range(4)]
        assert [p.serverIO.disconnecting for p in pumps] == [False, False, False, True]
        others = [connect_from(cluster, f"10.0.1.{i}") for i in range(4)]
        assert [p.serverIO.disconnecting for p in others] == [False, False, False, True]
        refusals = [formatEvent(e) for e in events if "refusing a connection" in formatEvent(e)]
        assert len(refusals) == 2
        assert "max_connections_per_address" in refusals[0]
        assert "max_connections)" in refusals[1]
        # A closed connection makes room again.
        pumps[0].client.transport.loseConnection()
        pumps[0].flush()
        assert not connect_from(cluster, "10.0.0.1").serverIO.disconnecting
    finally:
        cluster.stop()


def test_9_an_idle_client_connection_is_closed_a_node_s_is_not(
    cluster: LocalCluster,
) -> None:
    cluster.add_node("worker")
    client = cluster.add_client("quiet")
    cluster.advance(30)
    assert "quiet" in cluster.distributor._links  # heartbeats alone keep nothing open...
    results: list[Any] = []
    client.enqueue("double", {"x": 1}, success=results.append)
    cluster.advance(50)
    assert "quiet" in cluster.distributor._links  # ...but a command resets the clock
    cluster.advance(70)
    assert "quiet" not in cluster.distributor._links  # idle 60 s: closed
    assert "worker" in cluster.distributor._links  # nodes wait for jobs: never idle
    assert results == [{"x": 1, "result": 2}]


def test_5_outcomes_kept_for_all_absent_peers_are_capped_in_bytes(
    events: list[dict[str, Any]],
) -> None:
    cluster = new_cluster(max_outcome_bytes_kept=1024 * 1024, max_args_bytes=512 * 1024)
    try:
        handles: dict[str, list[Any]] = {}
        for name in ("left-first", "left-later"):
            client = cluster.add_client(name)
            handles[name] = [client.enqueue("double", {"x": x}) for x in range(3)]
            cluster.run()
            cluster.disconnect(name)
        owned = cluster.distributor._owned
        big = {"blob": "b" * 300_000}
        for name in ("left-first", "left-later"):
            for handle in handles[name]:
                report = Report(handle.id, 1, Status.COMPLETE, "success", True, big)
                cluster.distributor._finish_with_report(owned[handle.id], report)
        # 6 outcomes of 300 KB: above 1 MiB; the mailbox of the peer away longest goes.
        assert "left-first" not in cluster.distributor._outboxes
        assert len(cluster.distributor._outboxes["left-later"].reports) == 3
        assert cluster.distributor._admission.kept_outcome_bytes <= 1024 * 1024
        warned = [formatEvent(e) for e in events if "max_outcome_bytes_kept" in formatEvent(e)]
        assert len(warned) == 1 and "left-first" in warned[0]
        # A peer that comes back collects what was kept, and no longer counts.
        cluster.connect_client("left-later")
        assert cluster.distributor._admission.kept_outcome_bytes == 0
    finally:
        cluster.stop()
