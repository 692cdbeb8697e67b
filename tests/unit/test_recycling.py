"""The Recycler's decisions on a Clock, and the command line of --processes children."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock

from jobreactor.node.recycling import Recycler, child_arguments


class FakeNode:
    name = "worker"
    jobs_run = 0
    after_attempt: Any = None


def test_max_jobs_stops_once_after_the_nth_attempt() -> None:
    clock, node, stops = Clock(), FakeNode(), []
    recycler = Recycler(
        node, max_jobs=3, max_memory_mb=0, stop=lambda: stops.append(1), clock=clock
    )
    recycler.startService()
    for _ in range(5):
        node.jobs_run += 1
        node.after_attempt()
        clock.advance(0)
        assert len(stops) == (1 if node.jobs_run >= 3 else 0)


def test_max_memory_is_checked_twice_a_second() -> None:
    clock, stops = Clock(), []
    used = [50.0]
    recycler = Recycler(
        FakeNode(),
        max_jobs=0,
        max_memory_mb=100,
        stop=lambda: stops.append(1),
        clock=clock,
        memory=lambda: used[0],
    )
    recycler.startService()
    clock.advance(2)
    assert stops == []
    used[0] = 101.0
    clock.advance(0.5)
    clock.advance(0)
    assert stops == [1]
    clock.advance(5)
    assert stops == [1]
    recycler.stopService()


def test_children_get_the_options_but_their_own_name() -> None:
    argv = [
        "twistd", "-n", "--pidfile=", "jr-node", "--name", "pool", "--processes", "3",
        "--jobs", "jobs", "--max-memory=200", "--distributor", "tcp:host=h:port=1",
    ]  # fmt: skip
    assert child_arguments(argv, "pool-2") == [
        "jr-node", "--name", "pool-2", "--jobs", "jobs", "--max-memory=200",
        "--distributor", "tcp:host=h:port=1",
    ]  # fmt: skip


def test_max_memory_is_also_checked_every_few_attempts() -> None:
    """Short jobs that leak fast are caught between two timer checks."""
    clock, node, stops = Clock(), FakeNode(), []
    used = [101.0]
    recycler = Recycler(
        node, max_jobs=0, max_memory_mb=100, stop=lambda: stops.append(1), clock=clock,
        memory=lambda: used[0],
    )  # fmt: skip
    recycler.startService()
    for _ in range(19):
        node.after_attempt()
    clock.advance(0)
    assert stops == []  # no timer has fired yet, and 19 attempts are not 20
    node.after_attempt()
    clock.advance(0)
    assert stops == [1]
    recycler.stopService()
