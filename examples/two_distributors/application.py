"""One application of the example: a distributor in its own process, jobs enqueued from it.

``python application.py NAME`` starts the distributor on a free loopback port, prints
``NAME: distributor listening on 127.0.0.1:PORT``, waits for three nodes, enqueues a burst of
jobs and prints which node ran each. ``run.py`` is the other application and starts this one.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter

from jobreactor import JR

NODES = 3
JOBS = 9


_say_lock = threading.Lock()


def say(text: str) -> None:
    """Print one whole line: run.py prints from two threads, and ``print`` writes the text
    and its newline separately, so two threads' lines could run into each other."""
    with _say_lock:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def start(name: str) -> int:
    """Start this process's distributor; return its port."""
    JR.run(lambda: JR.start_distributor("127.0.0.1", 0))
    JR.wait_ready(timeout=10)
    assert JR.distributor is not None
    port: int = JR.distributor.address.port
    say(f"{name}: distributor listening on 127.0.0.1:{port}")
    return port


def enqueue_and_report(name: str) -> None:
    """Wait for the nodes, enqueue a burst of jobs, print where each ran."""
    nodes = JR.wait_for_nodes(NODES, timeout=60)
    say(f"{name}: nodes connected: {', '.join(sorted(info.name for info in nodes))}")
    handles = [JR.enqueue("where", {"app": name, "n": n}) for n in range(JOBS)]
    ran_on: Counter[str] = Counter()
    for n, handle in enumerate(handles):
        result = handle.result(timeout=60)
        ran_on[result["node"]] += 1
        say(f"{name}: job {n} ran on {result['node']}")
    say(f"{name}: {JOBS} jobs; " + ", ".join(f"{k}: {v}" for k, v in sorted(ran_on.items())))


if __name__ == "__main__":
    application = sys.argv[1] if len(sys.argv) > 1 else "app_2"
    start(application)
    enqueue_and_report(application)
