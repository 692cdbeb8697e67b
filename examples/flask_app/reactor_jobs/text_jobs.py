"""Jobs of the Flask example, loaded by the node (``--jobs examples/flask_app/reactor_jobs``)."""

from __future__ import annotations

from typing import Any

from jobreactor import job, job_callback


@job("word_count")
def word_count(args: dict[str, Any]) -> dict[str, Any]:
    return {"words": len(str(args["text"]).split())}


@job_callback("word_count", "longest")
def longest(args: dict[str, Any]) -> dict[str, Any]:
    words = str(args["text"]).split()
    return {"longest": max(words, key=len) if words else ""}
