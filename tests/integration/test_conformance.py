"""The conformance suite (``python -m jobreactor.conformance``) against the real daemons.

Both sides are separate processes over loopback TCP: a ``twistd -n jr-distributor`` (with
memory and with SQLite storage) checked by the suite playing nodes and clients, and a
``twistd -n jr-node`` that dials the suite playing the distributor (and is stopped with
SIGTERM when the suite waits for ``Leaving``).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import TWISTD, node_env

pytestmark = pytest.mark.integration

JOBS = """
from jobreactor import job


@job("conformance_echo")
def conformance_echo(args):
    args["echoed"] = True
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the daemon exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port} after {timeout} s")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)


def suite(address: str, *options: str) -> list[str]:
    return [sys.executable, "-m", "jobreactor.conformance", address, *options]


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
def test_the_distributor_passes_the_conformance_suite(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]], storage: str
) -> None:
    port = free_port()
    url = "memory" if storage == "memory" else f"sqlite:{tmp_path / 'distributor.db'}"
    distributor = subprocess.Popen(
        [
            TWISTD, "-n", "--pidfile=", f"--logfile={tmp_path / 'distributor.log'}",
            "jr-distributor", "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--storage", url, "--setting", "hello_timeout=1",
        ],
        cwd=tmp_path,
        env=node_env(),
    )  # fmt: skip
    processes.append(distributor)
    wait_for_port(port, distributor)

    result = subprocess.run(
        suite(f"127.0.0.1:{port}", "--role", "distributor", "--hello-timeout", "1"),
        capture_output=True,
        text=True,
        timeout=300,
        env=node_env(),
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout
    assert " 0 failed, 0 skipped" in result.stdout
    assert distributor.poll() is None, "the distributor stays up through every bad message"


def test_the_node_passes_the_conformance_suite(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    jobs = tmp_path / "reactor_jobs"
    jobs.mkdir()
    (jobs / "conformance.py").write_text(JOBS)
    port = free_port()
    output = tmp_path / "suite.out"
    with output.open("wb") as out:
        checker = subprocess.Popen(
            suite(
                f"127.0.0.1:{port}", "--role", "node",
                "--job", "conformance_echo", "--expect-leaving",
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=node_env(),
        )  # fmt: skip
        processes.append(checker)
        deadline = time.monotonic() + 30
        while "start the node now" not in output.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        node = subprocess.Popen(
            [
                TWISTD, "-n", "--pidfile=", f"--logfile={tmp_path / 'node.log'}",
                "jr-node", "--name", "conformance_node", "--jobs", str(jobs), "--slots", "3",
                "--distributor", f"tcp:host=127.0.0.1:port={port}",
            ],
            cwd=tmp_path,
            env=node_env(),
        )  # fmt: skip
        processes.append(node)
        deadline = time.monotonic() + 120
        while "stop the node now" not in output.read_text():
            assert checker.poll() is None, output.read_text()
            assert time.monotonic() < deadline, output.read_text()
            time.sleep(0.05)
        node.send_signal(signal.SIGTERM)
        checker.wait(timeout=120)

    text = output.read_text()
    assert checker.returncode == 0, text
    assert "FAIL" not in text
    assert " 0 failed, 0 skipped" in text
    assert node.wait(timeout=30) == 0, "the node stops cleanly after Leaving"
