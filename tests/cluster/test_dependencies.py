"""Dependencies under a Clock: a job waits in the distributor for the jobs it depends on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.defer import Deferred

from jobreactor import (
    Config,
    InvalidJobError,
    JobCancelled,
    JobFailed,
    JobRegistry,
    QueueFullError,
    job,
)
from jobreactor.definitions import registering_into
from jobreactor.testing import LocalCluster


class Jobs:
    def __init__(self) -> None:
        self.registry = JobRegistry()
        self.pending: dict[str, Deferred[Any]] = {}
        self.ran: list[str] = []
        with registering_into(self.registry):

            @job("step")
            def step(args: dict[str, Any]) -> Deferred[Any]:
                self.ran.append(args["name"])
                waiting: Deferred[Any] = Deferred()
                self.pending[args["name"]] = waiting
                return waiting.addCallback(lambda value: {**args, "value": value})

            @job("combine")
            def combine(args: dict[str, Any]) -> dict[str, Any]:
                self.ran.append("combine")
                values = [result["value"] for result in args["depends_on"].values()]
                return {"sum": sum(values)}


@pytest.fixture
def jobs() -> Jobs:
    return Jobs()


@pytest.fixture
def cluster(jobs: Jobs) -> Iterator[LocalCluster]:
    cluster = LocalCluster(jobs.registry, config=Config(max_attempt=1))
    cluster.add_node("n1")
    yield cluster
    cluster.stop()


def outcome_of(handle: Any) -> Any:
    return handle._outcome if handle.done else None


def test_a_job_runs_after_its_dependencies_succeeded_with_their_args(
    cluster: LocalCluster, jobs: Jobs
) -> None:
    enqueue = cluster.distributor.enqueue
    a = enqueue("step", {"name": "a"})
    b = enqueue("step", {"name": "b"})
    c = enqueue("combine", {}, depends_on=[a, b.id])  # handles or ids
    cluster.run()
    assert jobs.ran == ["a", "b"] and cluster.distributor.blocked == 1
    jobs.pending["a"].callback(2)
    cluster.run()
    assert jobs.ran == ["a", "b"]  # still waiting for b
    jobs.pending["b"].callback(40)
    cluster.run()
    assert jobs.ran == ["a", "b", "combine"]
    assert outcome_of(c)["sum"] == 42
    assert outcome_of(c)["depends_on"][a.id] == {"name": "a", "value": 2}


@pytest.mark.parametrize("how", ["fails", "is cancelled"])
def test_a_failed_dependency_fails_the_job_without_running_it(
    cluster: LocalCluster, jobs: Jobs, how: str
) -> None:
    enqueue = cluster.distributor.enqueue
    a = enqueue("step", {"name": "a"})
    errors: list[dict[str, Any]] = []
    c = enqueue("combine", {}, depends_on=[a], error=errors.append)
    cluster.run()
    if how == "fails":
        jobs.pending["a"].errback(ValueError("no data"))
    else:
        a.cancel()
    cluster.run()
    assert "combine" not in jobs.ran
    failure = outcome_of(c)
    assert failure.check(JobFailed) and failure.value.error_type == "DependencyFailed"
    assert a.id in failure.value.error
    assert errors[0]["error_type"] == "DependencyFailed"


def test_on_dependency_failure_run_runs_it_anyway(cluster: LocalCluster, jobs: Jobs) -> None:
    a = cluster.distributor.enqueue("step", {"name": "a"})
    b = cluster.distributor.enqueue("step", {"name": "b"}, depends_on=[a])
    cluster.distributor.enqueue("step", {"name": "c"}, depends_on=[a], on_dependency_failure="run")
    cluster.run()
    jobs.pending["a"].errback(ValueError("no data"))
    cluster.run()
    assert jobs.ran == ["a", "c"]
    assert outcome_of(b).check(JobFailed)


def test_dependencies_that_already_ended_are_looked_up(cluster: LocalCluster, jobs: Jobs) -> None:
    a = cluster.distributor.enqueue("step", {"name": "a"})
    cluster.run()
    jobs.pending["a"].callback(5)
    cluster.run()
    c = cluster.distributor.enqueue("combine", {}, depends_on=[a])
    unknown = cluster.distributor.enqueue("combine", {}, depends_on=["no-such-job"])
    cluster.run()
    assert outcome_of(c)["sum"] == 5
    assert "unknown" in outcome_of(unknown).value.error


def test_chains_and_cancelling_a_waiting_job(cluster: LocalCluster, jobs: Jobs) -> None:
    enqueue = cluster.distributor.enqueue
    a = enqueue("step", {"name": "a"})
    b = enqueue("step", {"name": "b"}, depends_on=[a])
    c = enqueue("step", {"name": "c"}, depends_on=[b])
    d = enqueue("step", {"name": "d"}, depends_on=[a])
    cluster.run()
    d.cancel()
    cluster.run()
    assert outcome_of(d).check(JobCancelled)
    jobs.pending["a"].callback(1)
    cluster.run()
    jobs.pending["b"].callback(2)
    cluster.run()
    jobs.pending["c"].callback(3)
    cluster.run()
    assert jobs.ran == ["a", "b", "c"]
    assert outcome_of(c)["depends_on"][b.id]["value"] == 2


def test_remote_client_dependencies(cluster: LocalCluster, jobs: Jobs) -> None:
    client = cluster.add_client("app")
    a = client.enqueue("step", {"name": "a"})
    b = client.enqueue("step", {"name": "b"})
    c = client.enqueue("combine", {}, depends_on=[a, b])
    cluster.run()
    jobs.pending["a"].callback(1)
    jobs.pending["b"].callback(2)
    cluster.run()
    assert outcome_of(c)["sum"] == 3


def test_bad_dependency_options_are_refused(cluster: LocalCluster) -> None:
    enqueue = cluster.distributor.enqueue
    with pytest.raises(InvalidJobError, match="depends_on takes job handles or ids"):
        enqueue("combine", {}, depends_on=[42])
    with pytest.raises(InvalidJobError, match="on_dependency_failure needs depends_on"):
        enqueue("combine", {}, on_dependency_failure="run")
    with pytest.raises(InvalidJobError, match='must be "fail" or "run"'):
        enqueue("combine", {}, depends_on=["x"], on_dependency_failure="maybe")


def test_a_released_job_counts_its_dependencies_results_against_max_waiting_bytes(
    jobs: Jobs,
) -> None:
    """The results a job receives make it larger; it used to be released at its larger size
    though counted at its smaller one, so each such job loosened ``max_waiting_bytes``."""
    config = Config(max_attempt=1, max_waiting_bytes=1024 * 1024)
    cluster = LocalCluster(jobs.registry, config=config)
    try:
        cluster.add_node("n1")
        enqueue = cluster.distributor.enqueue
        for round_ in range(5):
            a = enqueue("step", {"name": f"a{round_}", "pad": "x" * 300_000})
            c = enqueue("combine", {}, depends_on=[a])
            cluster.run()
            jobs.pending[f"a{round_}"].callback(1)  # its result: its args, 300 KB of them
            cluster.run()
            assert outcome_of(c)["sum"] == 1
        held = []
        with pytest.raises(QueueFullError, match="max_waiting_bytes"):
            for index in range(10):  # each stays on the node, pending, and counts
                held.append(enqueue("step", {"name": f"h{index}", "pad": "y" * 300_000}))
                cluster.run()
        assert len(held) == 3  # 1 MiB holds three of them, as before any dependency
    finally:
        cluster.stop()
