"""examples/two_distributors: one command, two applications, three nodes serving both."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import defaultdict

import pytest

from .conftest import ROOT, node_env

pytestmark = pytest.mark.integration

RUN = ROOT / "examples" / "two_distributors" / "run.py"
NODES = {"worker_1", "worker_2", "worker_3"}


def test_two_applications_share_three_nodes() -> None:
    finished = subprocess.run(
        [sys.executable, str(RUN)],
        env=node_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    lines = finished.stdout.splitlines()
    ran: dict[str, dict[int, str]] = defaultdict(dict)
    for line in lines:
        match = re.fullmatch(r"(app_[12]): job (\d+) ran on (worker_\d)", line)
        if match:
            assert int(match[2]) not in ran[match[1]], f"job reported twice: {line}"
            ran[match[1]][int(match[2])] = match[3]
    assert set(ran) == {"app_1", "app_2"}
    for app in ("app_1", "app_2"):
        assert sorted(ran[app]) == list(range(9)), app
        assert f"{app}: nodes connected: worker_1, worker_2, worker_3" in lines
        assert any(line.startswith(f"{app}: 9 jobs; ") for line in lines)
    used = {node for jobs in ran.values() for node in jobs.values()}
    assert used == NODES, "the jobs spread over the three nodes"
    assert lines[-1] == "nodes stopped"
    assert "Traceback" not in finished.stderr
