"""``JR.run()``: a non-Twisted application enqueues from many threads; everything arrives once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import TWISTD, NodeProcesses, node_env

APP = Path(__file__).with_name("apps") / "threaded_app.py"


def test_threads_enqueue_through_the_background_reactor(nodes: NodeProcesses) -> None:
    node_command = [
        TWISTD, "-n", "--pidfile=", f"--logfile={nodes.log_path('worker_1')}",
        "jr-node", "--name", "worker_1", "--jobs", str(nodes.jobs_dir), "--slots", "20",
    ]  # fmt: skip
    finished = subprocess.run(
        [sys.executable, str(APP), *node_command],
        env=node_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert finished.returncode == 0, finished.stderr
    summary = json.loads(finished.stdout.strip().splitlines()[-1])
    assert summary["results"] == 200
    assert summary["distinct_feedbacks"] == 200
    assert summary["max_feedbacks_per_job"] == 1
    assert summary["feedback_threads"] == ["jobreactor-reactor"], "feedbacks run in the reactor"
    assert "not JSON" in summary["refused"][0] or "set" in summary["refused"][0]
    assert summary["nodes"] == ["worker_1"]


def test_broken_jobs_file_stops_the_node_naming_file_and_line(tmp_path: Path) -> None:
    jobs = tmp_path / "reactor_jobs"
    (jobs / "nested").mkdir(parents=True)
    (jobs / "fine.py").write_text(
        "from jobreactor import job\n\n@job('fine')\ndef fine(args): pass\n"
    )
    (jobs / "nested" / "broken.py").write_text("import os\n\nx = 1\nraise KeyError('nope')\n")
    finished = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "jr-node", "--name", "w", "--jobs", str(jobs)],
        env=node_env(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert finished.returncode != 0
    output = finished.stdout + finished.stderr
    assert f"{jobs / 'nested' / 'broken.py'}, line 4: KeyError" in output
    assert "Traceback" not in output
