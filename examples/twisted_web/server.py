"""A twisted.web application that answers each request with the result of a job.

The original's AsyncSinatra example, the Twisted way: ``GET /run/<job>?arg=value`` enqueues
the job and returns ``NOT_DONE_YET``; the response is written when the job's Deferred fires,
i.e. when a node has run it. Nothing blocks: while one request waits for a slow job, the
reactor serves every other request.

Run with ``python examples/twisted_web/server.py`` (see README.md). The distributor lives in
this process (``JR.start_distributor``) and ``JR.run_forever`` runs the reactor.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from jobreactor import JR, InvalidJobError, JobCancelled, JobFailed

log = Logger()

#: Seconds a request waits for its job before answering 504.
JOB_TIMEOUT = float(os.environ.get("WEB_JOB_TIMEOUT", "60"))


def answer(request: Request, code: int, body: dict[str, Any]) -> None:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.write(json.dumps(body).encode() + b"\n")
    request.finish()


class RunJob(Resource):
    """``/run/<job name>?key=value&...``: the job's args are the query's (string) values."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes | int:
        from twisted.internet import reactor

        name = request.postpath[0].decode() if request.postpath else ""
        args = {key.decode(): values[0].decode() for key, values in (request.args or {}).items()}
        try:
            handle = JR.enqueue(name, args)
        except InvalidJobError as error:
            request.setResponseCode(400)
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"error": str(error)}).encode() + b"\n"

        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def done(result: dict[str, Any]) -> None:
            if not gone:
                answer(request, 200, {"id": handle.id, "status": "complete", "result": result})

        def failed(failure: Failure) -> None:
            if gone:
                return
            if failure.check(JobFailed):
                error = failure.value
                assert isinstance(error, JobFailed)
                body = {"status": "failed", "error": error.error, "error_type": error.error_type}
                answer(request, 502, {"id": handle.id, **body})
            elif failure.check(JobCancelled):
                answer(request, 502, {"id": handle.id, "status": "cancelled"})
            elif failure.check(defer.TimeoutError):
                answer(request, 504, {"id": handle.id, "status": "pending"})
            else:
                log.failure("job {job_id} for {uri}", failure, job_id=handle.id, uri=request.uri)
                answer(request, 500, {"id": handle.id, "error": failure.getErrorMessage()})

        waiting: defer.Deferred[Any] = handle.deferred.addTimeout(JOB_TIMEOUT, reactor)
        waiting.addCallbacks(done, failed)
        waiting.addErrback(lambda failure: log.failure("answering a request", failure))
        return NOT_DONE_YET


class Nodes(Resource):
    """``/nodes``: the connected nodes, as the distributor sees them."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        nodes = [{"name": info.name, "slots": info.slots, "load": info.load} for info in JR.nodes()]
        return json.dumps(nodes).encode() + b"\n"


def make_site() -> Site:
    root = Resource()
    root.putChild(b"run", RunJob())
    root.putChild(b"nodes", Nodes())
    return Site(root)


async def start() -> None:
    from twisted.internet import reactor

    host = os.environ.get("WEB_HOST", "127.0.0.1")
    distributor = await JR.start_distributor(host, int(os.environ.get("DISTRIBUTOR_PORT", "5000")))
    print(f"distributor listening on {host}:{distributor.address.port}", flush=True)
    endpoint = serverFromString(
        reactor, f"tcp:{int(os.environ.get('WEB_PORT', '8080'))}:interface={host}"
    )
    port = await endpoint.listen(make_site())
    print(f"web listening on http://{host}:{port.getHost().port}", flush=True)  # type: ignore[attr-defined]


def setup() -> defer.Deferred[None]:
    return defer.Deferred.fromCoroutine(start())


if __name__ == "__main__":
    JR.run_forever(setup)
