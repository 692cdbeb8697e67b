"""The demo's jobs: a chain with callbacks, a job that returns a Deferred, and one that fails."""

from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater

from jobreactor import job, job_callback, job_errback


@job("my_job")
def my_job(args: dict[str, Any]) -> None:
    args["result"] = "Yay!"


@job_callback("my_job", "shout")
def shout(args: dict[str, Any]) -> dict[str, Any]:
    return {"shouted": str(args.get("arg1", "")).upper()}


@job("slow_sum")
async def slow_sum(args: dict[str, Any]) -> dict[str, Any]:
    await deferLater(reactor, 0.2, lambda: None)
    return {"sum": sum(args["numbers"])}


@job("flaky", max_attempt=2, retry_delay=0.5)
def flaky(args: dict[str, Any]) -> None:
    raise ValueError(f"cannot handle {args['item']!r}")


@job_errback("flaky", "note_failure")
def note_failure(args: dict[str, Any]) -> None:
    args["noted"] = f"saw {args['error_type']}"
