"""The quick start, end to end: a distributor here, two nodes as separate processes.

Run with ``bash run-demo.sh`` from the repository root. The distributor listens on a free
loopback port, two ``twist jr-node`` processes dial it, a handful of jobs are enqueued, each
feedback is printed as it arrives, and everything stops once every job has an outcome.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from jobreactor import JR, JobFailed

HERE = Path(__file__).resolve().parent
TWIST = str(Path(sys.executable).with_name("twist"))


def say(text: str) -> None:
    print(text, flush=True)


def start_nodes(port: int) -> list[subprocess.Popen[bytes]]:
    nodes = []
    for name in ("worker_1", "worker_2"):
        command = [
            TWIST, f"--log-file={HERE / (name + '.log')}", "--log-format=text",
            "jr-node", "--name", name, "--jobs", str(HERE / "reactor_jobs"),
            "--storage", "memory", "--slots", "4",
            "--distributor", f"tcp:host=127.0.0.1:port={port}",
        ]  # fmt: skip
        nodes.append(subprocess.Popen(command, cwd=HERE))
        say(f"started node {name} (pid {nodes[-1].pid}), log in examples/quickstart/{name}.log")
    return nodes


async def wait_for_nodes(count: int, timeout: float = 30) -> None:
    from twisted.internet import reactor

    waited = 0.0
    while len(JR.nodes()) < count:
        if waited > timeout:
            raise TimeoutError(f"fewer than {count} nodes connected within {timeout} s")
        await deferLater(reactor, 0.1, lambda: None)
        waited += 0.1
    say("connected: " + ", ".join(f"{n.name} ({n.slots} slots)" for n in JR.nodes()))


async def main() -> None:
    from twisted.internet import reactor

    distributor = await JR.start_distributor("127.0.0.1", 0)
    say(f"distributor listening on 127.0.0.1:{distributor.address.port}")
    nodes = start_nodes(distributor.address.port)
    try:
        await wait_for_nodes(2)

        def success(args: dict[str, Any]) -> None:
            say(f"  success feedback: {args}")

        def error(args: dict[str, Any]) -> None:
            say(f"  error feedback:   {args}")

        handles = [
            JR.enqueue("my_job", {"arg1": "hello"}, success=success, error=error),
            JR.enqueue("my_job", {"arg1": "world"}, success=success, error=error, node="worker_2"),
            JR.enqueue("slow_sum", {"numbers": [1, 2, 3]}, success=success, error=error),
            JR.enqueue("slow_sum", {"numbers": [10, 20]}, success=success, error=error),
            JR.enqueue("flaky", {"item": "x"}, success=success, error=error),
            JR.enqueue("no_such_job", {}, success=success, error=error),
        ]
        say(f"enqueued {len(handles)} jobs")
        results = await defer.DeferredList(
            [h.deferred.addTimeout(30, reactor) for h in handles], consumeErrors=True
        )
        for handle, (ok, result) in zip(handles, results, strict=True):
            outcome: Any = result
            if ok:
                say(f"{handle.name}: complete")
            elif outcome.check(JobFailed):
                say(f"{handle.name}: failed ({outcome.value.error_type})")
            else:
                say(f"{handle.name}: {outcome.getErrorMessage()}")
    finally:
        for process in nodes:
            process.send_signal(signal.SIGTERM)  # a graceful stop: they say goodbye first
        for process in nodes:
            try:
                # waited for in a thread: the reactor must keep answering the nodes meanwhile
                code: int | str = await deferToThread(process.wait, 15)
            except subprocess.TimeoutExpired:
                process.kill()
                code = "killed after 15 s"
            say(f"node pid {process.pid} stopped: exit code {code}")


def setup() -> defer.Deferred[None]:
    from twisted.internet import reactor

    done = defer.Deferred.fromCoroutine(main())

    def finished(result: Any) -> Any:
        reactor.stop()
        return result

    return done.addBoth(finished)


if __name__ == "__main__":
    os.chdir(HERE)
    JR.run_forever(setup)
    sys.exit(0 if JR.ready() else 1)
