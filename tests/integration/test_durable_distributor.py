"""A distributor with persistent storage killed with SIGKILL and restarted loses nothing it
acknowledged: standalone under a burst, embedded with jobs waiting, with reports waiting on a
node, and in the middle of a result handler. Each on SQLite and on Redis."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from jobreactor import Client, connect
from jobreactor.results import Outcome
from tests.storage.conftest import RedisServer

from .conftest import ROOT, TWISTD, NodeProcesses, bounded, node_env
from .test_standalone import free_port, joined

pytestmark = pytest.mark.integration

APP = ROOT / "tests" / "integration" / "apps" / "durable_app.py"

#: Jobs of these tests, beside the common ones (conftest.JOBS: log_run, my_job, ...).
JOBS = """
from twisted.internet import reactor
from twisted.internet.task import deferLater

from jobreactor import job


@job("slow_log")
def slow_log(args):
    with open(args["log"], "a") as log:
        log.write(f"{args['n']}\\n")
    return deferLater(reactor, args["seconds"], lambda: None)
"""

#: The distributor's result handlers (loaded with --handlers).
HANDLERS = """
from pathlib import Path

from twisted.internet.defer import Deferred

from jobreactor import on_result


@on_result("log_run")
@on_result("slow_log")
def record(outcome):
    with open(outcome.args["handled_log"], "a") as log:
        log.write(f"{outcome.job_id} {outcome.run}\\n")


@on_result("my_job")
def stuck_the_first_time(outcome):
    marker = Path(outcome.args["marker"])
    with open(outcome.args["handled_log"], "a") as log:
        log.write(f"{outcome.job_id} {outcome.run}\\n")
    if not marker.exists():
        marker.write_text("started")
        return Deferred()  # never fires: the distributor is killed meanwhile
    return None
"""


@pytest.fixture(params=["sqlite", "redis"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where the distributor keeps its ledger; a redis-server of this test alone."""
    if request.param == "sqlite":
        yield f"sqlite:{tmp_path / 'distributor.db'}"
        return
    server = RedisServer(tmp_path / "redis", appendonly=False)
    server.start()
    try:
        yield f"{server.url}?prefix=durable&timeout=2"
    finally:
        server.stop()


class DistributorProcess:
    """``twistd -n jr-distributor`` on one port and one storage, started again after a kill."""

    def __init__(self, tmp_path: Path, storage: str) -> None:
        self.tmp_path = tmp_path
        self.storage = storage
        self.port = free_port()
        self.handlers = tmp_path / "handlers"
        self.handlers.mkdir()
        (self.handlers / "handlers.py").write_text(textwrap.dedent(HANDLERS))
        self.starts = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"tcp:host=127.0.0.1:port={self.port}"

    def log(self, start: int) -> str:
        path = self.tmp_path / f"distributor-{start}.log"
        return path.read_text() if path.exists() else ""

    def start(self) -> None:
        self.starts += 1
        command = [
            TWISTD, "-n", "--pidfile=", f"--logfile={self.tmp_path}/distributor-{self.starts}.log",
            "jr-distributor", "--listen", f"tcp:{self.port}:interface=127.0.0.1",
            "--storage", self.storage, "--handlers", str(self.handlers),
            "--setting", "node_grace_period=30",
        ]  # fmt: skip
        self.process = subprocess.Popen(command, cwd=self.tmp_path, env=node_env())

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await bounded(deferToThread(self.process.wait, 10))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            self.process.wait(10)


@pytest.fixture
def standalone(tmp_path: Path, storage_url: str) -> Iterator[DistributorProcess]:
    distributor = DistributorProcess(tmp_path, storage_url)
    distributor.start()
    yield distributor
    distributor.stop()


@pytest.fixture
def durable_nodes(nodes: NodeProcesses) -> NodeProcesses:
    (nodes.jobs_dir / "durable_jobs.py").write_text(textwrap.dedent(JOBS))
    return nodes


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def until(predicate: Any, seconds: float = 30, what: str = "condition") -> None:
    for _ in range(int(seconds * 20)):
        if predicate():
            return
        await deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"{what}: not true within {seconds} s")


async def connected_client(endpoint: str, name: str) -> Client:
    client = connect(endpoint, name=name)
    await bounded(client.when_connected())
    return client


@pytest_twisted.ensureDeferred
async def test_standalone_distributor_killed_in_a_burst_loses_no_acknowledged_job(
    standalone: DistributorProcess, durable_nodes: NodeProcesses, tmp_path: Path
) -> None:
    total = 5000
    job_log, handled_log = tmp_path / "runs.log", tmp_path / "handled.log"
    durable_nodes.start("worker", standalone.port, slots=200)
    await joined(durable_nodes, "worker")
    client = await connected_client(standalone.endpoint, "stable-name")
    try:
        successes: Counter[int] = Counter()
        accepted: set[int] = set()
        killed: defer.Deferred[None] = defer.Deferred()

        def on_accepted(_: Any, n: int) -> None:
            accepted.add(n)
            if len(accepted) == total // 5 and not killed.called:
                killed.callback(None)

        handles = []
        acknowledged_at_kill: set[int] = set()
        for n in range(total):
            args = {"n": n, "log": str(job_log), "handled_log": str(handled_log)}
            handle = client.enqueue("log_run", args, success=lambda a: successes.update([a["n"]]))
            handle.accepted.addCallback(on_accepted, n)
            handles.append(handle)
            if n % 250 == 249:
                await deferLater(reactor, 0.01, lambda: None)  # a burst over many turns
            if n == total // 2:
                # Half of the burst is enqueued and a fifth acknowledged: kill it now, and
                # go on enqueueing the other half while it is down and starting again.
                await bounded(killed)
                await standalone.kill()
                acknowledged_at_kill = set(accepted)
                standalone.start()
        await bounded(defer.gatherResults([handle.deferred for handle in handles]), 60)

        ran = Counter(int(line) for line in lines(job_log))
        assert set(ran) == set(range(total)), "every job ran"
        assert not {n for n in acknowledged_at_kill if ran[n] != 1}, (
            "a job acknowledged before the kill ran once"
        )
        assert successes == Counter(range(total)), "each outcome reached the client once"
        ids = {handle.id for handle in handles}
        await until(
            lambda: {line.split()[0] for line in lines(handled_log)} >= ids,
            what="every outcome got its handler call",
        )
        calls = Counter(line.split()[0] for line in lines(handled_log))
        assert set(calls) == ids
        print(
            f"\n{standalone.storage.split(':')[0]}: {len(acknowledged_at_kill)} of {total} jobs "
            f"acknowledged at the kill; jobs that ran twice: "
            f"{sum(1 for count in ran.values() if count > 1)}; repeated handler calls: "
            f"{sum(count - 1 for count in calls.values())}"
        )
    finally:
        await client.stopService()


@pytest_twisted.ensureDeferred
async def test_embedding_app_killed_with_jobs_waiting_runs_them_after_restart(
    storage_url: str, durable_nodes: NodeProcesses, tmp_path: Path
) -> None:
    total = 1000
    port = free_port()
    job_log = tmp_path / "runs.log"
    command = [sys.executable, str(APP), str(port), storage_url]
    first = subprocess.Popen(
        [*command, "enqueue", str(job_log), str(total)],
        cwd=tmp_path,
        env=node_env(),
        stdout=subprocess.PIPE,
    )
    second = None
    try:
        assert first.stdout is not None
        summary = json.loads(await bounded(deferToThread(first.stdout.readline)))
        assert summary["waiting"] == total, "all accepted, none run: no node is connected"
        first.send_signal(signal.SIGKILL)
        await bounded(deferToThread(first.wait, 10))
        second = subprocess.Popen(
            [*command, "serve"], cwd=tmp_path, env=node_env(), stdout=subprocess.PIPE
        )
        assert second.stdout is not None
        restarted = json.loads(await bounded(deferToThread(second.stdout.readline)))
        assert restarted["id"] == summary["id"], "the same distributor"
        assert restarted["waiting"] == total, "every accepted job was reloaded"
        durable_nodes.start("worker", port, slots=50)
        await until(lambda: len(lines(job_log)) >= total, what=f"{total} jobs ran")
        await deferLater(reactor, 0.3, lambda: None)  # a job run twice would show now
        assert Counter(int(line) for line in lines(job_log)) == Counter(range(total))
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
            if process is not None:
                process.wait(10)
                if process.stdout is not None:
                    process.stdout.close()


@pytest_twisted.ensureDeferred
async def test_reports_made_while_the_distributor_was_down_are_delivered_once(
    standalone: DistributorProcess, durable_nodes: NodeProcesses, tmp_path: Path
) -> None:
    total = 20
    job_log, handled_log = tmp_path / "runs.log", tmp_path / "handled.log"
    node = durable_nodes.start("worker", standalone.port, slots=total)
    await joined(durable_nodes, "worker")
    client = await connected_client(standalone.endpoint, "stable-name")
    try:
        successes: Counter[int] = Counter()
        handles = [
            client.enqueue(
                "slow_log",
                {"n": n, "seconds": 1.5, "log": str(job_log), "handled_log": str(handled_log)},
                success=lambda a: successes.update([a["n"]]),
            )
            for n in range(total)
        ]
        await bounded(defer.gatherResults([handle.accepted for handle in handles]))
        await until(lambda: len(lines(job_log)) == total, what="every job started")
        await standalone.kill()
        await deferLater(reactor, 2.0, lambda: None)  # the jobs finish: reports wait on the node
        assert successes == Counter(), "no outcome without the distributor"
        standalone.start()
        await bounded(defer.gatherResults([handle.deferred for handle in handles]))
        assert successes == Counter(range(total)), "each outcome reached the client once"
        await until(lambda: len(lines(handled_log)) >= total, what="every handler call")
        await deferLater(reactor, 0.5, lambda: None)  # anything sent again would run now
        assert Counter(int(line) for line in lines(job_log)) == Counter(range(total)), (
            "nothing ran again"
        )
        assert "dropping" not in durable_nodes.log("worker")
        assert node.poll() is None
    finally:
        await client.stopService()


@pytest_twisted.ensureDeferred
async def test_handler_interrupted_by_a_kill_runs_again_and_the_outcome_is_handled(
    standalone: DistributorProcess, durable_nodes: NodeProcesses, tmp_path: Path
) -> None:
    marker, handled_log = tmp_path / "handler-started", tmp_path / "handled.log"
    durable_nodes.start("worker", standalone.port)
    await joined(durable_nodes, "worker")
    client = await connected_client(standalone.endpoint, "stable-name")
    args = {"marker": str(marker), "handled_log": str(handled_log)}
    handle = client.enqueue("my_job", args)
    try:
        result = await bounded(handle.deferred)
        assert result["result"] == "Yay!"
        await until(marker.exists, what="the handler started")
        pending = await bounded(client.outcome(handle.id))
        assert pending is not None and pending.handled == "pending"
    finally:
        await client.stopService()
    await standalone.kill()
    standalone.start()
    await until(lambda: len(lines(handled_log)) == 2, what="the handler ran again")
    client = await connected_client(standalone.endpoint, "stable-name")
    try:
        outcome: Outcome | None = None
        for _ in range(100):
            outcome = await bounded(client.outcome(handle.id))
            if outcome is not None and outcome.handled != "pending":
                break
            await deferLater(reactor, 0.05, lambda: None)
        assert outcome is not None
        assert (outcome.job_id, outcome.status, outcome.handled) == (handle.id, "done", "handled")
        assert outcome.args["result"] == "Yay!"
        assert lines(handled_log) == [f"{handle.id} 1", f"{handle.id} 1"]
    finally:
        await client.stopService()
