"""examples/twisted_web: results come back over HTTP; a slow job does not hold up a fast one.

The server and the node are child processes; the HTTP requests come from a bounded pool of
threads with ``urllib`` (every request has a timeout).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT, TWISTD, node_env

pytestmark = pytest.mark.integration

EXAMPLE = ROOT / "examples" / "twisted_web"


def wait_for_line(path: Path, pattern: str, process: subprocess.Popen[bytes]) -> re.Match[str]:
    """Poll a child's output file for a line (the child prints it once it listens)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = re.search(pattern, path.read_text())
        if match:
            return match
        assert process.poll() is None, path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"no {pattern!r} within 30 s:\n{path.read_text()}")


class WebExample:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.output = tmp_path / "server.out"
        with self.output.open("wb") as out:
            env = node_env()
            env.update(WEB_PORT="0", DISTRIBUTOR_PORT="0")
            self.server = subprocess.Popen(
                [sys.executable, str(EXAMPLE / "server.py")],
                env=env,
                cwd=tmp_path,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.node: subprocess.Popen[bytes] | None = None
        self.distributor_port = int(
            wait_for_line(self.output, r"distributor listening on [\d.]+:(\d+)", self.server)[1]
        )
        self.web = wait_for_line(self.output, r"web listening on (http://\S+)", self.server)[1]

    def start_node(self) -> None:
        self.node = subprocess.Popen(
            [
                TWISTD, "-n", "--pidfile=", f"--logfile={self.tmp_path / 'node.log'}",
                "jr-node", "--name", "web_worker", "--slots", "10",
                "--jobs", str(EXAMPLE / "reactor_jobs"),
                "--distributor", f"tcp:host=127.0.0.1:port={self.distributor_port}",
            ],
            env=node_env(),
            cwd=self.tmp_path,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.get("/nodes")[1]:
                return
            time.sleep(0.1)
        raise AssertionError("the node did not connect within 30 s")

    def wait_for_load(self, load: int) -> None:
        """Poll ``/nodes`` until the node holds ``load`` jobs."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if sum(node["load"] for node in self.get("/nodes")[1]) >= load:
                return
            time.sleep(0.02)
        raise AssertionError(f"the node did not hold {load} jobs within 30 s")

    def get(self, path: str, timeout: float = 30) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(self.web + path, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def stop(self) -> None:
        for process in (self.node, self.server):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(10)


@pytest.fixture
def example(tmp_path: Path) -> Iterator[WebExample]:
    started = WebExample(tmp_path)
    yield started
    started.stop()


def run_job(name: str, **args: str) -> str:
    return f"/run/{name}?{urllib.parse.urlencode(args)}"


def test_concurrent_requests_get_their_results(example: WebExample) -> None:
    example.start_node()
    texts = [" ".join(["word"] * n) for n in range(1, 41)]
    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(lambda text: example.get(run_job("word_count", text=text)), texts))
    for text, (status, body) in zip(texts, answers, strict=True):
        assert status == 200, body
        assert body["status"] == "complete"
        assert body["result"] == {"text": text, "words": len(text.split())}
    assert len({body["id"] for _, body in answers}) == len(texts)


def test_a_slow_job_does_not_hold_up_a_fast_one(example: WebExample) -> None:
    example.start_node()

    def timed(path: str) -> tuple[int, Any, float]:
        status, body = example.get(path)
        return status, body, time.monotonic()

    with ThreadPoolExecutor(max_workers=2) as pool:
        started = time.monotonic()
        slow = pool.submit(timed, run_job("slow_echo", seconds="3"))
        example.wait_for_load(1)  # the slow job is on the node
        fast = pool.submit(timed, run_job("word_count", text="a b"))
        fast_status, fast_body, fast_done = fast.result(timeout=30)
        assert fast_status == 200 and fast_body["result"]["words"] == 2
        assert not slow.done(), "the fast answer came while the slow job was still running"
        slow_status, slow_body, slow_done = slow.result(timeout=30)
    assert slow_status == 200 and slow_body["result"]["slept"] == 3.0
    assert fast_done - started < 2.5 < slow_done - started


def test_errors_are_answered_too(example: WebExample) -> None:
    example.start_node()
    status, body = example.get("/run/no_such_job")
    assert status == 502 and body["error_type"] == "NoSuchJob"
    status, body = example.get("/run/")
    assert status == 400 and "name" in body["error"]


def test_the_server_stops_cleanly(example: WebExample) -> None:
    example.server.send_signal(signal.SIGTERM)
    assert example.server.wait(15) == 0
    assert "Traceback" not in example.output.read_text()
