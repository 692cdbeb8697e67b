"""Faults under a Clock: silent nodes, lost nodes, refusals, graceful stops, late duplicates."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail

from jobreactor import Config, JobRegistry, job
from jobreactor.definitions import registering_into
from jobreactor.storage import MemoryStorage
from jobreactor.testing import LocalCluster


class Jobs:
    def __init__(self) -> None:
        self.registry = JobRegistry()
        self.pending: dict[str, list[Deferred[Any]]] = {}
        with registering_into(self.registry):

            @job("where")
            def where(args: dict[str, Any]) -> dict[str, Any]:
                return {"ran_on": args["job_itself"]["node"]}

            @job("slow")
            def slow(args: dict[str, Any]) -> Deferred[Any]:
                waiting: Deferred[Any] = Deferred()
                self.pending.setdefault(args["job_itself"]["node"], []).append(waiting)
                return waiting.addCallback(lambda _: {"ran_on": args["job_itself"]["node"]})


SETTINGS: dict[str, Any] = {
    "merge_job_itself_to_args": True,
    "heartbeat_interval": 1.0,
    "heartbeat_timeout": 5.0,
    "node_grace_period": 10.0,
    "shutdown_grace_period": 30.0,
}


@pytest.fixture
def jobs() -> Jobs:
    return Jobs()


@pytest.fixture
def cluster(jobs: Jobs) -> Iterator[LocalCluster]:
    cluster = LocalCluster(jobs.registry, config=Config(**SETTINGS))
    yield cluster
    cluster.stop()


def test_silent_node_is_dropped_and_its_jobs_rerouted(cluster: LocalCluster, jobs: Jobs) -> None:
    cluster.add_node("frozen")
    seen: list[dict[str, Any]] = []
    for _ in range(3):
        cluster.distributor.enqueue("slow", {}, success=seen.append)
    cluster.run()
    assert len(jobs.pending["frozen"]) == 3
    cluster.freeze("frozen")
    cluster.add_node("healthy")
    cluster.advance(5.5)
    assert [info.name for info in cluster.distributor.nodes()] == ["healthy"], (
        "a peer silent for heartbeat_timeout is dropped"
    )
    cluster.advance(9)
    assert "healthy" not in jobs.pending, "the grace period is not over yet"
    cluster.advance(2)
    assert len(jobs.pending["healthy"]) == 3
    for waiting in jobs.pending["healthy"]:
        waiting.callback(None)
    cluster.run()
    assert [args["ran_on"] for args in seen] == ["healthy"] * 3
    # the frozen node wakes and finishes too: its late outcomes fire nothing twice
    cluster.thaw("frozen")
    for waiting in jobs.pending["frozen"]:
        waiting.callback(None)
    cluster.advance(5)
    assert len(seen) == 3
    assert cluster.distributor.pending == 0


def test_node_back_within_the_grace_period_keeps_its_jobs(
    cluster: LocalCluster, jobs: Jobs
) -> None:
    cluster.add_node("worker_1")
    cluster.add_node("worker_2", slots=1)
    handle = cluster.distributor.enqueue("slow", {}, node="worker_1")
    cluster.run()
    cluster.disconnect("worker_1")
    cluster.advance(3)
    cluster.connect("worker_1")
    cluster.advance(20)
    assert "worker_2" not in jobs.pending, "the job stayed with the node that holds it"
    jobs.pending["worker_1"][0].callback(None)
    cluster.run()
    assert handle.done


def test_late_duplicate_of_a_finished_run_is_ignored(cluster: LocalCluster, jobs: Jobs) -> None:
    cluster.add_node("first")
    seen: list[dict[str, Any]] = []
    cluster.distributor.enqueue("slow", {}, success=seen.append)
    cluster.run()
    cluster.disconnect("first")
    cluster.add_node("second")
    cluster.advance(11)
    jobs.pending["second"][0].callback(None)
    cluster.run()
    assert [args["ran_on"] for args in seen] == ["second"]
    cluster.connect("first")  # comes back: the job was given away, so it is dropped
    cluster.run()
    assert cluster.nodes["first"].held == 0
    jobs.pending["first"][0].callback(None)
    cluster.advance(2)
    assert len(seen) == 1


def test_node_that_cannot_store_refuses_and_the_job_goes_elsewhere(
    cluster: LocalCluster,
) -> None:
    class BrokenStorage(MemoryStorage):
        def save(self, node: str, job: Any) -> Any:
            return fail(ConnectionError("storage is down"))

    cluster.add_node("broken", storage=BrokenStorage())
    seen: list[dict[str, Any]] = []
    cluster.distributor.enqueue("where", {}, success=seen.append)
    cluster.run()
    assert seen == [] and cluster.distributor.waiting == 1, "refused, kept, not failed"
    cluster.add_node("fine")
    cluster.advance(2)
    assert [args["ran_on"] for args in seen] == ["fine"]


def test_graceful_stop_hands_back_unstarted_jobs_and_finishes_running_ones(
    cluster: LocalCluster, jobs: Jobs
) -> None:
    node = cluster.add_node("leaving", slots=1)
    seen: list[dict[str, Any]] = []
    running = cluster.distributor.enqueue("slow", {}, success=seen.append)
    later = cluster.distributor.enqueue("where", {}, after=60, success=seen.append)
    cluster.run()
    assert node.held == 2
    stopped = node.stopService()
    cluster.run()
    cluster.add_node("staying")
    cluster.run()
    assert [info.name for info in cluster.distributor.nodes() if info.slots] == [
        "leaving",
        "staying",
    ]
    assert not stopped.called, "it waits for the running job"
    jobs.pending["leaving"][0].callback(None)
    cluster.advance(1)
    assert stopped.called
    assert running.done and seen[0]["ran_on"] == "leaving"
    cluster.advance(60)
    assert later.done and seen[1]["ran_on"] == "staying", "the unstarted job was handed back"


def test_graceful_stop_hands_back_jobs_still_running_after_the_grace_period(
    cluster: LocalCluster, jobs: Jobs
) -> None:
    node = cluster.add_node("leaving")
    cluster.add_node("staying", slots=1)
    seen: list[dict[str, Any]] = []
    cluster.distributor.enqueue("slow", {}, node="leaving", success=seen.append)
    cluster.run()
    stopped = node.stopService()
    cluster.advance(29)
    assert not stopped.called
    cluster.advance(2)
    assert stopped.called
    cluster.run()
    assert len(jobs.pending.get("staying", [])) == 1, "re-run on the node that stays"
    jobs.pending["staying"][0].callback(None)
    cluster.run()
    assert [args["ran_on"] for args in seen] == ["staying"]


def test_job_finished_while_disconnected_is_not_run_again(
    cluster: LocalCluster, jobs: Jobs
) -> None:
    cluster.add_node("worker_1")
    cluster.add_node("worker_2", slots=1)
    seen: list[dict[str, Any]] = []
    cluster.distributor.enqueue("slow", {}, node="worker_1", success=seen.append)
    cluster.run()
    cluster.disconnect("worker_1")
    jobs.pending["worker_1"][0].callback(None)  # finishes while the link is down
    cluster.run()
    cluster.connect("worker_1")  # its Hello names the job whose outcome it still holds
    cluster.advance(30)
    assert "worker_2" not in jobs.pending, "not run a second time"
    assert [args["ran_on"] for args in seen] == ["worker_1"]


@pytest.mark.parametrize("comes_back", [True, False], ids=["node-returns", "node-gone"])
def test_cancel_while_the_node_is_away_is_not_lost(
    cluster: LocalCluster, jobs: Jobs, comes_back: bool
) -> None:
    cluster.add_node("worker_1")
    handle = cluster.distributor.enqueue("slow", {}, node="worker_1")
    cluster.run()
    cluster.disconnect("worker_1")
    handle.cancel()
    cluster.run()
    if comes_back:
        cluster.connect("worker_1")
        cluster.run()
        assert jobs.pending["worker_1"][0].called, "the cancel reached the node"
    else:
        cluster.add_node("worker_2")
        cluster.advance(11)
        assert "worker_2" not in jobs.pending, "not re-routed: it was cancelled"
    assert handle.done
    assert cluster.distributor.pending == 0


def test_delayed_jobs_due_while_waiting_respect_slots(cluster: LocalCluster, jobs: Jobs) -> None:
    for _ in range(20):
        cluster.distributor.enqueue("slow", {}, after=10)
    cluster.advance(30)
    cluster.add_node("small", slots=2)
    cluster.run()
    assert len(jobs.pending["small"]) == 2
    assert cluster.distributor.nodes()[0].load == 2
    assert cluster.distributor.waiting == 18


def test_cancel_while_the_attempt_is_being_saved(cluster: LocalCluster, jobs: Jobs) -> None:
    class SlowStorage(MemoryStorage):
        saves: list[Deferred[None]] = []

        def save(self, node: str, job: Any) -> Any:
            if job.status.value != "in progress":
                return super().save(node, job)
            waiting: Deferred[None] = Deferred()
            SlowStorage.saves.append(waiting)
            return waiting

    cluster.add_node("worker_1", storage=SlowStorage())
    handle = cluster.distributor.enqueue("slow", {})
    cluster.run()
    assert len(SlowStorage.saves) == 1
    handle.cancel()
    cluster.run()
    SlowStorage.saves[0].callback(None)
    cluster.run()
    assert "worker_1" not in jobs.pending, "the job never started"
    assert handle.done


def test_hundreds_of_jobs_behind_a_busy_slot_all_run(cluster: LocalCluster, jobs: Jobs) -> None:
    cluster.add_node("single", slots=1)
    seen: list[dict[str, Any]] = []
    cluster.distributor.enqueue("slow", {})
    cluster.run()
    for _ in range(500):
        cluster.distributor.enqueue("where", {}, after=10, success=seen.append)
    cluster.advance(11)
    jobs.pending["single"][0].callback(None)  # the slot frees: 500 quick jobs follow
    cluster.advance(1)
    assert len(seen) == 500
    assert cluster.distributor.pending == 0


def test_an_attempt_of_a_dropped_job_still_frees_its_slot(
    cluster: LocalCluster, jobs: Jobs
) -> None:
    cluster.add_node("a", slots=1)
    seen: list[dict[str, Any]] = []
    cluster.distributor.enqueue("slow", {}, node="a", success=seen.append)
    cluster.run()
    cluster.freeze("a")
    cluster.add_node("b")
    cluster.advance(20)  # dropped by heartbeat, re-routed to b after the grace period
    jobs.pending["b"][0].callback(None)
    cluster.run()
    cluster.thaw("a")
    cluster.connect("a")  # told to drop the job it still runs
    cluster.run()
    cluster.distributor.enqueue("where", {}, node="a", success=seen.append)
    cluster.run()
    jobs.pending["a"][0].callback(None)  # the dropped job's attempt ends
    cluster.advance(1)
    assert [args["ran_on"] for args in seen] == ["b", "a"], "the slot was freed"


def test_cancel_while_the_node_is_still_storing_the_job(cluster: LocalCluster) -> None:
    class SlowStorage(MemoryStorage):
        waiting: list[Deferred[None]] = []

        def save(self, node: str, job: Any) -> Any:
            if job.status.value != "queued":
                return super().save(node, job)
            saved: Deferred[None] = Deferred()
            SlowStorage.waiting.append(saved)
            return saved.addCallback(lambda _: super(SlowStorage, self).save(node, job))

    cluster.add_node("slow_disk", storage=SlowStorage())
    seen: list[dict[str, Any]] = []
    handle = cluster.distributor.enqueue("where", {}, after=5, success=seen.append)
    cluster.run()
    handle.cancel()
    cluster.run()
    SlowStorage.waiting[0].callback(None)
    cluster.advance(10)
    assert seen == [], "the cancel that came during the save was honoured"
    assert handle.done


def test_a_late_duplicate_final_report_cancels_nothing(cluster: LocalCluster, jobs: Jobs) -> None:
    cluster.add_node("a")
    seen: list[dict[str, Any]] = []
    handle = cluster.distributor.enqueue("slow", {}, node="a", success=seen.append)
    cluster.run()
    cluster.disconnect("a")
    cluster.add_node("b")
    cluster.advance(11)
    jobs.pending["b"][0].callback(None)
    cluster.run()
    assert handle.done and len(seen) == 1
    cluster.connect("a")
    jobs.pending["a"][0].callback(None)
    cluster.advance(2)
    assert len(seen) == 1
