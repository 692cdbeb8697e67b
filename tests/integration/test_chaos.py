"""Three nodes, ten thousand jobs, a node killed and restarted twice: nothing is lost."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from jobreactor import Distributor

from .conftest import NodeProcesses, bounded, port_of

JOBS = 10_000


@pytest_twisted.ensureDeferred
async def test_kill_and_restart_nodes_while_ten_thousand_jobs_run(
    distributor: Distributor, nodes: NodeProcesses, tmp_path: Path
) -> None:
    port = port_of(distributor)
    processes = {name: nodes.start(name, port, slots=20) for name in ("n1", "n2", "n3")}
    await bounded(distributor.when_nodes(3))
    log = tmp_path / "runs.log"
    fired: Counter[int] = Counter()
    handles = [
        distributor.enqueue(
            "log_run", {"n": n, "log": str(log)}, success=lambda a: fired.update([a["n"]])
        )
        for n in range(JOBS)
    ]

    async def kill_and_restart(name: str, when_done: int) -> None:
        for _ in range(1200):
            if len(fired) >= when_done:
                break
            await deferLater(reactor, 0.05, lambda: None)
        processes[name].send_signal(signal.SIGKILL)
        await bounded(deferToThread(processes[name].wait, 10))
        processes[name] = nodes.start(name, port, slots=20)

    await kill_and_restart("n2", JOBS * 15 // 100)
    await kill_and_restart("n3", JOBS * 50 // 100)
    await bounded(defer.gatherResults([h.deferred for h in handles]), 180)
    assert len(fired) == JOBS, "every job completed"
    assert set(fired.values()) == {1}, "every feedback fired exactly once"
    runs = Counter(int(line) for line in log.read_text().split())
    assert set(runs) == set(range(JOBS))
    more_than_once = sum(1 for count in runs.values() if count > 1)
    print(f"\n{JOBS} jobs, 2 node kills: {more_than_once} jobs ran more than once")
    assert distributor.pending == 0
