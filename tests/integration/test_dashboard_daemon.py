"""``twistd jr-distributor --web``: the dashboard of a standalone distributor, seen by ``jr``."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from functools import partial

import pytest_twisted
from twisted.internet.threads import deferToThread

from .conftest import TWISTD
from .test_daemons import Daemons, accepts, clean_env, daemons, free_port, stop, wait_until

__all__ = ["daemons"]  # the fixture, used by name


def jr(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobreactor.cli", *arguments],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(),
    )


@pytest_twisted.ensureDeferred
async def test_web_option_serves_the_dashboard_that_jr_asks(daemons: Daemons) -> None:
    port, web_port = free_port(), free_port()
    distributor = daemons.start(
        [
            TWISTD, "-n", "--pidfile=", "jr-distributor",
            "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--web", f"tcp:{web_port}:interface=127.0.0.1",
        ],
        "distributor.log",
    )  # fmt: skip
    node = daemons.node(
        "--name", "worker_1", "--jobs", str(daemons.jobs_dir), "--distributor",
        f"tcp:host=127.0.0.1:port={port}", output="node.log",
    )  # fmt: skip
    url = f"http://127.0.0.1:{web_port}/"
    await wait_until(partial(accepts, web_port), "the dashboard listens")

    def node_listed() -> bool:
        result = jr("nodes", "--web", url, "--json")
        return result.returncode == 0 and "worker_1" in result.stdout

    await wait_until(node_listed, "worker_1 among jr nodes")
    stats = await deferToThread(jr, "stats", "--json", "--web", url)
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["nodes"] == 1
    await stop(node)
    assert await stop(distributor) == 0


@pytest_twisted.ensureDeferred
async def test_a_taken_web_port_stops_the_distributor(daemons: Daemons) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        web_port = taken.getsockname()[1]
        process = daemons.start(
            [
                TWISTD, "-n", "--pidfile=", "jr-distributor",
                "--listen", f"tcp:{free_port()}:interface=127.0.0.1",
                "--web", f"tcp:{web_port}:interface=127.0.0.1",
            ],
            "distributor.log",
        )  # fmt: skip
        await wait_until(lambda: process.poll() is not None, "the distributor exits")
    assert process.returncode == 1
    assert f"jr-distributor: cannot listen on tcp:{web_port}:interface=127.0.0.1" in daemons.read(
        "distributor.log"
    )
