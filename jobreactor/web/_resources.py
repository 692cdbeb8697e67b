"""The dashboard's URL tree: pages, JSON API, actions, live stream and ``/metrics``.

``/``                        the page (one HTML file; views are chosen by the URL's ``#``)
``/static/...``              its CSS and JavaScript, shipped in the wheel
``/events?view=V``           live updates (Server-Sent Events), see :mod:`._live`
``/api/overview|names|failed|delayed|nodes|stats``, ``/api/jobs/ID``   the same data as JSON
``POST /api/jobs/ID/cancel``, ``POST /api/jobs/ID/retry``, ``POST /api/names/N/retry-failed``
``/metrics``                 Prometheus

Actions need the header ``X-JR-Action: 1``: a page on another site can make a browser send a
plain form POST (with remembered basic credentials) but not a custom header, so no foreign
page can cancel jobs through a logged-in browser.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.guard import BasicCredentialFactory, HTTPAuthSessionWrapper
from twisted.web.resource import IResource, NoResource, Resource
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.static import File
from zope.interface import implementer

from jobreactor.web import _snapshot as snapshot
from jobreactor.web._live import LiveUpdates
from jobreactor.web._metrics import MetricsResource, registry_for

log = Logger()

#: The header an action must carry (see the module docstring).
ACTION_HEADER = b"X-JR-Action"


def static_directory() -> str:
    """The folder of the page's static files inside the installed package."""
    return str(resources.files("jobreactor.web") / "static")


def _json(request: Request, value: Any, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(value, default=str).encode("utf-8")


def _rest(request: Request) -> list[bytes]:
    """The path segments below the resource that answers."""
    return request.postpath or []


def _error(request: Request, code: int, message: str) -> bytes:
    return _json(request, {"error": message}, code)


class _Page(File):
    """The one HTML page, with headers that keep foreign scripts and frames out."""

    def render_GET(self, request: Request) -> Any:
        request.setHeader(
            b"Content-Security-Policy",
            b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        )
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        return super().render_GET(request)


class _Static(File):
    """The static files, without the directory listing ``File`` would make."""

    def directoryListing(self) -> Resource:
        return NoResource("no listing")


class _Json(Resource):
    """A read-only JSON document made by ``build`` at each request."""

    isLeaf = True

    def __init__(self, build: Callable[[], Any]) -> None:
        super().__init__()
        self._build = build

    def render_GET(self, request: Request) -> bytes:
        return _json(request, self._build())


class StoredJobs:
    """Job pages for jobs the distributor only has in its storage (``distributor.outcome``).

    The live stream builds its documents synchronously, so a look-up starts on the first
    request for a job and its answer is kept (for the last ``KEEP`` jobs asked about).
    """

    KEEP = 100

    def __init__(self, distributor: Any) -> None:
        self.distributor = distributor
        self._found: dict[str, dict[str, Any] | None] = {}

    def lookup(self, job_id: str) -> Deferred[dict[str, Any] | None]:
        outcome = getattr(self.distributor, "outcome", None)
        if not callable(outcome):
            return succeed(None)
        looked: Deferred[Any] = maybeDeferred(outcome, job_id)

        def found(stored: Any) -> dict[str, Any] | None:
            detail = None if stored is None else snapshot.stored_detail(stored)
            self._found[job_id] = detail
            while len(self._found) > self.KEEP:
                del self._found[next(iter(self._found))]
            return detail

        def failed(failure: Failure) -> None:
            log.failure("looking up the stored outcome of job {job_id}", failure, job_id=job_id)
            return None

        return looked.addCallbacks(found, failed)

    def cached(self, job_id: str) -> dict[str, Any] | None:
        """The stored page if known; else None, and a look-up is started for the next push."""
        if job_id not in self._found:
            self._found[job_id] = None  # asked once: a missing job is not looked up each tick
            self.lookup(job_id)
        return self._found.get(job_id)


class _Jobs(Resource):
    """``/api/jobs/ID`` (GET) and ``/api/jobs/ID/cancel|retry`` (POST)."""

    isLeaf = True

    def __init__(self, distributor: Any, stored: StoredJobs) -> None:
        super().__init__()
        self.distributor = distributor
        self.stored = stored

    def render_GET(self, request: Request) -> Any:
        path = _rest(request)
        if len(path) != 1 or not path[0]:
            return _error(request, 404, "ask for /api/jobs/JOB_ID")
        job_id = path[0].decode("utf-8", "replace")
        detail = snapshot.job_detail(self.distributor, job_id)
        if detail is not None:
            return _json(request, detail)

        def answer(stored: dict[str, Any] | None) -> None:
            if request.finished or request._disconnected:  # type: ignore[attr-defined]
                return
            if stored is None:
                message = f"no job {job_id} here (unknown, or its outcome has expired)"
                request.write(_error(request, 404, message))
            else:
                request.write(_json(request, stored))
            request.finish()

        self.stored.lookup(job_id).addCallback(answer).addErrback(
            lambda failure: log.failure("answering /api/jobs/{job_id}", failure, job_id=job_id)
        )
        return NOT_DONE_YET

    def render_POST(self, request: Request) -> Any:
        path = _rest(request)
        if len(path) != 2 or path[1] not in (b"cancel", b"retry"):
            return _error(request, 404, "POST to /api/jobs/JOB_ID/cancel or .../retry")
        if request.getHeader(ACTION_HEADER) != b"1":
            return _error(request, 403, "actions need the header X-JR-Action: 1")
        job_id = path[0].decode("utf-8", "replace")
        if path[1] == b"cancel":
            cancelled = self.distributor.cancel_ids([job_id])
            if not cancelled:
                return _error(request, 404, f"job {job_id} is not pending: nothing to cancel")
            log.info("dashboard: cancel of job {job_id} requested", job_id=job_id)
            return _json(request, {"id": job_id, "cancel_requested": True})
        return _retry(request, self.distributor, [job_id])


class _Names(Resource):
    """``/api/names`` (GET: the per-name table) and ``POST /api/names/NAME/retry-failed``."""

    isLeaf = True

    def __init__(self, distributor: Any) -> None:
        super().__init__()
        self.distributor = distributor

    def render_GET(self, request: Request) -> bytes:
        if any(_rest(request)):
            return _error(request, 404, "GET /api/names has no sub-pages")
        return _json(request, snapshot.names(self.distributor))

    def render_POST(self, request: Request) -> Any:
        path = _rest(request)
        if len(path) != 2 or path[1] != b"retry-failed":
            return _error(request, 404, "POST to /api/names/NAME/retry-failed")
        if request.getHeader(ACTION_HEADER) != b"1":
            return _error(request, 403, "actions need the header X-JR-Action: 1")
        name = path[0].decode("utf-8", "replace")
        ids = [record.job.id for record in self.distributor.stats.failed_jobs()]
        ids = [
            job_id
            for job_id in ids
            if (record := self.distributor.stats.finished_job(job_id)) and record.job.name == name
        ]
        return _retry(request, self.distributor, ids)


def _retry(request: Request, distributor: Any, job_ids: list[str]) -> Any:
    """Call the distributor's ``retry(job_id)`` for each id; 501 if it cannot retry."""
    if not snapshot.can_retry(distributor):
        return _error(
            request, 501, "this distributor keeps no failed jobs, so it cannot retry them"
        )
    results: list[Deferred[Any]] = [maybeDeferred(distributor.retry, job_id) for job_id in job_ids]

    def answer(outcomes: list[tuple[bool, Any]]) -> None:
        retried = [job_id for job_id, (ok, _) in zip(job_ids, outcomes, strict=True) if ok]
        errors = {
            job_id: str(value.value)
            for job_id, (ok, value) in zip(job_ids, outcomes, strict=True)
            if not ok and isinstance(value, Failure)
        }
        if not request.finished and not request._disconnected:  # type: ignore[attr-defined]
            body = {"retried": retried, "errors": errors}
            if errors and not retried:  # nothing happened: say why, as the error
                body["error"] = next(iter(errors.values()))
                request.write(_json(request, body, 409))
            else:
                request.write(_json(request, body))
            request.finish()

    DeferredList(results, consumeErrors=True).addCallback(answer).addErrback(
        lambda failure: log.failure("dashboard retry failed", failure)
    )
    return NOT_DONE_YET


class _Root(Resource):
    """Routes ``/metrics`` around the guard when it is left open, the rest through it."""

    def __init__(self, guarded: Resource, metrics: Resource, metrics_open: bool) -> None:
        super().__init__()
        self._guarded = guarded
        self._metrics = metrics
        self._metrics_open = metrics_open

    def getChildWithDefault(self, path: bytes, request: Request) -> Any:
        if path == b"metrics" and self._metrics_open:
            return self._metrics
        # Hand the whole path to the guarded tree: put back the segment just taken.
        request.postpath.insert(0, request.prepath.pop())  # type: ignore[union-attr]
        return self._guarded


@implementer(IRealm)
class _DashboardRealm:
    """Every user who passes the checker sees the same dashboard."""

    def __init__(self, resource: Resource) -> None:
        self.resource = resource

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
        if IResource in interfaces:
            return (IResource, self.resource, lambda: None)
        raise NotImplementedError("the dashboard only serves web resources")


def build_tree(
    distributor: Any,
    clock: IReactorTime,
    *,
    checkers: list[ICredentialsChecker] | None = None,
    metrics_open: bool = False,
    push_interval: float | None = None,
) -> tuple[Resource, LiveUpdates]:
    """The root resource of a dashboard over ``distributor`` and its live-update stream.

    With ``checkers``, everything (``/metrics`` too unless ``metrics_open``) needs HTTP basic
    credentials that one of them accepts.
    """

    stored = StoredJobs(distributor)

    def render_view(view: str, argument: str | None) -> str:
        now = clock.seconds()
        nodes = distributor.nodes()  # O(pending jobs): once per push, shared
        document: dict[str, Any] = {
            "view": view,
            "summary": snapshot.summary(distributor, now, nodes),
        }
        if view == "overview":
            document.update(snapshot.overview(distributor, now, nodes))
        elif view == "names":
            document.update(snapshot.names(distributor))
        elif view == "failed":
            document.update(snapshot.failed(distributor, argument))
        elif view == "delayed":
            document.update(snapshot.delayed(distributor, now))
        elif view == "job":
            document["job_id"] = argument
            job_id = argument or ""
            document["job"] = snapshot.job_detail(distributor, job_id) or stored.cached(job_id)
        return json.dumps(document, default=str)

    live = (
        LiveUpdates(render_view, clock)
        if push_interval is None
        else LiveUpdates(render_view, clock, push_interval)
    )
    tree = Resource()
    static = static_directory()
    tree.putChild(b"", _Page(f"{static}/index.html", defaultType="text/html; charset=utf-8"))
    tree.putChild(b"static", _Static(static))
    tree.putChild(b"events", live)
    api = Resource()
    tree.putChild(b"api", api)
    api.putChild(b"overview", _Json(lambda: snapshot.overview(distributor, clock.seconds())))
    api.putChild(b"names", _Names(distributor))
    api.putChild(b"failed", _Json(lambda: snapshot.failed(distributor)))
    api.putChild(b"delayed", _Json(lambda: snapshot.delayed(distributor, clock.seconds())))
    api.putChild(b"nodes", _Json(lambda: {"nodes": snapshot.node_rows(distributor)}))
    api.putChild(b"stats", _Json(lambda: snapshot.stats_document(distributor, clock.seconds())))
    api.putChild(b"jobs", _Jobs(distributor, stored))
    metrics = MetricsResource(registry_for(distributor))
    tree.putChild(b"metrics", metrics)
    if not checkers:
        return tree, live
    portal = Portal(_DashboardRealm(tree), checkers)
    guarded = HTTPAuthSessionWrapper(portal, [BasicCredentialFactory(b"jobreactor dashboard")])
    return _Root(guarded, metrics, metrics_open), live  # type: ignore[arg-type]
