"""Every figure of the performance table, measured on this machine and printed beside its target.

Run by hand from the repository root (it takes a few minutes; ``--quick`` for a smaller run)::

    .venv/bin/python benchmarks/figures.py [--quick] [--only NAME ...]

Each figure is measured in fresh processes, as in production (``twistd jr-node``,
``twistd jr-distributor``, a remote client), on loopback TCP with a no-op job:

burst-embedded / serial-embedded
    ``benchmarks/throughput.py``: a distributor in the benchmark process, one node process.
dist-sqlite / dist-redis
    the same burst with the distributor's storage on SQLite / Redis (durability, issue 10).
node-sqlite / node-redis
    the same burst with the node's storage on SQLite / Redis.
burst-remote / cpu
    a client process → ``twistd jr-distributor`` → one ``twistd jr-node``: jobs/s, and CPU
    seconds per job of each process read from /proc.
waiting
    RSS of a distributor holding N waiting jobs (no node), scaled to one million.
client-waiting
    RSS of a remote client holding N jobs without an outcome (not connected: a client keeps
    every job until a distributor owns it), scaled to one million.
idle
    CPU seconds per minute of an idle distributor and node.
import
    RSS of bare Python, of a process that imported jobreactor, and of an idle
    ``twistd jr-distributor`` and ``twistd jr-node`` (joined, no jobs, no TLS).

Redis figures need ``redis-server`` on the PATH (a private one is started on a free port).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TWISTD = str(Path(PYTHON).with_name("twistd"))
TICKS = os.sysconf("SC_CLK_TCK")

JOBS_FILE = """
from jobreactor import job

@job("noop")
def noop(args):
    return None
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def env() -> dict[str, str]:
    values = dict(os.environ)
    values["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), values.get("PYTHONPATH")]))
    return values


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextmanager
def redis_server() -> Iterator[str | None]:
    if shutil.which("redis-server") is None:
        yield None
        return
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="jr-figures-redis-")
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(0.5)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


def throughput(jobs: int, serial: int, *extra: str) -> dict[str, tuple[float, float, float]]:
    """Run throughput.py; return phase -> (jobs/s, p50 ms, p99 ms)."""
    command = [PYTHON, str(ROOT / "benchmarks" / "throughput.py"), "--jobs", str(jobs),
               "--serial", str(serial), *extra]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env())
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    found = {}
    for line in done.stdout.splitlines():
        match = re.match(
            r"(burst|serial) .*?\s(\d+)\s+([\d.]+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)", line
        )
        if match:
            found[match.group(1)] = (
                float(match.group(4)),
                float(match.group(5)),
                float(match.group(6)),
            )
    return found


class Cluster:
    """``twistd jr-distributor`` and one ``twistd jr-node`` in a temporary directory."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="jr-figures-"))
        (self.workdir / "jobs").mkdir()
        (self.workdir / "jobs" / "noop.py").write_text(JOBS_FILE)
        self.port = free_port()
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> tuple[int, int]:
        distributor = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", f"--logfile={self.workdir / 'dist.log'}",
             "jr-distributor", "--listen", f"tcp:{self.port}:interface=127.0.0.1"],
            cwd=self.workdir, env=env(),
        )  # fmt: skip
        self.processes.append(distributor)
        node = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", f"--logfile={self.workdir / 'node.log'}",
             "jr-node", "--name", "bench", "--jobs", str(self.workdir / "jobs"),
             "--distributor", f"tcp:host=127.0.0.1:port={self.port}"],
            cwd=self.workdir, env=env(),
        )  # fmt: skip
        self.processes.append(node)
        for _ in range(300):
            log = self.workdir / "node.log"
            if log.exists() and "joined distributor" in log.read_text():
                return distributor.pid, node.pid
            time.sleep(0.1)
        raise RuntimeError("the node did not join within 30 s")

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


CLIENT_BURST = """
import sys, time, resource
from twisted.internet import defer, task
from jobreactor import connect

async def main(reactor):
    client = connect(sys.argv[1], name="figures")
    await client.when_connected()
    count = int(sys.argv[2])
    for warm in [client.enqueue("noop", {}) for _ in range(200)]:
        await warm.deferred
    usage = resource.getrusage(resource.RUSAGE_SELF)
    before = usage.ru_utime + usage.ru_stime
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.perf_counter()
    await defer.gatherResults([client.enqueue("noop", {"n": n}).deferred for n in range(count)])
    took = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"done {took} {usage.ru_utime + usage.ru_stime - before}", flush=True)
    await client.stopService()

task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
"""


def remote_burst(jobs: int) -> dict[str, float]:
    cluster = Cluster()
    try:
        dist_pid, node_pid = cluster.start()
        client = subprocess.Popen(
            [PYTHON, "-c", CLIENT_BURST, f"tcp:host=127.0.0.1:port={cluster.port}", str(jobs)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env(),
        )  # fmt: skip
        assert client.stdout is not None and client.stdin is not None
        if client.stdout.readline().strip() != "ready":
            raise RuntimeError("the client did not connect")
        dist_before, node_before = cpu_seconds(dist_pid), cpu_seconds(node_pid)
        client.stdin.write("go\n")
        client.stdin.flush()
        line = client.stdout.readline().split()
        client.wait(60)
        took, client_cpu = float(line[1]), float(line[2])
        return {
            "jobs/s": jobs / took,
            "distributor us/job": (cpu_seconds(dist_pid) - dist_before) / jobs * 1e6,
            "node us/job": (cpu_seconds(node_pid) - node_before) / jobs * 1e6,
            "client us/job": client_cpu / jobs * 1e6,
        }
    finally:
        cluster.stop()


WAITING = """
import sys
from twisted.internet import task
from jobreactor import Config, Distributor

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

clock = task.Clock()
count = int(sys.argv[1])
# The caps on waiting jobs (100,000 and 512 MiB by default) would refuse the millionth.
config = Config(max_waiting_jobs=count + 1, max_waiting_bytes=count * 2048)
distributor = Distributor(None, clock=clock, config=config)
distributor.startService()
before = rss()
for n in range(count):
    distributor.enqueue("noop", {"n": n})
print(rss() - before)
"""


def waiting_rss(count: int) -> float:
    done = subprocess.run(
        [PYTHON, "-c", WAITING, str(count)], capture_output=True, text=True, env=env(), timeout=900
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return float(done.stdout.split()[-1]) * 1_000_000 / count


CLIENT_WAITING = """
import sys
from jobreactor.client import Client
from jobreactor.config import Config

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

count = int(sys.argv[1])
config = Config(max_waiting_jobs_per_sender=count + 1)
client = Client("tcp:host=127.0.0.1:port=1", config=config)  # never started: not connected
before = rss()
for n in range(count):
    client.enqueue("noop", {"n": n})  # the client keeps the handle until the job's outcome
print(rss() - before)
"""


def client_waiting_rss(count: int) -> float:
    """MB per million jobs held by a client that is not connected."""
    done = subprocess.run(
        [PYTHON, "-c", CLIENT_WAITING, str(count)],
        capture_output=True, text=True, env=env(), timeout=900,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return float(done.stdout.split()[-1]) * 1_000_000 / count


def idle_cpu(seconds: float) -> float:
    cluster = Cluster()
    try:
        dist_pid, node_pid = cluster.start()
        time.sleep(2)
        before = cpu_seconds(dist_pid) + cpu_seconds(node_pid)
        time.sleep(seconds)
        return (cpu_seconds(dist_pid) + cpu_seconds(node_pid) - before) * 60 / seconds
    finally:
        cluster.stop()


def import_rss() -> dict[str, float]:
    """RSS in MB: bare Python, ``import jobreactor``, and an idle distributor and node."""
    probe = "import {};import os;print(open('/proc/self/status').read())"
    found = {}
    for module in ("os", "jobreactor"):
        done = subprocess.run(
            [PYTHON, "-c", probe.format(module)], capture_output=True, text=True, env=env()
        )
        match = re.search(r"VmRSS:\s+(\d+)", done.stdout)
        found[module] = int(match.group(1)) / 1024 if match else float("nan")
    cluster = Cluster()
    try:
        dist_pid, node_pid = cluster.start()
        time.sleep(2)
        found["distributor"], found["node"] = rss_mb(dist_pid), rss_mb(node_pid)
    finally:
        cluster.stop()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (less precise)")
    parser.add_argument("--only", nargs="*", help="figures to measure (names as printed)")
    options = parser.parse_args()
    jobs = 5_000 if options.quick else 20_000
    serial = 300 if options.quick else 1_000
    wanted: Callable[[str], bool] = lambda name: not options.only or name in options.only  # noqa: E731
    print(f"jobreactor figures · {os.cpu_count()} CPUs · Python {sys.version.split()[0]}")
    print(f"{'figure':<34}{'measured':>18}   target")

    def show(name: str, value: str, target: str) -> None:
        print(f"{name:<34}{value:>18}   {target}", flush=True)

    if wanted("burst-embedded") or wanted("serial-embedded"):
        found = throughput(jobs, serial)
        show("burst, embedded + 1 node", f"{found['burst'][0]:,.0f} jobs/s", ">= 30,000 jobs/s")
        show(
            "one at a time, embedded",
            f"p50 {found['serial'][1]:.2f} p99 {found['serial'][2]:.2f} ms",
            "p50 <= 0.4 ms, p99 <= 1 ms",
        )
    if wanted("dist-sqlite"):
        found = throughput(jobs, 0, "--distributor-storage", "sqlite")
        show("burst, distributor on sqlite:", f"{found['burst'][0]:,.0f} jobs/s", ">= 5,000 jobs/s")
    if wanted("node-sqlite"):
        db = Path(tempfile.mkdtemp(prefix="jr-figures-")) / "node.db"
        found = throughput(jobs, 0, "--storage", f"sqlite:{db}")
        show("burst, node on sqlite:", f"{found['burst'][0]:,.0f} jobs/s", ">= 5,000 jobs/s")
    if wanted("dist-redis") or wanted("node-redis"):
        with redis_server() as url:
            if url is None:
                show("redis figures", "skipped", "redis-server is not installed")
            else:
                if wanted("dist-redis"):
                    found = throughput(jobs, 0, "--distributor-storage", f"{url}?prefix=d")
                    show(
                        "burst, distributor on redis://",
                        f"{found['burst'][0]:,.0f} jobs/s",
                        ">= 10,000 jobs/s",
                    )
                if wanted("node-redis"):
                    found = throughput(jobs, 0, "--storage", f"{url}?prefix=n")
                    show(
                        "burst, node on redis://",
                        f"{found['burst'][0]:,.0f} jobs/s",
                        ">= 10,000 jobs/s",
                    )
    if wanted("burst-remote") or wanted("cpu"):
        # A client holds at most max_waiting_jobs_per_sender (10,000) jobs without an outcome.
        found_remote = remote_burst(min(jobs, 10_000))
        show(
            "burst, remote client -> standalone",
            f"{found_remote['jobs/s']:,.0f} jobs/s",
            ">= 15,000 jobs/s",
        )
        show(
            "CPU per job, distributor + node",
            f"{found_remote['distributor us/job'] + found_remote['node us/job']:.0f} us",
            "<= 60 us",
        )
        show("  of which the distributor", f"{found_remote['distributor us/job']:.0f} us", "")
        show("  of which the node", f"{found_remote['node us/job']:.0f} us", "")
        show("CPU per job, client", f"{found_remote['client us/job']:.0f} us", "<= 20 us")
    if wanted("waiting"):
        count = 100_000 if options.quick else 1_000_000
        show("1,000,000 jobs waiting: distributor", f"{waiting_rss(count):,.0f} MB", "<= 400 MB")
    if wanted("client-waiting"):
        count = 100_000 if options.quick else 1_000_000
        show("1,000,000 jobs waiting: client", f"{client_waiting_rss(count):,.0f} MB", "<= 300 MB")
    if wanted("idle"):
        show(
            "idle distributor + node",
            f"{idle_cpu(10 if options.quick else 60):.2f} CPU s/min",
            "< 0.1 s",
        )
    if wanted("import"):
        rss = import_rss()
        target = f"<= 25 MB (bare Python {rss['os']:.0f} MB)"
        show("idle process RSS (import jobreactor)", f"{rss['jobreactor']:.0f} MB", target)
        show("idle twistd jr-distributor RSS", f"{rss['distributor']:.0f} MB", target)
        show("idle twistd jr-node RSS", f"{rss['node']:.0f} MB", target)


if __name__ == "__main__":
    main()
