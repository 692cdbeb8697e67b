"""A distributor with authentication, over ``iosim`` pairs (no sockets, a ``Clock``): the
login exchange, what may come before it, roles, names and who may cancel what."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test.iosim import IOPump, connectedServerAndClient

from jobreactor import Distributor
from jobreactor.credentials import authority_from_string
from jobreactor.distributor import DistributorProtocol
from jobreactor.login import say_hello
from jobreactor.model import Job, Report, Status
from jobreactor.protocol import (
    PROTOCOL_VERSION,
    CancelJobs,
    Challenge,
    Enqueue,
    GetOutcome,
    Heartbeat,
    Hello,
    JobReactorAMP,
    JobsDone,
    Outcomes,
    RetryJobs,
    RunJobs,
    Unauthorized,
)

USERS = """\
alice:s3cret
web:webpw:client
worker:workerpw:node:worker_*
ops:opspw:client,admin:ops
other:otherpw:client:alice
"""


class Wire(JobReactorAMP):
    """A peer that keeps every byte it sent, to show what crossed the wire."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = b""

    def makeConnection(self, transport: Any) -> None:
        original = transport.write

        def write(data: bytes) -> None:
            self.sent += data
            original(data)

        transport.write = write
        super().makeConnection(transport)


class NodeWire(Wire):
    """A node that takes every job it is sent."""

    def __init__(self) -> None:
        super().__init__()
        self.jobs: list[str] = []
        self.outcomes: list[dict[str, Any]] = []

    @RunJobs.responder
    def run_jobs(self, jobs: Any) -> dict[str, Any]:
        self.jobs += [item["id"] for item in jobs]
        return {"accepted": [item["id"] for item in jobs], "parked": [], "rejected": []}

    @Outcomes.responder
    def take_outcomes(self, reports: Any) -> dict[str, Any]:
        self.outcomes += reports
        return {}


@pytest.fixture
def distributor(tmp_path: Path) -> Distributor:
    path = tmp_path / "users"
    path.write_text(USERS)
    clock = Clock()
    distributor = Distributor(
        None, portal=authority_from_string(f"file:{path}"), reactor=clock, clock=clock
    )
    distributor.startService()
    return distributor


def connect(distributor: Distributor) -> tuple[NodeWire, DistributorProtocol, IOPump]:
    client, server, pump = connectedServerAndClient(
        lambda: DistributorProtocol(distributor), NodeWire
    )
    return client, server, pump


def outcome(deferred: Deferred[Any], pump: IOPump) -> Any:
    results: list[Any] = []
    deferred.addBoth(results.append)
    pump.flush()
    assert results, "no answer arrived"
    return results[0]


def hello(
    client: Wire,
    pump: IOPump,
    name: str,
    credentials: tuple[str, str] | None,
    slots: int = 0,
) -> Any:
    said = say_hello(
        client, name=name, slots=slots, held=[], credentials=credentials, endpoint="test"
    )
    return outcome(said, pump)


def refusal(answer: Any) -> str:
    assert isinstance(answer, Failure), answer
    return answer.getErrorMessage()


def job(job_id: str) -> dict[str, Any]:
    return Job(id=job_id, name="my_job", args={}).to_wire()


def test_right_password_is_welcomed_and_never_crosses_the_wire(
    distributor: Distributor,
) -> None:
    client, server, pump = connect(distributor)
    answer = hello(client, pump, "alice", ("alice", "s3cret"))
    assert not isinstance(answer, Failure), answer
    assert answer["server_signature"], "the distributor proved it holds alice's keys"
    assert server.session.user == "alice"
    assert b"s3cret" not in client.sent and b"alice" in client.sent
    accepted = outcome(client.callRemote(Enqueue, jobs=[job("j1")]), pump)
    assert accepted["accepted"] == ["j1"]


@pytest.mark.parametrize(
    ("name", "credentials", "slots", "message"),
    [
        ("alice", ("alice", "wrong"), 0, "wrong user name or password"),
        ("mallory", ("mallory", "s3cret"), 0, "wrong user name or password"),
        ("alice", None, 0, "asks for credentials"),
        ("web", ("web", "webpw"), 5, "may not connect as a node"),
        ("worker_1", ("worker", "workerpw"), 0, "may not connect as a client"),
        ("bob", ("alice", "s3cret"), 0, "may not use the name 'bob'"),
        ("worker_1", ("alice", "s3cret"), 3, "may not use the name 'worker_1'"),
    ],
)
def test_hello_is_refused(
    distributor: Distributor,
    name: str,
    credentials: tuple[str, str] | None,
    slots: int,
    message: str,
) -> None:
    client, server, pump = connect(distributor)
    answer = hello(client, pump, name, credentials, slots)
    assert message in refusal(answer)
    assert answer.check(Unauthorized)
    assert server.link is None and distributor.nodes() == []


def test_a_pattern_allows_many_node_names(distributor: Distributor) -> None:
    for name in ("worker_1", "worker_2"):
        client, _, pump = connect(distributor)
        assert not isinstance(hello(client, pump, name, ("worker", "workerpw"), 2), Failure)
    assert sorted(node.name for node in distributor.nodes()) == ["worker_1", "worker_2"]


def test_an_old_peer_is_told_the_version_first(distributor: Distributor) -> None:
    client, _, pump = connect(distributor)
    answer = outcome(
        client.callRemote(Hello, name="old", slots=1, version=1, held=[], credentials=None),
        pump,
    )
    assert f"speaks protocol version {PROTOCOL_VERSION}, not 1" in refusal(answer)


def test_nothing_but_the_login_is_answered_before_hello(distributor: Distributor) -> None:
    client, _server, pump = connect(distributor)
    calls: list[tuple[type[amp.Command], dict[str, Any]]] = [
        (Enqueue, {"jobs": [job("j1")]}),
        (CancelJobs, {"job_ids": ["j1"]}),
        (Heartbeat, {}),
    ]
    for command, arguments in calls:
        answer = outcome(client.callRemote(command, **arguments), pump)
        assert "send Hello before" in refusal(answer)
    assert distributor.pending == 0


def test_amp_start_tls_is_refused(distributor: Distributor) -> None:
    client, server, pump = connect(distributor)
    assert not isinstance(hello(client, pump, "alice", ("alice", "s3cret")), Failure)
    answer = outcome(client.callRemote(amp.StartTLS), pump)
    assert answer.check(amp.UnhandledCommand)
    assert server.transport is not None
    assert not server.transport.disconnecting  # type: ignore[attr-defined]
    assert server.link is not None, "the connection carries on"


def test_a_cancel_counts_only_from_the_enqueuer_or_an_admin(distributor: Distributor) -> None:
    alice, _, alice_pump = connect(distributor)
    hello(alice, alice_pump, "alice", ("alice", "s3cret"))
    outcome(alice.callRemote(Enqueue, jobs=[job("j1"), job("j2")]), alice_pump)
    web, _, web_pump = connect(distributor)
    hello(web, web_pump, "web", ("web", "webpw"))
    answer = outcome(web.callRemote(CancelJobs, job_ids=["j1"]), web_pump)
    assert answer["cancelled"] == [] and distributor.pending == 2
    ops, _, ops_pump = connect(distributor)
    hello(ops, ops_pump, "ops", ("ops", "opspw"))
    assert outcome(ops.callRemote(CancelJobs, job_ids=["j1"]), ops_pump)["cancelled"] == ["j1"]
    assert outcome(alice.callRemote(CancelJobs, job_ids=["j2"]), alice_pump)["cancelled"] == ["j2"]


def test_a_node_only_user_may_not_enqueue(distributor: Distributor) -> None:
    client, _, pump = connect(distributor)
    hello(client, pump, "worker_1", ("worker", "workerpw"), 1)
    answer = outcome(client.callRemote(Enqueue, jobs=[job("j1")]), pump)
    assert "may not enqueue" in refusal(answer)


def test_credentials_for_a_distributor_without_auth_still_connect() -> None:
    clock = Clock()
    distributor = Distributor(None, reactor=clock, clock=clock)
    distributor.startService()
    client, _, pump = connect(distributor)
    answer = hello(client, pump, "alice", ("alice", "s3cret"))
    assert not isinstance(answer, Failure), answer
    assert b"s3cret" not in client.sent


def test_a_proof_replayed_on_another_connection_is_refused(distributor: Distributor) -> None:
    first, _, first_pump = connect(distributor)
    hello(first, first_pump, "alice", ("alice", "s3cret"))
    proof = next(value for key, value in _boxes(first.sent) if key == b"credentials")
    second, _, pump = connect(distributor)
    outcome(second.callRemote(Challenge, user="alice"), pump)
    answer = outcome(
        second.callRemote(
            Hello,
            name="alice",
            slots=0,
            version=PROTOCOL_VERSION,
            held=[],
            credentials=json.loads(proof),
        ),
        pump,
    )
    assert "wrong user name or password" in refusal(answer)


def _boxes(data: bytes) -> list[tuple[bytes, bytes]]:
    """Every key/value pair in a stream of AMP boxes."""
    pairs = []
    while data:
        size = int.from_bytes(data[:2], "big")
        key, data = data[2 : 2 + size], data[2 + size :]
        if not key:
            continue
        size = int.from_bytes(data[:2], "big")
        value, data = data[2 : 2 + size], data[2 + size :]
        pairs.append((key, value))
    return pairs


def done(job_id: str) -> dict[str, Any]:
    return Report(job_id, 1, Status.COMPLETE, "success", True, {"forged": True}).to_wire()


def test_reports_and_held_count_only_for_jobs_sent_to_that_node(
    distributor: Distributor,
) -> None:
    fired: list[Any] = []
    handle = distributor.enqueue(
        "my_job", {}, success=fired.append, not_node=["worker_2", "worker_3"]
    )
    intruder, _, intruder_pump = connect(distributor)
    hello(intruder, intruder_pump, "worker_2", ("worker", "workerpw"), 5)
    distributor._clock.advance(0)  # type: ignore[attr-defined]
    intruder_pump.flush()
    assert intruder.jobs == [], "the job waits for another node"
    outcome(intruder.callRemote(JobsDone, reports=[done(handle.id)]), intruder_pump)
    assert fired == [] and distributor.pending == 1, "a forged report changes nothing"
    # held: a job waiting in the queue cannot be claimed by naming it
    claimer, _, claimer_pump = connect(distributor)
    said = say_hello(
        claimer, name="worker_3", slots=5, held=[handle.id], credentials=("worker", "workerpw"),
        endpoint="test",
    )  # fmt: skip
    assert outcome(said, claimer_pump)["drop"] == [handle.id]
    node, _, pump = connect(distributor)
    hello(node, pump, "worker_1", ("worker", "workerpw"), 5)
    distributor._clock.advance(0)  # type: ignore[attr-defined]
    pump.flush()
    assert node.jobs == [handle.id], "the rightful node still gets it"
    outcome(node.callRemote(JobsDone, reports=[done(handle.id)]), pump)
    assert fired == [{"forged": True}] and distributor.pending == 0


def test_kept_outcomes_go_only_to_the_same_user(distributor: Distributor) -> None:
    alice, server, alice_pump = connect(distributor)
    hello(alice, alice_pump, "alice", ("alice", "s3cret"))
    outcome(alice.callRemote(Enqueue, jobs=[job("j1")]), alice_pump)
    server.transport.loseConnection()  # type: ignore[union-attr]
    alice_pump.flush()
    node, _, pump = connect(distributor)
    hello(node, pump, "worker_1", ("worker", "workerpw"), 5)
    distributor._clock.advance(0)  # type: ignore[attr-defined]
    pump.flush()
    outcome(node.callRemote(JobsDone, reports=[done("j1")]), pump)
    other, _, other_pump = connect(distributor)
    assert not isinstance(hello(other, other_pump, "alice", ("other", "otherpw")), Failure)
    distributor._clock.advance(0)  # type: ignore[attr-defined]
    other_pump.flush()
    assert other.outcomes == [], "another user allowed the name gets none of alice's outcomes"
    other_pump.client.transport.loseConnection()  # type: ignore[attr-defined]
    other_pump.flush()
    back, _, back_pump = connect(distributor)
    hello(back, back_pump, "alice", ("alice", "s3cret"))
    distributor._clock.advance(0)  # type: ignore[attr-defined]
    back_pump.flush()
    assert [report["job_id"] for report in back.outcomes] == ["j1"]


class FakePort:
    def __init__(self, address: Any) -> None:
        self.address = address

    def getHost(self) -> Any:
        return self.address


@pytest.mark.parametrize(
    ("address", "warned"),
    [
        (IPv4Address("TCP", "0.0.0.0", 5000), True),
        (IPv4Address("TCP", "10.1.2.3", 5000), True),
        (IPv4Address("TCP", "127.0.0.1", 5000), False),
        (IPv6Address("TCP", "::1", 5000), False),
        (UNIXAddress(b"/run/jr.sock"), False),
    ],
)
def test_an_open_port_without_auth_is_warned_about(address: Any, warned: bool) -> None:
    clock = Clock()
    distributor = Distributor("tcp:5000", reactor=clock, clock=clock)
    with capturedLogs() as events:
        distributor._listened(FakePort(address))  # type: ignore[arg-type]
    warnings = [e for e in events if "without authentication" in e.get("log_format", "")]
    assert len(warnings) == (1 if warned else 0)


def test_an_open_port_with_auth_is_not_warned_about(distributor: Distributor) -> None:
    with capturedLogs() as events:
        distributor._listened(FakePort(IPv4Address("TCP", "0.0.0.0", 5000)))  # type: ignore[arg-type]
    assert not [e for e in events if "without authentication" in e.get("log_format", "")]


def test_a_refused_login_closes_the_connection(distributor: Distributor) -> None:
    client, server, pump = connect(distributor)
    assert isinstance(hello(client, pump, "alice", ("alice", "wrong")), Failure)
    distributor._clock.advance(0)  # type: ignore[attr-defined]
    pump.flush()
    assert server.lost, "one login attempt per connection"


def test_two_users_allowed_one_name_each_get_only_their_outcomes(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("alice:a:client:shared\nbob:b:client:shared\nworker:w:node:worker_*\n")
    clock = Clock()
    distributor = Distributor(
        None, portal=authority_from_string(f"file:{path}"), reactor=clock, clock=clock
    )
    distributor.startService()
    node, _, node_pump = connect(distributor)
    hello(node, node_pump, "worker_1", ("worker", "w"), 5)
    for user, password, job_id in [("alice", "a", "ja"), ("bob", "b", "jb")]:
        client, server, pump = connect(distributor)
        hello(client, pump, "shared", (user, password))
        outcome(client.callRemote(Enqueue, jobs=[job(job_id)]), pump)
        server.transport.loseConnection()  # type: ignore[union-attr]
        pump.flush()
    clock.advance(0)
    node_pump.flush()
    outcome(node.callRemote(JobsDone, reports=[done("ja"), done("jb")]), node_pump)
    for user, password, job_id in [("bob", "b", "jb"), ("alice", "a", "ja")]:
        client, server, pump = connect(distributor)
        hello(client, pump, "shared", (user, password))
        clock.advance(0)
        pump.flush()
        assert [report["job_id"] for report in client.outcomes] == [job_id], user
        server.transport.loseConnection()  # type: ignore[union-attr]
        pump.flush()


def test_stored_outcomes_are_read_and_retried_only_by_their_enqueuer_or_an_admin(
    distributor: Distributor,
) -> None:
    alice, _, alice_pump = connect(distributor)
    hello(alice, alice_pump, "alice", ("alice", "s3cret"))
    outcome(alice.callRemote(Enqueue, jobs=[job("j1")]), alice_pump)
    node, _, pump = connect(distributor)
    hello(node, pump, "worker_1", ("worker", "workerpw"), 5)
    distributor._clock.advance(0)  # type: ignore[attr-defined]
    pump.flush()
    outcome(node.callRemote(JobsDone, reports=[done("j1")]), pump)
    web, _, web_pump = connect(distributor)
    hello(web, web_pump, "web", ("web", "webpw"))
    answer = outcome(web.callRemote(GetOutcome, job_id="j1"), web_pump)
    assert "not enqueued by this peer" in refusal(answer)
    retried = outcome(web.callRemote(RetryJobs, job_ids=["j1"]), web_pump)
    assert retried["retried"] == [] and retried["rejected"][0]["id"] == "j1"
    mine = outcome(alice.callRemote(GetOutcome, job_id="j1"), alice_pump)
    assert mine["outcome"]["args"] == {"forged": True}
    ops, _, ops_pump = connect(distributor)
    hello(ops, ops_pump, "ops", ("ops", "opspw"))
    assert outcome(ops.callRemote(GetOutcome, job_id="j1"), ops_pump)["outcome"] is not None
