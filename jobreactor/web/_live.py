"""``GET /events``: the dashboard's live updates as Server-Sent Events.

One timer on the distributor's clock pushes a snapshot to every open page a few times a
second, and only while at least one page is open: a distributor nobody watches does no
dashboard work at all. Snapshots are aggregates (counts, rates, the rows of one page), never
one event per job, so the cost does not grow with the job rate. Pages that show the same
view share one snapshot per tick.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

#: Seconds between two pushes to the open pages.
PUSH_INTERVAL = 0.25
#: The views a page may ask for with ``?view=``.
VIEWS = ("overview", "names", "failed", "delayed", "job")

log = Logger()

#: Builds the JSON text for one ``(view, argument)``; called once per tick per distinct view.
Render = Callable[[str, str | None], str]


@attrs.define(eq=False)
class _Subscriber:
    request: Request
    view: str
    argument: str | None


class LiveUpdates(Resource):
    """Keeps the open event streams and the timer that feeds them."""

    isLeaf = True

    def __init__(self, render: Render, clock: IReactorTime, interval: float = PUSH_INTERVAL):
        super().__init__()
        self._render = render
        self._clock = clock
        self.interval = interval
        self._subscribers: list[_Subscriber] = []
        self._timer: task.LoopingCall | None = None

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def render_GET(self, request: Request) -> Any:
        view = _arg(request, b"view") or "overview"
        if view not in VIEWS:
            request.setResponseCode(400)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return f"unknown view {view!r}; one of: {', '.join(VIEWS)}\n".encode()
        subscriber = _Subscriber(request, view, _arg(request, b"job") or _arg(request, b"name"))
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"X-Accel-Buffering", b"no")  # proxies: do not hold the stream
        request.write(b"retry: 2000\n\n")
        self._subscribers.append(subscriber)
        request.notifyFinish().addBoth(self._gone, subscriber)
        self._push_to([subscriber])  # the page has its data at once, not after a tick
        if self._timer is None:
            self._timer = task.LoopingCall(self._tick)
            self._timer.clock = self._clock
            self._timer.start(self.interval, now=False).addErrback(self._timer_failed)
        return NOT_DONE_YET

    def _gone(self, _: Any, subscriber: _Subscriber) -> None:
        if subscriber in self._subscribers:
            self._subscribers.remove(subscriber)
        if not self._subscribers and self._timer is not None:
            timer, self._timer = self._timer, None
            if timer.running:
                timer.stop()

    def _timer_failed(self, failure: Failure) -> None:
        log.failure("the dashboard's live updates stopped", failure)

    def _tick(self) -> None:
        self._push_to(list(self._subscribers))

    def _push_to(self, subscribers: list[_Subscriber]) -> None:
        made: dict[tuple[str, str | None], bytes] = {}
        for subscriber in subscribers:
            key = (subscriber.view, subscriber.argument)
            data = made.get(key)
            if data is None:
                try:
                    text = self._render(*key)
                except Exception:
                    log.failure("could not build the dashboard's {view} view", view=key[0])
                    text = json.dumps({"error": "the distributor could not build this view"})
                data = made[key] = b"data: " + text.encode("utf-8") + b"\n\n"
            subscriber.request.write(data)

    def close(self) -> None:
        """End every open stream (the web port is stopping)."""
        for subscriber in list(self._subscribers):
            subscriber.request.finish()
        self._subscribers.clear()
        if self._timer is not None and self._timer.running:
            self._timer.stop()
        self._timer = None


def _arg(request: Request, name: bytes) -> str | None:
    values = request.args.get(name) if request.args else None
    return values[0].decode("utf-8", "replace") if values else None
