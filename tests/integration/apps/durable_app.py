"""An application that embeds a distributor with persistent storage.

Started by tests/integration/test_durable_distributor.py as
``python durable_app.py PORT STORAGE_URL enqueue LOG COUNT`` (enqueue ``COUNT`` jobs that
append their number to ``LOG``, print one JSON line once every one is accepted, then idle
until killed) or ``python durable_app.py PORT STORAGE_URL serve`` (start the distributor on
the same storage, print one JSON line once it listens, idle until killed).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from twisted.internet.defer import gatherResults

from jobreactor import JR


def main() -> None:
    port, storage, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]

    def setup() -> Any:
        started = JR.start_distributor("127.0.0.1", port, storage=storage)
        if mode != "enqueue":
            return started
        log, count = sys.argv[4], int(sys.argv[5])

        def enqueue(_: Any) -> Any:
            assert JR.distributor is not None
            handles = [
                JR.distributor.enqueue("log_run", {"log": log, "n": n}) for n in range(count)
            ]
            return gatherResults([handle.accepted for handle in handles])

        return started.addCallback(enqueue)

    JR.run(setup)
    JR.wait_ready(timeout=60)
    assert JR.distributor is not None
    summary = {"mode": mode, "waiting": JR.distributor.waiting, "id": JR.distributor.id}
    print(json.dumps(summary), flush=True)
    while True:  # the test ends this process with SIGKILL
        time.sleep(60)


if __name__ == "__main__":
    main()
