"""A non-Twisted application: the reactor in a background thread, jobs enqueued from threads.

Started by tests/integration/test_embedding.py with the node's command line in argv; prints
one JSON summary line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter
from typing import Any

from jobreactor import JR, InvalidJobError

THREADS = 8
JOBS_PER_THREAD = 25


def main() -> None:
    JR.run(lambda: JR.start_distributor("127.0.0.1", 0))
    JR.wait_ready(timeout=10)
    assert JR.distributor is not None
    port = JR.distributor.address.port
    node = subprocess.Popen([*sys.argv[1:], "--distributor", f"tcp:host=127.0.0.1:port={port}"])
    try:
        JR.wait_for_nodes(1, timeout=30)
        feedback_threads: set[str] = set()
        feedbacks: Counter[str] = Counter()
        lock = threading.Lock()
        results: list[dict[str, Any]] = []
        refused: list[str] = []

        def on_success(args: dict[str, Any]) -> None:
            with lock:
                feedback_threads.add(threading.current_thread().name)
                feedbacks[args["key"]] += 1

        def worker(number: int) -> None:
            try:
                JR.enqueue("my_job", {"bad": {1, 2}})
            except InvalidJobError as error:
                refused.append(str(error))
            handles = [
                JR.enqueue("my_job", {"key": f"{number}-{n}"}, success=on_success)
                for n in range(JOBS_PER_THREAD)
            ]
            for handle in handles:
                result = handle.result(timeout=60)
                with lock:
                    results.append(result)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        summary = {
            "results": len(results),
            "distinct_feedbacks": len(feedbacks),
            "max_feedbacks_per_job": max(feedbacks.values()) if feedbacks else 0,
            "feedback_threads": sorted(feedback_threads),
            "refused": refused[:1],
            "nodes": [info.name for info in JR.nodes()],
        }
        print(json.dumps(summary), flush=True)
    finally:
        node.terminate()
        node.wait(10)


if __name__ == "__main__":
    main()
