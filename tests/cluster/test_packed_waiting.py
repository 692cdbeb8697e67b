"""Jobs deep in a long waiting line wait packed (one short text each): under a Clock they come
out the same job, and route, cancel, show, keep their unique keys, dependencies and
priorities as any other."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
import pytest
from twisted.internet.defer import Deferred

from jobreactor import Config, JobCancelled, JobRegistry, job
from jobreactor.definitions import registering_into
from jobreactor.distributor import dispatch
from jobreactor.distributor.records import _Entry
from jobreactor.testing import LocalCluster

#: Jobs beyond this many in a line are packed here (10,000 in production).
DEPTH = 3


class Jobs:
    def __init__(self) -> None:
        self.registry = JobRegistry()
        self.ran: list[dict[str, Any]] = []
        self.pending: dict[str, Deferred[Any]] = {}
        with registering_into(self.registry):

            @job("echo")
            def echo(args: dict[str, Any]) -> dict[str, Any]:
                self.ran.append(dict(args))
                return {"seen": dict(args)}

            @job("held")
            def held(args: dict[str, Any]) -> Deferred[Any]:
                self.ran.append(dict(args))
                waiting: Deferred[Any] = Deferred()
                self.pending[args["label"]] = waiting
                return waiting.addCallback(lambda value: {"value": value})


@pytest.fixture
def jobs() -> Jobs:
    return Jobs()


@pytest.fixture
def cluster(jobs: Jobs, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalCluster]:
    monkeypatch.setattr(dispatch, "PACK_BEYOND", DEPTH)
    cluster = LocalCluster(jobs.registry, config=Config(max_attempt=1))
    yield cluster
    cluster.stop()


def outcome_of(handle: Any) -> Any:
    return handle._outcome if handle.done else None


def packed(cluster: LocalCluster, handle: Any) -> bool:
    return cluster.distributor._owned[handle.id].packed is not None


ARGS = {
    "int": 7,
    "float": 0.5,
    "whole_float": 3.0,
    "none": None,
    "bool": True,
    "text": "naïve ☃",
    "nested": {"list": [1, 2.0, "3", None, {"deep": [False]}]},
}


def test_jobs_beyond_the_depth_wait_packed_and_come_out_the_same(
    cluster: LocalCluster, jobs: Jobs
) -> None:
    enqueue = cluster.distributor.enqueue
    handles = [
        enqueue("echo", {**ARGS, "i": i}, priority=i % 3, max_attempt=2, timeout=9.5)
        for i in range(8)
    ]
    assert [packed(cluster, h) for h in handles] == [False] * DEPTH + [True] * (8 - DEPTH)
    # What each job is: the first (never packed) with the id, args and priority of each.
    first = cluster.distributor._owned[handles[0].id].job
    assert (first.timeout, first.max_attempt) == (9.5, 2)
    originals = {
        h.id: attrs.evolve(first, id=h.id, args={**ARGS, "i": i}, priority=i % 3)
        for i, h in enumerate(handles)
    }
    entry = cluster.distributor._owned[handles[-1].id]
    # No Job is held: the job's own slot holds only its id (the string that keys _owned),
    # the rest is the text.
    assert _Entry.__dict__["job"].__get__(entry, _Entry) is handles[-1].id
    text = entry.packed
    assert text is not None and b'"echo"' in text and handles[-1].id.encode() not in text
    # Views show the packed jobs without unpacking them for good.
    shown = cluster.distributor.waiting_jobs(100)
    assert {job.id: job for job in shown} == originals
    assert cluster.distributor.owned_job(handles[-1].id) == (originals[handles[-1].id], None)
    assert [j for j, _ in cluster.distributor.owned_jobs()] == list(originals.values())
    assert packed(cluster, handles[-1])
    # Read through entry.job (as the distributor's code does): the same job, every field.
    for handle in handles:
        entry = cluster.distributor._owned[handle.id]
        for field in attrs.fields(type(entry.job)):
            value = getattr(entry.job, field.name)
            original = getattr(originals[handle.id], field.name)
            assert value == original and type(value) is type(original), field.name
        assert entry.size > 400
        assert entry.packed is None  # unpacked for good once read
    cluster.add_node("n1", slots=1)
    cluster.run()
    # Highest priority first, FIFO within one, packed or not.
    expected = sorted(range(8), key=lambda i: (-(i % 3), i))
    assert [run["i"] for run in jobs.ran] == expected
    for handle, i in zip(handles, range(8), strict=True):
        assert outcome_of(handle)["seen"] == {**ARGS, "i": i}
    assert cluster.distributor.pending == 0


def test_a_packed_job_routes_and_cancels(cluster: LocalCluster, jobs: Jobs) -> None:
    enqueue = cluster.distributor.enqueue
    successes: list[dict[str, Any]] = []
    handles = [enqueue("echo", {"i": i}, success=successes.append) for i in range(6)]
    assert packed(cluster, handles[4]) and packed(cluster, handles[5])
    size_before = cluster.distributor._admission._total.bytes
    handles[4].cancel()
    assert isinstance(outcome_of(handles[4]).value, JobCancelled)
    assert cluster.distributor._admission._total.bytes < size_before  # its size released
    assert cluster.distributor.waiting == 5
    cluster.add_node("n1")
    cluster.run()
    assert [run["i"] for run in jobs.ran] == [0, 1, 2, 3, 5]
    assert [args["seen"] for args in successes] == [{"i": i} for i in (0, 1, 2, 3, 5)]
    assert cluster.distributor._admission._total.bytes == 0
    assert cluster.distributor.waiting == cluster.distributor.pending == 0


def test_a_packed_job_keeps_its_unique_key(cluster: LocalCluster, jobs: Jobs) -> None:
    enqueue = cluster.distributor.enqueue
    for i in range(DEPTH):
        enqueue("echo", {"i": i})
    first_seen: list[dict[str, Any]] = []
    second_seen: list[dict[str, Any]] = []
    first = enqueue("echo", {"i": "unique"}, unique_key="k", success=first_seen.append)
    assert packed(cluster, first)
    second = enqueue("echo", {"i": "other"}, unique_key="k", success=second_seen.append)
    assert second is first  # the same job, the same handle
    cluster.add_node("n1")
    cluster.run()
    assert [run["i"] for run in jobs.ran] == [0, 1, 2, "unique"]
    assert [args["seen"] for args in first_seen] == [{"i": "unique"}]
    assert second_seen == first_seen


def test_a_packed_job_and_its_dependents(cluster: LocalCluster, jobs: Jobs) -> None:
    enqueue = cluster.distributor.enqueue
    for i in range(DEPTH):
        enqueue("echo", {"i": i})
    dependency = enqueue("held", {"label": "a"})
    assert packed(cluster, dependency)
    dependent = enqueue("echo", {"i": "after"}, depends_on=[dependency])
    cluster.run()
    assert cluster.distributor.blocked == 1
    cluster.add_node("n1")
    cluster.run()
    assert [run.get("i", run.get("label")) for run in jobs.ran] == [0, 1, 2, "a"]
    jobs.pending["a"].callback(5)
    cluster.run()
    assert jobs.ran[-1] == {"i": "after", "depends_on": {dependency.id: {"label": "a", "value": 5}}}
    assert outcome_of(dependent) is not None


def test_jobs_of_a_remote_client_wait_packed_and_their_outcomes_go_back(
    cluster: LocalCluster, jobs: Jobs
) -> None:
    client = cluster.add_client("app")
    handles = [client.enqueue("echo", {"i": i, "f": 1.0}) for i in range(6)]
    cluster.run()
    owned = cluster.distributor._owned
    assert [owned[h.id].packed is not None for h in handles] == [False] * DEPTH + [True] * 3
    assert all(owned[h.id].origin == "app" for h in handles)
    cluster.add_node("n1")
    cluster.run()
    assert [outcome_of(h)["seen"] for h in handles] == [{"i": i, "f": 1.0} for i in range(6)]
    assert all(type(outcome_of(h)["seen"]["f"]) is float for h in handles)


def test_scheduled_jobs_stay_unpacked_and_the_delayed_view_unpacks_nothing(
    cluster: LocalCluster,
) -> None:
    from jobreactor.web import _snapshot

    enqueue = cluster.distributor.enqueue
    plain = [enqueue("echo", {"i": i}) for i in range(DEPTH + 2)]
    later = [enqueue("echo", {"i": i}, after=60) for i in range(DEPTH + 2)]  # a long line
    periodic = enqueue("echo", {"i": "periodic"}, period=30)
    assert packed(cluster, plain[-1]) and packed(cluster, plain[-2])
    # Deep in their lines, but the delayed view lists them: not packed.
    assert not any(packed(cluster, handle) for handle in [*later, periodic])
    view = _snapshot.delayed(cluster.distributor, cluster.clock.seconds())
    assert {row["id"] for row in view["delayed"]} == {h.id for h in [*later, periodic]}
    assert view["count"] == DEPTH + 3
    assert packed(cluster, plain[-1]) and packed(cluster, plain[-2])  # left packed
