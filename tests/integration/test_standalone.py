"""A standalone ``twistd jr-distributor`` process, nodes dialling it, and remote clients."""

from __future__ import annotations

import signal
import socket
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from jobreactor import Client, JobFailed, connect

from .conftest import TWISTD, NodeProcesses, bounded, node_env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def standalone(tmp_path: Path) -> Any:
    port = free_port()
    command = [
        TWISTD, "-n", "--pidfile=", f"--logfile={tmp_path / 'distributor.log'}",
        "jr-distributor", "--listen", f"tcp:{port}:interface=127.0.0.1",
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=tmp_path, env=node_env())
    yield port, process
    if process.poll() is None:
        process.kill()
    process.wait(10)


async def joined(nodes: NodeProcesses, *names: str) -> None:
    """Wait (bounded) until each named node's log says it joined the distributor."""
    for _ in range(300):
        if all("joined distributor" in nodes.log(name) for name in names):
            return
        await deferLater(reactor, 0.1, lambda: None)
    raise AssertionError(f"nodes {names} did not join within 30 s")


async def started_client(port: int, name: str | None = None) -> Client:
    client = connect(f"tcp:host=127.0.0.1:port={port}", name=name)
    await bounded(client.when_connected())
    return client


@pytest_twisted.ensureDeferred
async def test_client_enqueues_through_a_standalone_distributor(
    standalone: Any, nodes: NodeProcesses
) -> None:
    port, _ = standalone
    nodes.start("worker_1", port)
    nodes.start("worker_2", port)
    await joined(nodes, "worker_1", "worker_2")
    client = await started_client(port)
    try:
        fired: Counter[int] = Counter()
        handles = [
            client.enqueue("my_job", {"n": n}, success=lambda a: fired.update([a["n"]]))
            for n in range(50)
        ]
        failing = client.enqueue("failing", {"n": 99})
        results = await bounded(defer.gatherResults([h.deferred for h in handles]))
        assert [result["n"] for result in results] == list(range(50))
        assert all(result["result"] == "Yay!" for result in results)
        assert fired == Counter(range(50))
        assert len({result["pid"] for result in results}) == 2
        with pytest.raises(JobFailed) as caught:
            await bounded(failing.deferred)
        assert caught.value.error == "broken 99"
    finally:
        await client.stopService()


@pytest_twisted.ensureDeferred
async def test_client_blip_loses_no_outcome(standalone: Any, nodes: NodeProcesses) -> None:
    port, _ = standalone
    nodes.start("worker_1", port)
    client = await started_client(port, name="steady-app")
    try:
        fired: Counter[int] = Counter()
        handles = [
            client.enqueue(
                "sleepy", {"seconds": 1.0, "n": n}, success=lambda a: fired.update([a["n"]])
            )
            for n in range(5)
        ]
        await deferLater(reactor, 0.3, lambda: None)  # the jobs reached the node
        assert client.submitter.protocol is not None
        client.submitter.protocol.transport.abortConnection()  # type: ignore[union-attr]
        results = await bounded(defer.gatherResults([h.deferred for h in handles]))
        assert len(results) == 5
        assert fired == Counter(range(5)), "each feedback once, although the link broke"
    finally:
        await client.stopService()


@pytest_twisted.ensureDeferred
async def test_nodes_come_back_to_a_restarted_distributor(
    standalone: Any, nodes: NodeProcesses, tmp_path: Path
) -> None:
    port, process = standalone
    node = nodes.start("worker_1", port)
    await joined(nodes, "worker_1")
    client = await started_client(port)
    first = client.enqueue("sleepy", {"seconds": 2.0})
    await deferLater(reactor, 0.5, lambda: None)  # it is running on the node
    await client.stopService()
    process.kill()
    process.wait(10)
    restarted = subprocess.Popen(
        [
            TWISTD,
            "-n",
            "--pidfile=",
            f"--logfile={tmp_path / 'distributor2.log'}",
            "jr-distributor",
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
        ],
        cwd=tmp_path,
        env=node_env(),
    )
    try:
        client = await started_client(port)
        result = await bounded(client.enqueue("my_job", {"after": "restart"}).deferred)
        assert result["result"] == "Yay!"
        await deferLater(reactor, 2.5, lambda: None)  # the old job ends; its report is dropped
        assert node.poll() is None, "the node carried on"
        for _ in range(100):  # the log line may trail the work by a moment
            if nodes.log("worker_1").count("joined distributor") >= 2:
                break
            await deferLater(reactor, 0.1, lambda: None)
        assert nodes.log("worker_1").count("joined distributor") == 2
        assert not first.done
        await client.stopService()
    finally:
        restarted.kill()
        restarted.wait(10)


@pytest_twisted.ensureDeferred
async def test_sigterm_stops_a_standalone_distributor_with_exit_0(
    standalone: Any, nodes: NodeProcesses
) -> None:
    port, process = standalone
    nodes.start("worker_1", port)
    await joined(nodes, "worker_1")
    client = await started_client(port)
    assert (await bounded(client.enqueue("my_job", {}).deferred))["result"] == "Yay!"
    await client.stopService()
    process.send_signal(signal.SIGTERM)
    assert await bounded(deferToThread(process.wait, 15)) == 0


def test_a_taken_port_stops_the_standalone_distributor_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        finished = subprocess.run(
            [
                TWISTD,
                "-n",
                "--pidfile=",
                "jr-distributor",
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
            ],
            cwd=tmp_path,
            env=node_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert finished.returncode == 1
    assert f"jr-distributor: cannot listen on tcp:{port}" in finished.stderr + finished.stdout
    assert "Traceback" not in finished.stderr + finished.stdout


@pytest_twisted.ensureDeferred
async def test_a_client_with_a_taken_name_learns_why(standalone: Any) -> None:
    port, _ = standalone
    first = await started_client(port, name="only-one")
    second = connect(f"tcp:host=127.0.0.1:port={port}", name="only-one")
    try:
        with pytest.raises(Exception, match="already connected"):
            await bounded(second.when_connected(), 10)
    finally:
        await second.stopService()
        await first.stopService()
