"""Nodes that recycle themselves: real ``twistd jr-node --processes`` under ProcessMonitor."""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

from jobreactor import Distributor

from .conftest import TWISTD, NodeProcesses, bounded, node_env, port_of

LEAKY_JOBS = """
from jobreactor import job

KEPT = []


@job("leaky")
def leaky(args):
    KEPT.append(b"x" * (128 * 1024))  # never freed: this process only grows
    with open(args["log"], "a") as log:
        log.write(f"{args['n']}\\n")
"""


@pytest_twisted.ensureDeferred
async def test_leaking_nodes_are_replaced_and_every_job_runs_exactly_once(
    distributor: Distributor, nodes: NodeProcesses, tmp_path: Path
) -> None:
    (nodes.jobs_dir / "leaky.py").write_text(LEAKY_JOBS)
    log = tmp_path / "runs.log"
    supervisor = nodes.start(
        "pool", port_of(distributor), "--processes", "2", "--max-memory", "120"
    )
    await bounded(distributor.when_nodes(names=["pool-1", "pool-2"]))
    handles = [distributor.enqueue("leaky", {"n": n, "log": str(log)}) for n in range(2000)]
    await bounded(defer.gatherResults([h.deferred for h in handles]), 120)
    runs = Counter(int(line) for line in log.read_text().split())
    assert runs == Counter(range(2000))  # every job once: none lost, none run twice
    recycled = nodes.log("pool").count("recycles: it uses")  # the children's lines
    assert recycled >= 2, nodes.log("pool")[-3000:]
    # The monitor started the recycled ones again: both names are back.
    await bounded(distributor.when_nodes(names=["pool-1", "pool-2"]))
    supervisor.terminate()
    assert await bounded(deferLater(reactor, 0, supervisor.wait)) == 0


def test_max_jobs_option_is_checked() -> None:
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "jr-node", "--name", "n", "--max-jobs", "0"],
        capture_output=True,
        env=node_env(),
        timeout=60,
    )
    assert result.returncode != 0
    assert b"--max-jobs: must be at least 1, not 0" in result.stderr + result.stdout
