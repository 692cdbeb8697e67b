"""Jobs of the twisted.web example, loaded by the node."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from jobreactor import job


@job("word_count")
def word_count(args: dict[str, Any]) -> dict[str, Any]:
    return {"words": len(str(args.get("text", "")).split())}


@job("slow_echo")
def slow_echo(args: dict[str, Any]) -> Deferred[dict[str, Any]]:
    """Answers after ``seconds`` without blocking the node: a Deferred, like any Twisted code."""
    from twisted.internet import reactor

    seconds = float(args.get("seconds", 1))
    return deferLater(reactor, seconds, lambda: {"slept": seconds})
