"""examples/flask_app: concurrent requests from eight threads, each feedback exactly once.

The app runs in a child process: ``JR.run`` starts its own reactor in a thread, which must not
meet pytest-twisted's reactor in this one; and the child's clean exit is part of the check.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, TWISTD, NodeProcesses, node_env

pytestmark = pytest.mark.integration

DRIVER = Path(__file__).with_name("apps") / "flask_driver.py"


def test_threads_drive_the_flask_app(nodes: NodeProcesses) -> None:
    node_command = [
        TWISTD, "-n", "--pidfile=", f"--logfile={nodes.log_path('flask_worker')}",
        "jr-node", "--name", "flask_worker", "--slots", "20",
        "--jobs", str(ROOT / "examples" / "flask_app" / "reactor_jobs"),
    ]  # fmt: skip
    env = node_env()
    env["FLASK_APP_DISTRIBUTOR_PORT"] = "0"
    finished = subprocess.run(
        [sys.executable, str(DRIVER), *node_command],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=nodes.tmp_path,
    )
    assert finished.returncode == 0, finished.stderr
    summary = json.loads(finished.stdout.strip().splitlines()[-1])
    assert summary["problems"] == []
    assert summary["jobs"] == 128 and summary["answers"] == 128
    assert summary["requests"] >= 100
    assert summary["feedbacks_per_job"] == [1], "every feedback arrived exactly once"
    assert summary["feedbacks_match_results"]
    assert summary["missing_route"] == 404 and summary["bad_body"] == 400
    # The reactor thread stopped at interpreter exit without complaint.
    assert "Traceback" not in finished.stderr
    assert "Unhandled" not in finished.stderr
