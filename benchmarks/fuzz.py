"""Fuzz a real distributor and node with hostile input while a legitimate client works.

Run by hand from the repository root (see ``benchmarks/README.md``)::

    .venv/bin/python benchmarks/fuzz.py [--inputs 100000] [--rate 2500] [--seed 1]

Starts ``twistd -n jr-distributor`` and ``twistd -n jr-node`` as separate processes, then,
from this process, a legitimate client (``jobreactor.connect``) that enqueues a job every
``--interval`` seconds and times each one to its success feedback, and ``--connections``
hostile TCP connections that send ``--inputs`` inputs: AMP boxes made from a grammar of our
commands (sent before and after a ``Hello``, with malformed, huge, deep, NaN, lone
surrogate and out-of-range values), broken framing, raw bytes, and now and then a box that
never ends. Hostile peers say ``Hello`` with 0 slots (clients): a peer that joins as a node
can take jobs and keep them, which is for authentication (issue 11) to stop.

It prints: crashed processes, tracebacks and CRITICAL lines in their logs, the legitimate
client's lost and duplicated feedbacks and its latency (p50 / p99 / worst), and the
distributor's RSS before and at its peak (``VmHWM``). Exit status 1 if any target is missed
(0 crashes, 0 tracebacks, 0 lost, 0 duplicated, worst latency < 100 ms, RSS growth < 50 MB).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from twisted.internet import defer, protocol, task
from twisted.internet.defer import Deferred

from jobreactor import Client, connect

ROOT = Path(__file__).resolve().parents[1]
TWISTD = str(Path(sys.executable).with_name("twistd"))

JOBS_FILE = '''\
"""The fuzz benchmark's job: echoes its number back."""

from jobreactor import job


@job("echo")
def echo(args):
    return {"n": args.get("n")}
'''

COMMANDS = [b"Hello", b"Enqueue", b"JobsDone", b"CancelJobs", b"Leaving", b"Heartbeat"]
COMMANDS += [b"Outcomes", b"RunJobs", b"Nonsense", b"\x00\xff"]
#: A job nested 100 deep: past the depth limit, not so far that its whole box is refused.
DEEP_JOB = b'[{"id":"d","name":"echo","args":{"a":' + b"[" * 100 + b"]" * 100 + b"}}]"


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="fuzz a real distributor and node")
    parser.add_argument("--inputs", type=int, default=100_000, help="hostile inputs to send")
    parser.add_argument("--rate", type=float, default=2500.0, help="hostile inputs per second")
    parser.add_argument("--connections", type=int, default=20, help="hostile connections")
    parser.add_argument(
        "--per-connection", type=int, default=40, help="inputs before a hostile peer reconnects"
    )
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between legit jobs")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--baseline", type=float, default=5.0, help="seconds the legit client runs alone first"
    )
    parser.add_argument("--keep", action="store_true", help="keep the logs' directory")
    parser.add_argument(
        "--fuzz-port", type=int, default=None, help=argparse.SUPPRESS
    )  # internal: run only the hostile peers, against this port (a child process)
    return parser.parse_args(argv)


# -- the grammar ---------------------------------------------------------------------------


class Grammar:
    """Random inputs shaped like our commands, from a seeded ``random.Random``."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def leaf(self) -> Any:
        r = self.rng
        if r.random() < 0.02:
            return "x" * 70_000  # a value above AMP's 64 KiB: split across keys
        return r.choice(
            [
                None,
                True,
                r.randint(-(2**70), 2**70),
                r.random() * 10 ** r.randint(-5, 300),
                "".join(chr(r.randint(1, 0x2FF)) for _ in range(r.randint(0, 12))),
                "\x1b[2J\x07",
                "x" * r.choice([10, 300]),
            ]
        )

    def value(self, depth: int = 0) -> Any:
        r = self.rng
        kind = r.random()
        if depth > 3 or kind < 0.5:
            return self.leaf()
        if kind < 0.75:
            return [self.value(depth + 1) for _ in range(r.randint(0, 4))]
        return {f"k{r.randint(0, 9)}": self.value(depth + 1) for _ in range(r.randint(0, 4))}

    def job(self) -> dict[str, Any]:
        r = self.rng
        fields: dict[str, Any] = {
            "id": f"fuzz-{r.getrandbits(48):x}",
            "name": r.choice(["nope", "missing", "echo", "", "x" * 400]),
            "args": {"n": self.value()},
        }
        extra: dict[str, Callable[[], Any]] = {
            "timeout": lambda: r.choice([-1, 0, 1e308, "1", self.leaf()]),
            "retry_delay": lambda: r.choice([-1, 0, 2, self.leaf()]),
            "run_at": lambda: r.choice([0, -1e300, 1e300, self.leaf()]),
            "status": lambda: r.choice(["new", "complete", "nope"]),
            "run": lambda: r.choice([-1, 0, 2**64]),
            "last_error": lambda: "e" * r.choice([10, 20_000]),
            "not_node": lambda: r.choice([[], ["a"] * 5, self.leaf()]),
            "priority": lambda: r.choice([0, 5000, self.leaf()]),
            "defer": lambda: r.choice([True, "false"]),
            "bogus": self.leaf,
        }
        for name in r.sample(sorted(extra), r.randint(0, 3)):
            fields[name] = extra[name]()
        if fields["name"] == "nope" and r.random() < 0.3:
            fields["period"] = r.choice([0, 0.0001, 0.1, 1])  # fails at once on the node
        if r.random() < 0.2:
            del fields[r.choice(["id", "name", "args"])]
        return fields

    def json_bytes(self) -> bytes:
        r = self.rng
        choice = r.random()
        if choice < 0.45:
            return json.dumps([self.job() for _ in range(r.randint(0, 6))]).encode()
        if choice < 0.6:
            return json.dumps(self.value()).encode()
        return r.choice(
            [
                b"[NaN]",
                b'[{"id": NaN}]',
                b'["\\ud800"]',
                b'[{"id": "a\\udc00", "name": "echo", "args": {}}]',
                b"[" * 900 + b"]" * 900,
                DEEP_JOB,
                b"[" + b"{}," * 3000 + b"{}]",
                b"{not json",
                b"",
                bytes(r.getrandbits(8) for _ in range(r.randint(1, 30))),
            ]
        )

    def box(self, hello: bool = False) -> bytes:
        r = self.rng
        if hello:
            values = {
                b"name": f"fuzz-{r.getrandbits(32):x}".encode(),
                b"slots": b"0",
                b"version": r.choice([b"1", b"1", b"2", b"x"]),
                b"held": b"[]",
            }
            command = b"Hello"
        else:
            command = r.choice(COMMANDS)
            keys = [b"jobs", b"reports", b"job_ids", b"held", b"name", b"slots", b"version"]
            values = {r.choice(keys): self.json_bytes() for _ in range(r.randint(0, 3))}
            if command == b"Hello":
                values[b"slots"] = r.choice([b"0", b"-1", b"x", b"99999999999999999999"])
        pairs = [(b"_command", command), *values.items()]
        if r.random() < 0.7:
            pairs.append((b"_ask", str(r.getrandbits(20)).encode()))
        out = bytearray()
        for key, value in pairs:
            value = value[:65535]
            # a long value goes out split, as the JSON argument splits it
            chunks = [value[i : i + 65535] for i in range(0, len(value), 65535)] or [b""]
            for index, chunk in enumerate(chunks):
                name = key if index == 0 else key + b".%d" % (index + 1)
                out += struct.pack("!H", len(name)) + name + struct.pack("!H", len(chunk)) + chunk
        out += b"\x00\x00"
        return bytes(out)

    def chunk(self, said_hello: bool) -> tuple[bytes, bool]:
        """One input for a connection; True if it closes the connection by design."""
        r = self.rng
        choice = r.random()
        if choice < 0.0004:  # a box that never ends (the distributor closes it)
            head = struct.pack("!H", 1) + b"k"
            return (head + struct.pack("!H", 65535) + b"v" * 65535) * 140, True
        if choice < 0.75:
            return self.box(), False
        if choice < 0.85:
            data = self.box()
            return data[: r.randint(1, max(1, len(data) - 1))], True  # cut short
        if choice < 0.93:
            return struct.pack("!H", 65535) + b"x" * r.randint(0, 100), True  # key too long
        return bytes(r.getrandbits(8) for _ in range(r.randint(1, 200))), True


# -- the hostile peers ---------------------------------------------------------------------


class Hostile(protocol.Protocol):
    def __init__(self, done: Deferred[None]) -> None:
        self.done = done
        self.received = 0

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.callback(None)


class Fuzzer:
    def __init__(self, reactor: Any, port: int, options: argparse.Namespace) -> None:
        self.reactor = reactor
        self.port = port
        self.options = options
        self.grammar = Grammar(random.Random(options.seed))
        self.sent = 0
        self.closed_by_design = 0

    async def peer(self) -> None:
        options = self.options
        while self.sent < options.inputs:
            done: Deferred[None] = Deferred()
            creator = protocol.ClientCreator(self.reactor, Hostile, done)
            try:
                peer: Hostile = await creator.connectTCP("127.0.0.1", self.port, timeout=5)
            except Exception:
                await task.deferLater(self.reactor, 0.05, lambda: None)
                continue
            transport: Any = peer.transport
            said_hello = self.grammar.rng.random() < 0.6
            if said_hello:
                transport.write(self.grammar.box(hello=True))
            for _ in range(options.per_connection):
                if self.sent >= options.inputs or done.called:
                    break
                data, closes = self.grammar.chunk(said_hello)
                transport.write(data)
                self.sent += 1
                pause = options.connections / options.rate
                await task.deferLater(self.reactor, pause, lambda: None)
                if closes:
                    self.closed_by_design += 1
                    break
            transport.loseConnection()
            await done

    async def run(self) -> None:
        peers = [defer.ensureDeferred(self.peer()) for _ in range(self.options.connections)]
        await defer.gatherResults(peers)


# -- the legitimate client -----------------------------------------------------------------


class Legit:
    def __init__(self, reactor: Any, client: Client, interval: float) -> None:
        self.reactor = reactor
        self.client = client
        self.interval = interval
        self.started: dict[int, float] = {}
        self.latencies: list[float] = []
        self.feedbacks: Counter[int] = Counter()
        self.errors: list[Any] = []
        self._loop = task.LoopingCall(self.enqueue_one)
        self._next = 0

    def start(self) -> None:
        self._loop.start(self.interval)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def enqueue_one(self) -> None:
        n = self._next
        self._next += 1
        self.started[n] = time.perf_counter()
        self.client.enqueue("echo", {"n": n}, success=self.succeeded, error=self.errors.append)

    def succeeded(self, result: dict[str, Any]) -> None:
        n = result["n"]
        self.feedbacks[n] += 1
        if self.feedbacks[n] == 1:
            self.latencies.append(time.perf_counter() - self.started[n])


# -- processes -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def rss_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def problems_in(log: Path) -> list[str]:
    """Traceback and CRITICAL lines in ``log`` and its rotated parts (twistd rotates at 1 MB)."""
    lines = [
        line
        for part in sorted(log.parent.glob(log.name + "*"))
        for line in part.read_text(errors="replace").splitlines()
    ]
    return [
        line[:300]
        for line in lines
        if "Traceback" in line or "#critical]" in line or "Unhandled error" in line
    ]


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


async def run(reactor: Any, options: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="jr-fuzz-"))
    (workdir / "jobs").mkdir()
    (workdir / "jobs" / "echo.py").write_text(JOBS_FILE)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    port = free_port()
    distributor = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", f"--logfile={workdir / 'distributor.log'}",
         "jr-distributor", "--listen", f"tcp:{port}:interface=127.0.0.1"],
        cwd=workdir, env=env,
    )  # fmt: skip
    node = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", f"--logfile={workdir / 'node.log'}",
         "jr-node", "--name", "fuzz-node", "--jobs", str(workdir / "jobs"),
         "--distributor", f"tcp:host=127.0.0.1:port={port}", "--slots", "50"],
        cwd=workdir, env=env,
    )  # fmt: skip
    client: Client | None = None
    try:
        client = connect(f"tcp:host=127.0.0.1:port={port}", name="legit")
        await client.when_connected().addTimeout(30, reactor)
        legit = Legit(reactor, client, options.interval)
        # warm up: one job through, so the node is there and the RSS baseline is steady
        warm: Deferred[Any] = client.enqueue("echo", {"n": -1}).deferred
        await warm.addTimeout(60, reactor)
        await task.deferLater(reactor, 1.0, lambda: None)
        # the same client alone first: its latency on this machine without hostile input
        alone = Legit(reactor, client, options.interval)
        alone._next = 1_000_000_000
        alone.start()
        await task.deferLater(reactor, options.baseline, lambda: None)
        alone.stop()
        await task.deferLater(reactor, 1.0, lambda: None)
        rss_before = rss_kib(distributor.pid, "VmRSS")
        cpu_before = cpu_seconds(distributor.pid)
        started = time.monotonic()
        legit.start()
        # The hostile peers run in a process of their own: making inputs costs CPU, which
        # must not delay the legitimate client whose latency is measured here.
        fuzzer = await run_fuzzer_process(reactor, port, options)
        fuzz_seconds = time.monotonic() - started
        cpu_used = cpu_seconds(distributor.pid) - cpu_before
        legit.stop()
        # let the last legit jobs finish
        for _ in range(100):
            if len(legit.feedbacks) + len(legit.errors) >= legit._next:
                break
            await task.deferLater(reactor, 0.1, lambda: None)
        peak = rss_kib(distributor.pid, "VmHWM")
        crashed = [name for name, p in (("distributor", distributor), ("node", node)) if p.poll()]
        crashed += [
            f"{name} (exit {p.returncode})"
            for name, p in (("distributor", distributor), ("node", node))
            if p.returncode is not None and name not in crashed
        ]
        traces = problems_in(workdir / "distributor.log") + problems_in(workdir / "node.log")
        enqueued = legit._next
        lost = enqueued - len(legit.feedbacks) - len(legit.errors)
        duplicated = sum(count - 1 for count in legit.feedbacks.values() if count > 1)
        worst = max(legit.latencies, default=0.0)
        print(f"hostile inputs sent:      {fuzzer.sent} in {fuzz_seconds:.1f} s "
              f"over {options.connections} connections (seed {options.seed})")  # fmt: skip
        share = 100 * cpu_used / max(fuzz_seconds, 1e-9)
        load = os.getloadavg()[0]
        print(
            f"distributor CPU:          {cpu_used:.1f} s in {fuzz_seconds:.1f} s ({share:.0f} % "
            f"of one core); load average {load:.1f} on {os.cpu_count()} cores"
        )
        print(f"crashed processes:        {len(crashed)} {crashed or ''}")
        print(f"tracebacks / CRITICAL:    {len(traces)}")
        for line in traces[:10]:
            print(f"    {line}")
        print(f"legit jobs enqueued:      {enqueued}")
        print(f"legit lost / duplicated:  {lost} / {duplicated} (errors: {len(legit.errors)})")
        print(
            f"legit latency alone:      p50 {percentile(alone.latencies, 0.5) * 1000:.1f} ms, "
            f"p99 {percentile(alone.latencies, 0.99) * 1000:.1f} ms, "
            f"worst {max(alone.latencies, default=0.0) * 1000:.1f} ms "
            f"({len(alone.latencies)} jobs in {options.baseline:g} s before the fuzzing)"
        )
        print(
            f"legit latency:            p50 {percentile(legit.latencies, 0.5) * 1000:.1f} ms, "
            f"p99 {percentile(legit.latencies, 0.99) * 1000:.1f} ms, worst {worst * 1000:.1f} ms"
        )
        growth = (peak - rss_before) / 1024
        print(f"distributor RSS:          {rss_before / 1024:.1f} MB before, "
              f"peak {peak / 1024:.1f} MB (growth {growth:.1f} MB)")  # fmt: skip
        print(f"logs in:                  {workdir}")
        missed = (
            crashed or traces or lost or duplicated or legit.errors or worst >= 0.1 or growth >= 50
        )
        return 1 if missed else 0
    finally:
        if client is not None:
            await client.stopService()
        for process in (node, distributor):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in (node, distributor):
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


class FuzzerResult:
    def __init__(self, sent: int) -> None:
        self.sent = sent


async def run_fuzzer_process(reactor: Any, port: int, options: argparse.Namespace) -> Any:
    command = [sys.executable, __file__, "--fuzz-port", str(port)]
    for name in ("inputs", "rate", "connections", "per_connection", "seed"):
        command += [f"--{name.replace('_', '-')}", str(getattr(options, name))]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    while child.poll() is None:
        await task.deferLater(reactor, 0.2, lambda: None)
    out = child.stdout.read() if child.stdout is not None else ""
    sent = int(out.split()[-1]) if out.split() else 0
    return FuzzerResult(sent)


async def fuzz_only(reactor: Any, options: argparse.Namespace) -> int:
    fuzzer = Fuzzer(reactor, options.fuzz_port, options)
    await fuzzer.run()
    print(f"sent {fuzzer.sent}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from twisted.internet import reactor

    options = parse_arguments(argv)
    status: list[int] = []
    body = run if options.fuzz_port is None else fuzz_only
    done = defer.ensureDeferred(body(reactor, options))
    done.addCallback(status.append)

    def failed(failure: Any) -> None:
        failure.printTraceback()
        status.append(2)

    done.addErrback(failed)
    done.addBoth(lambda _: reactor.stop())
    reactor.run()  # type: ignore[attr-defined]
    return status[0] if status else 2


if __name__ == "__main__":
    sys.exit(main())
