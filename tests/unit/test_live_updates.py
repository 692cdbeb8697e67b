"""The dashboard's live stream on a Clock: pushes only while a page is open, a few per second."""

from __future__ import annotations

import json

from twisted.internet.task import Clock
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from jobreactor.web._live import PUSH_INTERVAL, LiveUpdates


def open_page(live: LiveUpdates, view: bytes = b"overview") -> DummyRequest:
    request = DummyRequest([b"events"])
    request.args = {b"view": [view]}
    assert live.render_GET(request) is NOT_DONE_YET  # type: ignore[arg-type]
    return request


def events(request: DummyRequest) -> list[dict[str, object]]:
    text = b"".join(request.written).decode()
    return [
        json.loads(chunk[len("data: ") :])
        for chunk in text.split("\n\n")
        if chunk.startswith("data: ")
    ]


def test_pushes_one_snapshot_per_tick_per_view_only_while_subscribed() -> None:
    clock = Clock()
    built: list[tuple[str, str | None]] = []

    def render(view: str, argument: str | None) -> str:
        built.append((view, argument))
        return json.dumps({"view": view, "at": clock.seconds()})

    live = LiveUpdates(render, clock)
    assert not clock.getDelayedCalls(), "nothing runs before a page opens"
    first, second = open_page(live), open_page(live)
    assert [e["at"] for e in events(first)] == [0]  # the page gets data at once
    built.clear()

    clock.advance(PUSH_INTERVAL)
    assert built == [("overview", None)], "two pages of one view share a snapshot"
    assert [e["at"] for e in events(first)] == [0, PUSH_INTERVAL]
    assert [e["at"] for e in events(second)] == [0, PUSH_INTERVAL]

    clock.pump([PUSH_INTERVAL] * 4)  # one more second
    assert len(built) == 5  # a few per second, whatever the job rate

    first.processingFailed(Exception("page closed"))  # the browser went away
    second.processingFailed(Exception("page closed"))
    assert live.subscribers == 0
    assert not clock.getDelayedCalls(), "no page, no timer"
    built.clear()
    clock.advance(10)
    assert built == []


def test_an_unknown_view_is_a_clear_400() -> None:
    live = LiveUpdates(lambda view, argument: "{}", Clock())
    request = DummyRequest([b"events"])
    request.args = {b"view": [b"everything"]}
    body = live.render_GET(request)  # type: ignore[arg-type]
    assert request.responseCode == 400
    assert body == b"unknown view 'everything'; one of: overview, names, failed, delayed, job\n"
    assert live.subscribers == 0
