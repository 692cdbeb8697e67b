"""``JR.start_distributor(..., web=...)`` in a non-Twisted application: prints the dashboard's
``/api/stats`` after one job, fetched from the application's own thread."""

from __future__ import annotations

import contextlib
import json
import urllib.request

from jobreactor import JR, JobCancelled


def main() -> None:
    JR.run(lambda: JR.start_distributor("127.0.0.1", 0, web="tcp:0:interface=127.0.0.1"))
    JR.wait_ready(timeout=10)
    assert JR.dashboard is not None and JR.dashboard.url is not None
    handle = JR.enqueue("nobody_runs_this", {})
    handle.cancel()
    with contextlib.suppress(JobCancelled):
        handle.result(timeout=10)
    with urllib.request.urlopen(JR.dashboard.url + "api/stats", timeout=10) as answer:
        print(json.dumps(json.load(answer)))


if __name__ == "__main__":
    main()
