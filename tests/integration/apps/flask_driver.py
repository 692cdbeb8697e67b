"""Drives examples/flask_app/app.py with Flask's test client from eight threads.

Started by tests/integration/test_flask_example.py with the node's command line in argv (the
distributor's port is only known once the app is imported); prints one JSON summary line and
then simply returns, leaving the reactor thread to ``JR``'s exit handler.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from twisted.internet.threads import blockingCallFromThread

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "examples" / "flask_app"))

import app as example

from jobreactor import JR

THREADS = 8
JOBS_PER_THREAD = 16


def text_for(thread: int, n: int) -> str:
    return " ".join(["w" * (k + 1) for k in range((thread * 7 + n) % 11 + 1)])


def main() -> None:
    assert JR.distributor is not None
    port = JR.distributor.address.port
    node = subprocess.Popen([*sys.argv[1:], "--distributor", f"tcp:host=127.0.0.1:port={port}"])
    try:
        JR.wait_for_nodes(1, timeout=30)
        lock = threading.Lock()
        answers: list[dict[str, Any]] = []
        problems: list[str] = []
        requests = [0]

        def worker(number: int) -> None:
            client = example.app.test_client()
            ids = []
            for n in range(JOBS_PER_THREAD):
                text = text_for(number, n)
                response = client.post("/jobs", json={"name": "word_count", "args": {"text": text}})
                if response.status_code != 202:
                    problems.append(f"POST answered {response.status_code}")
                    continue
                ids.append((response.get_json()["id"], text))
            for job_id, text in ids:
                response = client.get(f"/jobs/{job_id}?wait=30")
                state = response.get_json()
                with lock:
                    requests[0] += 2
                    answers.append(state)
                if state["status"] != "complete" or state["result"]["text"] != text:
                    problems.append(f"job {job_id}: {state}")
                elif state["result"]["words"] != len(text.split()):
                    problems.append(f"job {job_id}: wrong count {state['result']}")

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        # Feedbacks run in the reactor thread right after the handle is settled: one more
        # round trip through that thread and every one due has run.
        blockingCallFromThread(JR.reactor, lambda: None)
        with example.jobs.lock:
            counts = {job_id: len(got) for job_id, got in example.jobs.feedbacks.items()}
            feedback_words = {
                job_id: got[0].get("words") for job_id, got in example.jobs.feedbacks.items() if got
            }
        results = {state["id"]: state["result"]["words"] for state in answers if "result" in state}
        summary = {
            "requests": requests[0],
            "jobs": len(counts),
            "answers": len(answers),
            "feedbacks_per_job": sorted(set(counts.values())),
            "feedbacks_match_results": feedback_words == results,
            "problems": problems[:5],
            "missing_route": example.app.test_client().get("/jobs/nope").status_code,
            "bad_body": example.app.test_client().post("/jobs", json=[1]).status_code,
        }
        print(json.dumps(summary), flush=True)
    finally:
        node.terminate()
        node.wait(15)


if __name__ == "__main__":
    main()
