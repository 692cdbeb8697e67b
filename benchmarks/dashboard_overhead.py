"""What a subscribed dashboard costs the distributor: jobs/s with and without an open page.

Run by hand from the repository root (see ``benchmarks/README.md``)::

    .venv/bin/python benchmarks/dashboard_overhead.py [--jobs 10000] [--rounds 3] [--slots 200]

Four measurements:

end to end
    The set-up of ``throughput.py`` (this process's distributor, one ``twistd jr-node``
    process, no-op jobs) plus a :class:`~jobreactor.web.Dashboard`. ``--jobs`` jobs are
    enqueued at once, ``--rounds`` times without a subscriber and ``--rounds`` times with one
    page subscribed to the overview's live stream (the Server-Sent Events the browser gets),
    alternating. Reported: jobs/s of each round and the slowdown of the medians.
statistics hooks
    The time one job spends in the four ``ClusterStats`` hooks (counted whether or not a
    page is open), and what that is at 10,000 jobs/s.
in-memory cluster
    CPU time (``process_time``, so less sensitive to other load on the machine) per no-op job
    through an in-memory distributor and node, with the statistics hooks and without.
push cost
    The time to build and send one overview snapshot while the distributor owns ``--held``
    jobs, and what that is as a share of one core at the push rate (4 per second): the
    dashboard's cost does not depend on the job rate, only on what is pending.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.internet import protocol, task
from twisted.internet.defer import Deferred
from twisted.web.client import Agent

sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import Burst, start_node, wait_for_node

from jobreactor import Distributor
from jobreactor.web import Dashboard
from jobreactor.web._live import PUSH_INTERVAL


class CountEvents(protocol.Protocol):
    """A subscribed page that only counts what it receives."""

    def __init__(self) -> None:
        self.events = 0
        self.bytes = 0

    def dataReceived(self, data: bytes) -> None:
        self.events += data.count(b"data: ")
        self.bytes += len(data)


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=10000, help="jobs per round (at once)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds with and without a page")
    parser.add_argument("--slots", type=int, default=200, help="the node's --slots")
    parser.add_argument("--held", type=int, default=10000, help="jobs pending for the push cost")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one round may take")
    options = parser.parse_args(argv)
    options.storage = "memory"
    return options


async def end_to_end(reactor: Any, options: argparse.Namespace) -> None:
    distributor = Distributor("tcp:0:interface=127.0.0.1", reactor=reactor)
    distributor.startService()
    await distributor.when_listening()
    dashboard = Dashboard(distributor, "tcp:0:interface=127.0.0.1", reactor=reactor)
    dashboard.startService()
    await dashboard.when_listening()
    workdir = Path(tempfile.mkdtemp(prefix="jobreactor-bench-"))
    node = start_node(reactor, distributor.address.port, options, workdir)
    rates: dict[bool, list[float]] = {False: [], True: []}
    pushes = 0
    try:
        await wait_for_node(reactor, distributor, node, timeout=30)
        await Burst(distributor, 200).run().addTimeout(options.timeout, reactor)  # warm-up
        for _ in range(options.rounds):
            for subscribed in (False, True):
                page = None
                if subscribed:
                    url = f"{dashboard.url}events?view=overview".encode()
                    response = await Agent(reactor).request(b"GET", url)
                    page = CountEvents()
                    response.deliverBody(page)
                burst = Burst(distributor, options.jobs)
                await burst.run().addTimeout(options.timeout, reactor)
                rates[subscribed].append(options.jobs / (burst.last - burst.first))
                if page is not None:
                    pushes += page.events
                    page.transport.stopProducing()  # type: ignore[union-attr]
    finally:
        await node.stop(reactor)
        await dashboard.stopService()
        await distributor.stopService()
    without, with_page = statistics.median(rates[False]), statistics.median(rates[True])
    print(f"end to end: {options.jobs} no-op jobs at once, 1 node (--slots {options.slots})")
    print(f"  without a subscribed page: {', '.join(f'{r:,.0f}' for r in rates[False])} jobs/s")
    print(f"  with one subscribed page:  {', '.join(f'{r:,.0f}' for r in rates[True])} jobs/s")
    print(
        f"  medians {without:,.0f} vs {with_page:,.0f} jobs/s: "
        f"{100 * (without - with_page) / without:+.1f} % slower with the page "
        f"({pushes} snapshots pushed)"
    )


def push_cost(options: argparse.Namespace) -> None:
    """Build-and-send time of one overview push with ``--held`` pending jobs (no sockets)."""
    from twisted.internet.task import Clock

    from jobreactor.web._resources import build_tree

    clock = Clock()
    distributor = Distributor(None, clock=clock)
    distributor.startService()
    for index in range(options.held):
        distributor.enqueue("noop", {"n": index})  # no node: they all wait
    _, live = build_tree(distributor, clock)
    render = live._render
    rounds = 50
    started = time.perf_counter()
    for _ in range(rounds):
        render("overview", None)
    seconds = (time.perf_counter() - started) / rounds
    share = seconds / PUSH_INTERVAL
    print(
        f"push cost: {seconds * 1000:.2f} ms per overview snapshot with {options.held:,} jobs "
        f"pending = {100 * share:.2f} % of one core at {1 / PUSH_INTERVAL:g} pushes/s"
    )


def hook_cost() -> None:
    """Time of the four statistics hooks one job passes through (always on, page or not)."""
    from jobreactor.model import Job, Report, Status
    from jobreactor.stats import ClusterStats

    class Now:
        """Just the clock's ``seconds()``: ``task.Clock.advance`` would dominate the timing."""

        now = 0.0

        def seconds(self) -> float:
            return self.now

    clock = Now()
    stats = ClusterStats(clock)  # type: ignore[arg-type]
    jobs = [Job(id=str(n), name=f"name_{n % 20}", args={}, enqueued_at=0.0) for n in range(10000)]
    reports = [
        Report(job.id, 1, Status.COMPLETE, "success", True, {}, duration=0.002) for job in jobs
    ]
    started = time.process_time()
    for job, report in zip(jobs, reports, strict=True):
        clock.now += 0.0001
        stats.enqueued(job)
        stats.sent(job)
        stats.reported(job, report)
        stats.finished(job, report, "node")
    per_job = (time.process_time() - started) / len(jobs)
    print(
        f"statistics hooks: {per_job * 1e6:.2f} µs per job = {per_job * 10000 * 100:.1f} % "
        "of one core at 10,000 jobs/s"
    )


def in_memory(jobs: int = 10000, rounds: int = 3) -> None:
    """CPU time per job of an in-memory cluster (distributor and node, one process), with the
    statistics hooks and with them replaced by no-ops: what counting costs the distributor."""
    from jobreactor import JobRegistry, job
    from jobreactor.definitions import registering_into
    from jobreactor.testing import LocalCluster

    registry = JobRegistry()
    with registering_into(registry):

        @job("noop")
        def noop(args: dict[str, Any]) -> None:
            return None

    class NoStats:
        def __getattr__(self, name: str) -> Any:
            return lambda *arguments, **keywords: None

    def per_job(counting: bool) -> float:
        cluster = LocalCluster(registry)
        cluster.add_node("worker", slots=200)
        cluster.run()
        if not counting:
            cluster.distributor.stats = NoStats()  # type: ignore[assignment]
        started = time.process_time()
        for _ in range(jobs):
            cluster.distributor.enqueue("noop", {})
        cluster.run()
        seconds = time.process_time() - started
        assert cluster.distributor.pending == 0
        cluster.stop()
        return seconds / jobs

    with_hooks, without = [], []
    for _ in range(rounds):
        with_hooks.append(per_job(True))
        without.append(per_job(False))
    on, off = statistics.median(with_hooks), statistics.median(without)
    print(
        f"in-memory cluster, CPU per job: {on * 1e6:.1f} µs counting, {off * 1e6:.1f} µs not: "
        f"{100 * (on - off) / off:+.1f} %"
    )


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_arguments(argv)
    hook_cost()
    in_memory()
    push_cost(options)

    def start(reactor: Any) -> Deferred[None]:
        return Deferred.fromCoroutine(end_to_end(reactor, options))

    task.react(start)


if __name__ == "__main__":
    main()
