"""Real processes on loopback: a distributor in the test's reactor, nodes as ``twistd`` children."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from jobreactor import Config, Distributor

ROOT = Path(__file__).resolve().parents[2]
TWISTD = str(Path(sys.executable).with_name("twistd"))

#: Jobs every integration node loads.
JOBS = """
import os
import time

from jobreactor import CancelJob, job, job_callback, job_errback


@job("my_job")
def my_job(args):
    args["result"] = "Yay!"
    args["pid"] = os.getpid()


@job_callback("my_job", "second")
def second(args):
    return {"second": True}


@job("failing", max_attempt=2, retry_delay=0.2)
def failing(args):
    args["touched"] = True
    raise ValueError("broken " + str(args.get("n")))


@job_errback("failing", "note")
def note(args):
    args["noted"] = True


@job("echo_size")
def echo_size(args):
    return {"size": len(args["blob"])}


@job("sleepy")
def sleepy(args):
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    return deferLater(reactor, args.get("seconds", 1.0), lambda: {"pid": os.getpid()})


@job("blocking", max_attempt=1)
def blocking(args):
    import threading

    started = time.time()
    time.sleep(args.get("seconds", 0.2))
    return {
        "pid": os.getpid(),
        "thread": threading.current_thread().name,
        "started": started,
        "ended": time.time(),
    }


@job("log_run")
def log_run(args):
    with open(args["log"], "a") as log:
        log.write(f"{args['n']}\\n")


@job("stamp")
def stamp(args):
    import threading

    return {"at": time.time(), "thread": threading.current_thread().name}


@job("count_runs")
def count_runs(args):
    runs = args.get("runs", 0) + 1
    if runs > args.get("stop_after", 1000):
        raise CancelJob()
    return {"runs": runs}


@job("fail_then_cancel")
def fail_then_cancel(args):
    raise ValueError("always")


@job_errback("fail_then_cancel", "stop")
def stop(args):
    args["stopped"] = True
    raise CancelJob()


@job("forever")
def forever(args):
    from twisted.internet.defer import Deferred

    return Deferred()
"""


def node_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


class NodeProcesses:
    """Starts ``twistd -n jr-node`` children and makes sure none outlives the test."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.jobs_dir = tmp_path / "reactor_jobs"
        self.jobs_dir.mkdir()
        (self.jobs_dir / "jobs.py").write_text(textwrap.dedent(JOBS))
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def log_path(self, name: str) -> Path:
        return self.tmp_path / f"{name}.log"

    def start(
        self, name: str, port: int, *extra: str, slots: int = 10, endpoint: str | None = None
    ) -> subprocess.Popen[bytes]:
        """``endpoint`` replaces the plain TCP address of ``port`` (for TLS, say)."""
        endpoint = endpoint or f"tcp:host=127.0.0.1:port={port}"
        command = [
            TWISTD, "-n", "--pidfile=", f"--logfile={self.log_path(name)}",
            "jr-node", "--name", name, "--jobs", str(self.jobs_dir), "--slots", str(slots),
            "--distributor", endpoint, *extra,
        ]  # fmt: skip
        process = subprocess.Popen(command, cwd=self.tmp_path, env=node_env())
        self.processes[f"{name}-{process.pid}"] = process
        return process

    def log(self, name: str) -> str:
        path = self.log_path(name)
        return path.read_text() if path.exists() else ""

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[NodeProcesses]:
    processes = NodeProcesses(tmp_path)
    yield processes
    processes.stop_all()


@pytest.fixture
def distributor() -> Iterator[Distributor]:
    distributor = Distributor(
        "tcp:0:interface=127.0.0.1", config=Config(node_grace_period=1.0), reactor=reactor
    )
    distributor.startService()
    pytest_twisted.blockon(distributor.when_listening().addTimeout(5, reactor))
    yield distributor
    pytest_twisted.blockon(distributor.stopService())


def port_of(distributor: Distributor) -> int:
    port: int = distributor.address.port
    return port


def bounded(deferred: Any, seconds: float = 30) -> Any:
    """Every real wait in these tests ends: a hang fails the test, not the run."""
    return deferred.addTimeout(seconds, reactor)
