"""The distributor's side of a session, against a scripted peer (protocol.md §3, §4).

The peer is a bare :class:`JobReactorAMP` that answers ``RunJobs`` and ``Outcomes`` as each
test scripts it, joined to the real distributor by ``twisted.test.iosim`` under a
``task.Clock``: refusals that close the connection, the RunJobs answer read job by job, the
Enqueue reset, and outcomes kept through a peer's error answer.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test import iosim

from jobreactor import Config, Distributor
from jobreactor.distributor import DistributorProtocol
from jobreactor.protocol import (
    PROTOCOL_VERSION,
    Enqueue,
    Hello,
    JobReactorAMP,
    JobsDone,
    Leaving,
    Outcomes,
    RunJobs,
)


class ScriptedPeer(JobReactorAMP):
    """A node or client whose answers the test chooses."""

    def __init__(self) -> None:
        super().__init__()
        self.run_jobs: list[list[dict[str, Any]]] = []
        self.outcomes: list[list[dict[str, Any]]] = []
        self.answer_run_jobs: Callable[[list[dict[str, Any]]], dict[str, Any]] = lambda jobs: {
            "accepted": [job["id"] for job in jobs],
            "parked": [],
            "rejected": [],
        }
        self.refuse_outcomes = 0

    @RunJobs.responder
    def take(self, jobs: Any) -> dict[str, Any]:
        self.run_jobs.append(jobs)
        return self.answer_run_jobs(jobs)

    @Outcomes.responder
    def receive(self, reports: Any) -> dict[str, Any]:
        self.outcomes.append(reports)
        if self.refuse_outcomes:
            self.refuse_outcomes -= 1
            raise amp.RemoteAmpError(b"BAD_MESSAGE", "not now")
        return {}


class Session:
    def __init__(self, distributor: Distributor, clock: Clock) -> None:
        self.peer = ScriptedPeer()
        self.server = DistributorProtocol(distributor)
        self.clock = clock
        self.pump = iosim.connect(
            self.server,
            iosim.makeFakeServer(self.server),
            self.peer,
            iosim.makeFakeClient(self.peer),
            greet=False,
        )

    def call(self, command: type[amp.Command], **arguments: Any) -> Any:
        results: list[Any] = []
        self.peer.callRemote(command, **arguments).addBoth(results.append)
        self.settle()
        assert results, "no answer"
        return results[0]

    def hello(self, name: str, slots: int, version: int = PROTOCOL_VERSION) -> Any:
        return self.call(Hello, name=name, slots=slots, version=version, held=[], credentials=None)

    def settle(self, seconds: float = 0) -> None:
        self.pump.flush()
        self.clock.advance(seconds)
        self.pump.flush()
        self.clock.advance(0)
        self.pump.flush()

    @property
    def open(self) -> bool:
        return not self.pump.serverIO.disconnecting and not self.pump.serverIO.disconnected


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def distributor(clock: Clock) -> Iterator[Distributor]:
    distributor = Distributor(None, config=Config(), clock=clock)
    distributor.startService()
    yield distributor
    distributor.stopService()


def session(distributor: Distributor, clock: Clock) -> Session:
    return Session(distributor, clock)


def error_of(answer: Any) -> amp.RemoteAmpError:
    assert isinstance(answer, Failure), answer
    return answer.value  # type: ignore[return-value]


def a_job(**fields: Any) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "name": "noop", "args": {}, **fields}


# -- Hello: answered once per connection (§3.3) ------------------------------------------


def test_a_refused_hello_closes_the_connection(distributor: Distributor, clock: Clock) -> None:
    peer = session(distributor, clock)

    answer = peer.hello("app", 0, version=PROTOCOL_VERSION + 1)

    assert "version" in str(error_of(answer))
    assert not peer.open
    assert distributor.nodes() == []


def test_a_hello_with_unreadable_arguments_closes_the_connection(
    distributor: Distributor, clock: Clock
) -> None:
    peer = session(distributor, clock)

    results: list[Any] = []
    peer.peer.callRemoteString(
        b"Hello", name=b"app", slots=b"zero", version=b"1", held=b"[]"
    ).addBoth(results.append)
    peer.settle()

    assert "argument 'slots' must be an integer" in str(error_of(results[0]))
    assert not peer.open


def test_a_second_hello_is_refused_and_the_session_goes_on(
    distributor: Distributor, clock: Clock
) -> None:
    peer = session(distributor, clock)
    peer.hello("app", 0)

    answer = peer.hello("app", 0)

    assert "already sent" in str(error_of(answer))
    assert peer.open
    assert peer.call(Enqueue, jobs=[a_job(run_at=clock.seconds() + 60)])["rejected"] == []


@pytest.mark.parametrize(("slots", "kind"), [(0, "client"), (2, "node")])
def test_a_duplicate_name_says_what_uses_it(
    distributor: Distributor, clock: Clock, slots: int, kind: str
) -> None:
    first = session(distributor, clock)
    first.hello("twin", slots)
    second = session(distributor, clock)

    answer = second.hello("twin", 1)

    assert str(error_of(answer)).endswith(f"a {kind} named 'twin' is already connected")
    assert not second.open
    assert first.open


def test_leaving_is_for_nodes(distributor: Distributor, clock: Clock) -> None:
    client = session(distributor, clock)
    client.hello("app", 0)

    answer = client.call(Leaving)

    assert "Leaving is for nodes" in str(error_of(answer))
    assert client.open


# -- Enqueue (§4.5) ------------------------------------------------------------------------


def test_enqueue_resets_run_and_attempt(distributor: Distributor, clock: Clock) -> None:
    node = session(distributor, clock)
    node.hello("worker", 1)
    client = session(distributor, clock)
    client.hello("app", 0)

    client.call(Enqueue, jobs=[a_job(status="failed", run=5, attempt=3)])
    node.settle()

    [[sent]] = node.peer.run_jobs
    assert (sent["status"], sent["run"], sent["attempt"]) == ("new", 0, 0)


# -- the RunJobs answer (§4.2) -------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        {"accepted": [], "parked": [], "rejected": []},
        {"accepted": [], "parked": [], "rejected": [{"id": None, "error": "?", "retry": False}]},
    ],
    ids=["in neither list", "rejected with id null"],
)
def test_a_job_the_answer_leaves_out_goes_back_to_the_queue(
    distributor: Distributor, clock: Clock, answer: dict[str, Any]
) -> None:
    node = session(distributor, clock)
    node.hello("worker", 1)
    node.peer.answer_run_jobs = lambda jobs: answer
    handle = distributor.enqueue("noop", {})
    node.settle()
    assert len(node.peer.run_jobs) == 1
    assert distributor.waiting == 1  # back in the queue, not assigned to the node

    node.peer.answer_run_jobs = lambda jobs: {
        "accepted": [job["id"] for job in jobs],
        "parked": [],
        "rejected": [],
    }
    node.settle(1.0)  # the node rests a second, then gets it again

    assert [[job["id"] for job in jobs] for jobs in node.peer.run_jobs] == [[handle.id]] * 2
    assert distributor.waiting == 0
    assert [info.load for info in distributor.nodes()] == [1]


# -- Outcomes (§4.6) -----------------------------------------------------------------------


def test_an_error_answer_to_outcomes_keeps_the_reports_and_offers_them_again(
    distributor: Distributor, clock: Clock
) -> None:
    node = session(distributor, clock)
    node.hello("worker", 1)
    client = session(distributor, clock)
    client.hello("app", 0)
    client.peer.refuse_outcomes = 2
    job = a_job()
    client.call(Enqueue, jobs=[job])
    node.settle()
    report = {"job_id": job["id"], "run": 1, "status": "complete", "feedback": "success"}
    node.call(JobsDone, reports=[{**report, "final": True, "args": {"ok": True}}])
    client.settle()
    assert len(client.peer.outcomes) == 1  # refused

    client.settle(0.9)
    assert len(client.peer.outcomes) == 1
    client.settle(0.1)  # offered again after 1 s: refused again
    assert len(client.peer.outcomes) == 2
    client.settle(1.9)
    assert len(client.peer.outcomes) == 2
    client.settle(0.1)  # then after 2 s: taken

    assert len(client.peer.outcomes) == 3
    assert [r["job_id"] for r in client.peer.outcomes[-1]] == [job["id"]]
    client.settle(60)
    assert len(client.peer.outcomes) == 3


def test_a_resend_of_a_job_whose_outcome_is_on_its_way_makes_no_second_job(
    distributor: Distributor, clock: Clock
) -> None:
    node = session(distributor, clock)
    node.hello("worker", 1)
    client = session(distributor, clock)
    client.hello("app", 0)
    job = a_job()
    client.call(Enqueue, jobs=[job])
    node.settle()
    client.pump.client.transport.loseConnection()  # the client is away when the job ends
    client.settle()
    report = {"job_id": job["id"], "run": 1, "status": "complete", "feedback": "success"}
    node.call(JobsDone, reports=[{**report, "final": True}])

    back = session(distributor, clock)
    back.peer.callRemote(
        Hello, name="app", slots=0, version=PROTOCOL_VERSION, held=[], credentials=None
    )
    back.peer.callRemote(Enqueue, jobs=[job])  # the resend races the kept outcome
    back.settle()

    assert len(node.peer.run_jobs) == 1  # not run again
    assert distributor.pending == 0
    assert [[r["job_id"] for r in box] for box in back.peer.outcomes] == [[job["id"]]]
    other = session(distributor, clock)
    other.hello("other_app", 0)
    answer = other.call(Enqueue, jobs=[job])
    assert answer["accepted"] == [job["id"]]  # delivered: the id is free again (§5.2)


def test_held_jobs_take_their_slots_again_after_a_reconnect(
    distributor: Distributor, clock: Clock
) -> None:
    node = session(distributor, clock)
    node.hello("worker", 1)
    first = distributor.enqueue("noop", {})
    node.settle()
    node.pump.client.transport.loseConnection()
    node.settle()

    back = session(distributor, clock)
    answer = back.call(
        Hello, name="worker", slots=1, version=PROTOCOL_VERSION, held=[first.id], credentials=None
    )
    assert answer["drop"] == []
    second = distributor.enqueue("noop", {})
    back.settle()
    assert back.peer.run_jobs == []  # its one slot is taken by the job it still runs (§4.1)

    report = {"job_id": first.id, "run": 1, "status": "complete", "feedback": "success"}
    back.call(JobsDone, reports=[{**report, "final": True}])
    back.settle()
    assert [[job["id"] for job in jobs] for jobs in back.peer.run_jobs] == [[second.id]]
