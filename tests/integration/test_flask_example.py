"""examples/flask_app: concurrent requests from eight threads, each feedback exactly once; the
README's production commands as printed.

The app runs in a child process: ``JR.run`` starts its own reactor in a thread, which must not
meet pytest-twisted's reactor in this one; and the child's clean exit is part of the check.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

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


def test_the_production_commands_of_the_readme_serve_jobs(tmp_path: Path) -> None:
    """The two commands of examples/flask_app/README.md, as printed but for free ports: the
    Flask server and the distributor each get the port they were given (no clash on 5000)."""
    readme = (ROOT / "examples" / "flask_app" / "README.md").read_text(encoding="utf-8")
    block = readme.split("In production", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    lines = block.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("FLASK_APP_DISTRIBUTOR_PORT=5000 flask ")
    assert lines[1].startswith("twist jr-node ") and lines[1].endswith("port=5000")
    distributor_port, web_port = free_port(), free_port()
    env = node_env()
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    processes = []
    try:
        for index, line in enumerate(lines):
            command = line.replace("5000", str(distributor_port)).replace("8000", str(web_port))
            with (tmp_path / f"{index}.log").open("w") as log:
                processes.append(
                    subprocess.Popen(
                        command, shell=True, cwd=ROOT, env=env, stdout=log, stderr=log,
                        start_new_session=True,
                    )
                )  # fmt: skip
        base = f"http://127.0.0.1:{web_port}"
        job_id = None
        for _ in range(100):  # the server is up within a few seconds
            try:
                job_id = post_json(f"{base}/jobs", {"name": "word_count", "args": {"text": "a b"}})
                break
            except OSError:
                time.sleep(0.1)
        assert job_id is not None, (tmp_path / "0.log").read_text()
        with urllib.request.urlopen(f"{base}/jobs/{job_id}?wait=20", timeout=30) as answer:
            state = json.load(answer)
        assert state["status"] == "complete", state
        assert state["result"]["words"] == 2
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def post_json(url: str, body: dict[str, Any]) -> str:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        job_id: str = json.load(answer)["id"]
    return job_id


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
