"""The credit window: slots bound running jobs; a node may queue a few due jobs beyond them.

The queue allowance is sized from the node's job durations against the round trip, and a
job queued on a busy node goes to another node as soon as that one has an idle slot.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from jobreactor import Config, JobRegistry, job
from jobreactor.definitions import registering_into
from jobreactor.distributor.records import _NodeLink
from jobreactor.testing import LocalCluster

LONG = 60.0


def long_jobs(cluster_clock: list[Any], starts: list[tuple[int, str, float]]) -> JobRegistry:
    registry = JobRegistry()
    with registering_into(registry):

        @job("long")
        def long(args: dict[str, Any]) -> Deferred[None]:
            clock = cluster_clock[0]
            starts.append((args["i"], args["job_itself"]["node"], clock.seconds()))
            return deferLater(clock, LONG, lambda: None)

    return registry


def make_cluster(starts: list[tuple[int, str, float]], limit: int = 4) -> LocalCluster:
    clocks: list[Any] = []
    config = Config(merge_job_itself_to_args=True, node_queue_limit=limit, max_attempt=1)
    cluster = LocalCluster(long_jobs(clocks, starts), config=config)
    clocks.append(cluster.clock)
    return cluster


def link(name: str, slots: int = 1, limit: int = 4) -> _NodeLink:
    return _NodeLink(name=name, slots=slots, protocol=None, queue_limit=limit)  # type: ignore[arg-type]


def test_short_jobs_against_a_long_round_trip_get_a_queue_up_to_the_limit() -> None:
    fast = link("a", slots=10, limit=64)
    fast.measure(duration=0.0001, round_trip=0.001)  # 10 slots * 10 jobs per round trip
    assert fast.queue_allowance == 64
    fast = link("a", slots=2, limit=64)
    fast.measure(duration=0.001, round_trip=0.004)
    assert fast.queue_allowance == 8
    assert fast.room == 2 + 8


def test_jobs_longer_than_the_round_trip_get_no_queue() -> None:
    slow = link("a", slots=10, limit=64)
    slow.measure(duration=0.5, round_trip=0.001)
    assert slow.queue_allowance == 0
    assert slow.room == 10


def test_one_long_job_among_short_ones_shrinks_the_queue_at_once() -> None:
    mixed = link("a", slots=4, limit=64)
    for _ in range(50):
        mixed.measure(duration=0.0001, round_trip=0.002)
    assert mixed.queue_allowance == 64
    mixed.measure(duration=30.0)
    assert mixed.queue_allowance == 0


def test_no_queue_before_anything_was_measured() -> None:
    fresh = link("a", slots=3)
    assert fresh.queue_allowance == 0
    fresh.measure(round_trip=0.01)
    assert fresh.queue_allowance == 0  # no duration yet
    assert fresh.room == 3


def test_a_node_with_a_queue_takes_jobs_beyond_its_slots() -> None:
    starts: list[tuple[int, str, float]] = []
    cluster = make_cluster(starts)
    cluster.add_node("a", slots=1)
    cluster.distributor._links["a"].measure(duration=0.001, round_trip=0.01)  # allowance 4
    handles = [cluster.distributor.enqueue("long", {"i": i}) for i in range(3)]
    cluster.run()
    assert [i for i, _, _ in starts] == [0]  # one slot: one runs
    assert len(cluster.nodes["a"]._jobs) == 3  # the other two wait there for the slot
    assert cluster.distributor.waiting == 0
    cluster.advance(3 * LONG + 1)
    assert all(h.done for h in handles)
    assert sorted(i for i, _, _ in starts) == [0, 1, 2]


def test_a_long_job_queued_on_a_busy_node_moves_to_a_node_with_an_idle_slot() -> None:
    starts: list[tuple[int, str, float]] = []
    cluster = make_cluster(starts)
    cluster.add_node("a", slots=1)
    cluster.distributor._links["a"].measure(duration=0.001, round_trip=0.01)
    outcomes: list[int] = []

    def record(args: dict[str, Any]) -> None:
        outcomes.append(args["i"])

    handles = [cluster.distributor.enqueue("long", {"i": i}, success=record) for i in range(3)]
    cluster.run()
    assert [(i, node) for i, node, _ in starts] == [(0, "a")]
    began = cluster.clock.seconds()

    cluster.add_node("b", slots=1)  # an idle slot appears while 1 and 2 wait on a
    cluster.advance(1)
    assert len(starts) == 2
    moved, node, at = starts[1]
    assert moved in (1, 2) and node == "b"
    assert at - began < 1  # started at once, not after job 0's minute

    cluster.advance(3 * LONG)
    assert all(h.done for h in handles)
    assert sorted(outcomes) == [0, 1, 2]  # each ran and reported exactly once
    assert sorted(i for i, _, _ in starts) == [0, 1, 2]


def test_a_slot_freed_on_another_node_takes_the_queued_job_not_the_next_minute() -> None:
    """Both nodes busy, one queue: the first node to finish takes the queued job."""
    starts: list[tuple[int, str, float]] = []
    registry = JobRegistry()
    clocks: list[Any] = []
    with registering_into(registry):

        @job("timed")
        def timed(args: dict[str, Any]) -> Deferred[None]:
            starts.append((args["i"], args["job_itself"]["node"], clocks[0].seconds()))
            return deferLater(clocks[0], args["seconds"], lambda: None)

    config = Config(merge_job_itself_to_args=True, node_queue_limit=4, max_attempt=1)
    cluster = LocalCluster(registry, config=config)
    clocks.append(cluster.clock)
    cluster.add_node("a", slots=1)
    cluster.add_node("b", slots=1)
    cluster.distributor._links["a"].measure(duration=0.001, round_trip=0.01)
    began = cluster.clock.seconds()
    first = cluster.distributor.enqueue("timed", {"i": 0, "seconds": 600}, node="a")
    second = cluster.distributor.enqueue("timed", {"i": 1, "seconds": 5}, node="b")
    cluster.run()
    third = cluster.distributor.enqueue("timed", {"i": 2, "seconds": 600})
    cluster.run()
    # b is busy for 5 s, a for 10 min: the third job waits in a's queue (a has room)...
    assert sorted((i, node) for i, node, _ in starts) == [(0, "a"), (1, "b")]
    cluster.advance(6)
    # ...until b's slot frees: then it runs on b, not after a's ten minutes.
    assert (2, "b") in [(i, node) for i, node, _ in starts]
    at = next(t for i, _, t in starts if i == 2)
    assert at - began < 6
    cluster.advance(1300)
    assert first.done and second.done and third.done


def test_without_a_queue_limit_a_node_gets_no_more_than_its_slots() -> None:
    starts: list[tuple[int, str, float]] = []
    cluster = make_cluster(starts, limit=0)
    cluster.add_node("a", slots=1)
    cluster.distributor._links["a"].measure(duration=0.001, round_trip=0.01)
    for i in range(3):
        cluster.distributor.enqueue("long", {"i": i})
    cluster.run()
    assert len(cluster.nodes["a"]._jobs) == 1
    assert cluster.distributor.waiting == 2


def test_a_node_holding_more_jobs_than_a_command_may_list_rejoins_and_keeps_them() -> None:
    """Hello's ``held`` is as long as what the node holds (parked jobs, a queue, reports
    waiting): past max_items_per_command the node was refused for good and its jobs ran
    again elsewhere."""
    starts: list[tuple[int, str, float]] = []
    clocks: list[Any] = []
    config = Config(merge_job_itself_to_args=True, max_attempt=1, max_items_per_command=200)
    cluster = LocalCluster(long_jobs(clocks, starts), config=config)
    clocks.append(cluster.clock)
    cluster.add_node("a", slots=1)
    handles = [cluster.distributor.enqueue("long", {"i": i}, after=600) for i in range(250)]
    cluster.run()
    assert len(cluster.nodes["a"]._jobs) == 250  # parked there, waiting for their time

    cluster.disconnect("a")
    cluster.run()
    cluster.connect("a")  # Hello lists 250 held jobs: more than 200 items
    assert [info.name for info in cluster.distributor.nodes()] == ["a"]
    assert all(entry.node == "a" for entry in cluster.distributor._owned.values())
    cluster.advance(600 + 250 * LONG + 10, step=LONG)
    assert all(h.done for h in handles)
    assert sorted(i for i, _, _ in starts) == list(range(250))  # each ran once, on a


@pytest.mark.parametrize(
    "setting",
    [{"max_items_per_command": 50}, {"max_box_bytes": 64 * 1024, "max_args_bytes": 1024}],
    ids=["50 items per command", "64 KiB boxes"],
)
def test_boxes_of_jobs_and_reports_stay_within_the_limits_both_sides_share(
    setting: dict[str, Any],
) -> None:
    """The distributor cut RunJobs at 200 jobs and 4 MiB whatever the settings said: with
    fewer allowed, the node refused every box of a burst."""
    starts: list[tuple[int, str, float]] = []
    clocks: list[Any] = []
    config = Config(merge_job_itself_to_args=True, max_attempt=1, **setting)
    cluster = LocalCluster(long_jobs(clocks, starts), config=config)
    clocks.append(cluster.clock)
    cluster.add_node("a", slots=300)
    padding = "x" * 900 if "max_box_bytes" in setting else ""
    handles = [cluster.distributor.enqueue("long", {"i": i, "pad": padding}) for i in range(300)]
    cluster.advance(LONG + 1, step=LONG / 4)
    assert sorted(i for i, _, _ in starts) == list(range(300))
    results: list[Any] = []
    for handle in handles:
        handle.deferred.addBoth(results.append)
    assert [r["i"] for r in results] == list(range(300))  # every one succeeded
