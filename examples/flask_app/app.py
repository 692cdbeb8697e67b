"""A Flask application that hands work to jobreactor nodes.

At import, ``JR.run`` starts the Twisted reactor in a background thread with a distributor in
it; Flask's request threads then call ``JR.enqueue`` (thread-safe) and read the job's handle.

- ``POST /jobs`` with ``{"name": "word_count", "args": {"text": "..."}}`` enqueues a job and
  answers ``{"id": ...}`` at once (``202``); its success feedback records the result.
- ``GET /jobs/<id>`` answers the job's status and, once it is over, its result or error;
  ``?wait=SECONDS`` blocks this request's thread (never the reactor's) until then.

``python app.py`` also starts a node for the demo (see README.md); in production run the nodes
with ``twist jr-node`` and the app under any WSGI server, one process per distributor port.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

from jobreactor import JR, InvalidJobError, JobCancelled, JobFailed, JobHandle

HERE = Path(__file__).resolve().parent
#: Where the distributor listens; nodes dial it. Port 0 picks a free one.
DISTRIBUTOR_HOST = os.environ.get("FLASK_APP_DISTRIBUTOR_HOST", "127.0.0.1")
DISTRIBUTOR_PORT = int(os.environ.get("FLASK_APP_DISTRIBUTOR_PORT", "5000"))


class Jobs:
    """The jobs this process enqueued: their handles and the feedbacks that arrived.

    The feedbacks run in the reactor thread and the routes in Flask's threads, so everything
    here is behind one lock.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.handles: dict[str, JobHandle] = {}
        self.feedbacks: dict[str, list[dict[str, Any]]] = {}

    def enqueue(self, name: str, args: dict[str, Any]) -> JobHandle:
        received: list[dict[str, Any]] = []  # made before enqueue: a feedback may come at once

        def feedback(args: dict[str, Any]) -> None:
            with self.lock:
                received.append(args)

        handle = JR.enqueue(name, args, success=feedback, error=feedback)
        with self.lock:
            self.handles[handle.id] = handle
            self.feedbacks[handle.id] = received
        return handle

    def get(self, job_id: str) -> JobHandle | None:
        with self.lock:
            return self.handles.get(job_id)

    def feedback_count(self, job_id: str) -> int:
        with self.lock:
            return len(self.feedbacks.get(job_id, []))


def describe(handle: JobHandle, wait: float) -> dict[str, Any]:
    """The job's state for ``GET /jobs/<id>``."""
    state: dict[str, Any] = {"id": handle.id, "name": handle.name}
    try:
        state["result"] = handle.result(timeout=wait)
        state["status"] = "complete"
    except TimeoutError:
        state["status"] = "pending"
    except JobFailed as failed:
        state.update(status="failed", error=failed.error, error_type=failed.error_type)
    except JobCancelled:
        state["status"] = "cancelled"
    state["feedbacks"] = jobs.feedback_count(handle.id)
    return state


jobs = Jobs()
app = Flask(__name__)


@app.post("/jobs")
def enqueue_job() -> ResponseReturnValue:
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        return jsonify(error='send {"name": "...", "args": {...}}'), 400
    try:
        handle = jobs.enqueue(body["name"], body.get("args") or {})
    except InvalidJobError as error:
        return jsonify(error=str(error)), 400
    return jsonify(id=handle.id), 202


@app.get("/jobs/<job_id>")
def job_status(job_id: str) -> ResponseReturnValue:
    handle = jobs.get(job_id)
    if handle is None:
        return jsonify(error=f"no job {job_id}"), 404
    try:
        wait = min(max(float(request.args.get("wait", "0")), 0.0), 60.0)
    except ValueError:
        return jsonify(error="wait is a number of seconds"), 400
    return jsonify(describe(handle, wait))


# The reactor and the distributor start with the application; JR stops them at exit.
JR.run(lambda: JR.start_distributor(DISTRIBUTOR_HOST, DISTRIBUTOR_PORT))
JR.wait_ready(timeout=10)


def main() -> None:
    """The demo: this app on http://127.0.0.1:8000 and one node as a child process."""
    import subprocess
    import sys

    assert JR.distributor is not None
    port = JR.distributor.address.port
    twistd = str(Path(sys.executable).with_name("twistd"))
    node = subprocess.Popen(
        [
            twistd, "-n", "--pidfile=", f"--logfile={HERE / 'worker.log'}", "jr-node",
            "--name", "flask_worker", "--jobs", str(HERE / "reactor_jobs"),
            "--distributor", f"tcp:host=127.0.0.1:port={port}",
        ]
    )  # fmt: skip
    try:
        app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "8000")), threaded=True)
    finally:
        node.terminate()
        node.wait(15)


if __name__ == "__main__":
    main()
