"""End-to-end throughput and latency of no-op jobs: one distributor, one node process.

Run by hand from the repository root (see ``benchmarks/README.md``)::

    .venv/bin/python benchmarks/throughput.py [--jobs 2000] [--serial 500] [--slots 50]

The distributor runs in this process (``jobreactor.Distributor`` on a free loopback port);
the node is a separate ``twistd -n jr-node`` process, as in production. Two phases:

burst
    ``--jobs`` no-op jobs enqueued at once, each with a success feedback: jobs/s from the
    first ``enqueue`` to the last feedback, and p50/p99 of enqueue-to-feedback latency.
serial
    ``--serial`` jobs one at a time (the next is enqueued in the feedback of the previous):
    the round trip of a single job through distributor, AMP, node and back.

The node process is stopped at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.copyright import version as twisted_version
from twisted.internet import defer, error, protocol, task
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from jobreactor import Config, Distributor

ROOT = Path(__file__).resolve().parents[1]
TWISTD = str(Path(sys.executable).with_name("twistd"))
NODE_NAME = "bench"

JOBS_FILE = '''\
"""The benchmark's only job: does nothing, so what is measured is jobreactor itself."""

from jobreactor import job


@job("noop")
def noop(args):
    return None
'''


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="jobreactor end-to-end throughput and latency (1 distributor, 1 node process)"
    )
    parser.add_argument(
        "--jobs", type=int, default=2000, help="jobs enqueued at once in the burst phase"
    )
    parser.add_argument(
        "--serial", type=int, default=500, help="jobs run one at a time in the serial phase"
    )
    parser.add_argument("--slots", type=int, default=50, help="the node's --slots")
    parser.add_argument(
        "--queue-limit",
        type=int,
        default=None,
        help="the distributor's node_queue_limit (default: the setting's default; 0: no queue)",
    )
    parser.add_argument(
        "--storage", default="memory", help="the node's --storage (default: memory)"
    )
    parser.add_argument(
        "--distributor-storage",
        default="memory",
        help="the distributor's storage: memory, sqlite (a temporary file), sqlite:PATH or a "
        "redis:// URL (default: memory)",
    )
    parser.add_argument(
        "--warmup", type=int, default=50, help="jobs run before measuring (not counted)"
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds any one phase may take"
    )
    options = parser.parse_args(argv)
    for name in ("jobs", "serial", "slots"):
        if getattr(options, name) < 0 or (name == "slots" and options.slots < 1):
            parser.error(f"--{name} must be a positive number")
    return options


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending sequence (``fraction`` in 0..1)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(fraction * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


class NodeProcess(protocol.ProcessProtocol):
    """The ``twistd jr-node`` child: its output goes to a log file, ``ended`` fires at exit."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.log = log_path.open("wb")
        self.ended: Deferred[str] = Deferred()
        #: How the process ended: "exit code N" or "signal N".
        self.exit_status = "running"
        self.running = False

    def connectionMade(self) -> None:
        self.running = True

    def outReceived(self, data: bytes) -> None:
        self.log.write(data)

    def errReceived(self, data: bytes) -> None:
        self.log.write(data)

    def processEnded(self, reason: Failure) -> None:
        self.running = False
        self.log.close()
        value = reason.value
        if isinstance(value, error.ProcessTerminated) and value.signal is not None:
            self.exit_status = f"signal {value.signal}"
        else:
            self.exit_status = f"exit code {getattr(value, 'exitCode', 0)}"
        self.ended.callback(self.exit_status)

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, reactor: Any, grace: float = 10.0) -> Deferred[Any]:
        """SIGTERM, then SIGKILL after ``grace`` seconds; fires once the process is gone."""
        if not self.running:
            return defer.succeed(self.exit_status)
        self.transport.signalProcess("TERM")  # type: ignore[union-attr]

        def kill() -> None:
            if self.running:
                self.transport.signalProcess("KILL")  # type: ignore[union-attr]

        killer = reactor.callLater(grace, kill)

        def ended(code: Any) -> Any:
            if killer.active():
                killer.cancel()
            return code

        return self.ended.addBoth(ended)


def start_node(reactor: Any, port: int, options: argparse.Namespace, workdir: Path) -> NodeProcess:
    jobs_dir = workdir / "reactor_jobs"
    jobs_dir.mkdir()
    (jobs_dir / "noop.py").write_text(JOBS_FILE)
    command = [
        TWISTD, "-n", "--pidfile=", "jr-node",
        "--name", NODE_NAME,
        "--jobs", str(jobs_dir),
        "--distributor", f"tcp:host=127.0.0.1:port={port}",
        "--slots", str(options.slots),
        "--storage", options.storage,
    ]  # fmt: skip
    env = dict(os.environ)
    # The repository on the path, so twistd finds twisted/plugins/jobreactor_plugins.py.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    node = NodeProcess(workdir / "node.log")
    reactor.spawnProcess(node, TWISTD, command, env=env, path=str(workdir))
    return node


async def wait_for_node(
    reactor: Any, distributor: Distributor, node: NodeProcess, timeout: float
) -> None:
    joined = distributor.when_nodes(1, [NODE_NAME]).addTimeout(timeout, reactor)

    def died(code: Any) -> Any:
        if not joined.called:
            joined.cancel()
        return code

    node.ended.addBoth(died)
    try:
        await joined
    except defer.CancelledError:
        raise SystemExit(
            f"the node ended ({node.exit_status}) before joining:\n{node.tail()}"
        ) from None
    except defer.TimeoutError:
        raise SystemExit(f"the node did not join within {timeout:g} s:\n{node.tail()}") from None


class Burst:
    """Enqueue ``count`` jobs at once; fire ``done`` when every feedback has arrived."""

    def __init__(self, distributor: Distributor, count: int) -> None:
        self.distributor = distributor
        self.count = count
        self.started: list[float] = [0.0] * count
        self.latencies: list[float] = []
        self.failures: list[dict[str, Any]] = []
        self.done: Deferred[None] = Deferred()
        self.first = 0.0
        self.last = 0.0

    def run(self) -> Deferred[None]:
        if self.count == 0:
            self.done.callback(None)
            return self.done
        self.first = time.perf_counter()
        for index in range(self.count):
            self.started[index] = time.perf_counter()
            self.distributor.enqueue(
                "noop",
                {"n": index},
                success=self._success,
                error=self._error,
            )
        return self.done

    def _finished_one(self) -> None:
        if len(self.latencies) + len(self.failures) == self.count:
            self.last = time.perf_counter()
            self.done.callback(None)

    def _success(self, args: dict[str, Any]) -> None:
        self.latencies.append(time.perf_counter() - self.started[args["n"]])
        self._finished_one()

    def _error(self, args: dict[str, Any]) -> None:
        self.failures.append(args)
        self._finished_one()


class Serial:
    """Run ``count`` jobs one after another, each enqueued in the previous one's feedback."""

    def __init__(self, distributor: Distributor, count: int) -> None:
        self.distributor = distributor
        self.count = count
        self.latencies: list[float] = []
        self.failures: list[dict[str, Any]] = []
        self.done: Deferred[None] = Deferred()
        self.first = 0.0
        self.last = 0.0
        self._sent_at = 0.0

    def run(self) -> Deferred[None]:
        self.first = time.perf_counter()
        self._next()
        return self.done

    def _next(self) -> None:
        if len(self.latencies) + len(self.failures) == self.count:
            self.last = time.perf_counter()
            self.done.callback(None)
            return
        self._sent_at = time.perf_counter()
        self.distributor.enqueue("noop", {}, success=self._success, error=self._error)

    def _success(self, args: dict[str, Any]) -> None:
        self.latencies.append(time.perf_counter() - self._sent_at)
        self._next()

    def _error(self, args: dict[str, Any]) -> None:
        self.failures.append(args)
        self._next()


def row(name: str, jobs: int, seconds: float, latencies: list[float]) -> str:
    ordered = sorted(latencies)
    rate = jobs / seconds if seconds > 0 else float("nan")
    return (
        f"{name:<24}{jobs:>7}{seconds:>10.3f}{rate:>10.0f}"
        f"{percentile(ordered, 0.50) * 1000:>10.2f}{percentile(ordered, 0.99) * 1000:>10.2f}"
        f"{(ordered[-1] if ordered else float('nan')) * 1000:>10.2f}"
    )


async def measure(reactor: Any, options: argparse.Namespace) -> None:
    storage = options.distributor_storage
    if storage == "sqlite":
        storage = f"sqlite:{tempfile.mkdtemp(prefix='jobreactor-bench-')}/distributor.db"
    limit = options.queue_limit
    config = Config() if limit is None else Config(node_queue_limit=limit)
    distributor = Distributor(
        "tcp:0:interface=127.0.0.1", storage=storage, reactor=reactor, config=config
    )
    distributor.startService()
    await distributor.when_listening()
    port = distributor.address.port
    workdir = Path(tempfile.mkdtemp(prefix="jobreactor-bench-"))
    node = start_node(reactor, port, options, workdir)
    # Ctrl-C stops the reactor without finishing this coroutine: never leave the node behind.
    reactor.addSystemEventTrigger(
        "before",
        "shutdown",
        lambda: node.transport.signalProcess("KILL") if node.running else None,  # type: ignore[union-attr]
    )
    try:
        await wait_for_node(reactor, distributor, node, timeout=30)
        if options.warmup:
            await Burst(distributor, options.warmup).run().addTimeout(options.timeout, reactor)

        burst = Burst(distributor, options.jobs)
        await burst.run().addTimeout(options.timeout, reactor)
        serial = Serial(distributor, options.serial)
        await serial.run().addTimeout(options.timeout, reactor)
    finally:
        ended = await node.stop(reactor)
        stopped = distributor.stopService()
        if stopped is not None:
            await stopped

    print()
    print(
        f"jobreactor {_version()} · Python {platform.python_version()} · "
        f"Twisted {twisted_version} · {os.cpu_count()} CPUs · {platform.machine()}"
    )
    print(
        f"1 distributor (this process) → 1 node (twistd jr-node, --slots {options.slots}, "
        f"--storage {options.storage}), distributor storage {options.distributor_storage}, "
        "loopback TCP, no-op job with a success feedback"
    )
    print()
    header = f"{'phase':<24}{'jobs':>7}{'seconds':>10}{'jobs/s':>10}"
    print(header + f"{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    print("-" * (len(header) + 30))
    print(row("burst (all at once)", burst.count, burst.last - burst.first, burst.latencies))
    print(row("serial (1 outstanding)", serial.count, serial.last - serial.first, serial.latencies))
    print()
    print("latency: enqueue() to success feedback, both in this process")
    failures = burst.failures + serial.failures
    if failures:
        print(f"{len(failures)} jobs failed; the first: {failures[0]}")
    print(f"node stopped with SIGTERM: {ended}")
    print(f"node log: {workdir / 'node.log'}")
    if failures:
        raise SystemExit(1)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("jobreactor")
    except Exception:
        return "(not installed)"


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_arguments(argv)
    if not Path(TWISTD).exists():
        raise SystemExit(f"twistd not found next to {sys.executable}")

    def start(reactor: Any) -> Deferred[None]:
        return Deferred.fromCoroutine(measure(reactor, options))

    task.react(start)


if __name__ == "__main__":
    main()
