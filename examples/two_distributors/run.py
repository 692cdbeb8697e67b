"""The original's "two distributors, three nodes" layout, in one command.

``python examples/two_distributors/run.py``: this process is the application ``app_1`` with a
distributor of its own; it starts a second application, ``app_2`` (``application.py``), with
another distributor, then three ``twist jr-node`` processes that each dial *both*
distributors (``--distributor`` twice; the rest from ``node.toml``). Both applications enqueue
a burst of jobs and print which node ran each; then everything stops.
"""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

from application import enqueue_and_report, say, start

HERE = Path(__file__).resolve().parent
TWIST = str(Path(sys.executable).with_name("twist"))
NODE_NAMES = ("worker_1", "worker_2", "worker_3")


def relay(stream: IO[str], ports: queue.Queue[int]) -> None:
    """Print the other application's lines as they come; hand on its distributor's port."""
    for line in stream:
        match = re.search(r"distributor listening on [\d.]+:(\d+)", line)
        if match:
            ports.put(int(match[1]))
        say(line.rstrip("\n"))


def start_nodes(ports: list[int]) -> list[subprocess.Popen[bytes]]:
    nodes = []
    for name in NODE_NAMES:
        dial = [
            arg for port in ports for arg in ("--distributor", f"tcp:host=127.0.0.1:port={port}")
        ]
        command = [
            TWIST, f"--log-file={HERE / (name + '.log')}", "--log-format=text",
            "jr-node", "--config", str(HERE / "node.toml"), "--name", name, *dial,
        ]  # fmt: skip
        nodes.append(subprocess.Popen(command, cwd=HERE))
        say(f"started {name} (pid {nodes[-1].pid}), dialling ports {ports[0]} and {ports[1]}")
    return nodes


def main() -> int:
    port_1 = start("app_1")
    app_2 = subprocess.Popen(
        [sys.executable, str(HERE / "application.py"), "app_2"],
        cwd=HERE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert app_2.stdout is not None
    ports: queue.Queue[int] = queue.Queue()
    relaying = threading.Thread(target=relay, args=(app_2.stdout, ports), daemon=True)
    relaying.start()
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        port_2 = ports.get(timeout=30)
        nodes = start_nodes([port_1, port_2])
        enqueue_and_report("app_1")
        app_2_status = app_2.wait(timeout=120)
        relaying.join(10)
    finally:
        if app_2.poll() is None:
            app_2.kill()
            app_2.wait(10)
        for node in nodes:
            node.send_signal(signal.SIGTERM)
        for node in nodes:
            try:
                node.wait(timeout=15)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait(10)
    say("nodes stopped")
    return app_2_status


if __name__ == "__main__":
    sys.exit(main())
