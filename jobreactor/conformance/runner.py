"""Checks, their registry and the runner that prints one line per check.

A check is a short script against a peer; it cites the section of docs/protocol.md it tests
and fails with a sentence saying what the specification wanted and what came instead.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

from jobreactor.conformance.wire import Box, Closed, NoAnswer, Peer, Reply, get_json


class Failed(Exception):
    """The peer did not do what the cited section says."""


class Skipped(Exception):
    """The check needs an option that was not given."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise Failed(message)


def expect_error(reply: Reply, code: str, what: str) -> None:
    expect(reply.is_error, f"{what}: expected the error {code}, got {reply!r}")
    expect(reply.code == code, f"{what}: expected the error {code}, got {reply.code}")


def expect_answer(reply: Reply, what: str) -> None:
    expect(not reply.is_error, f"{what}: expected an answer, got {reply!r}")


def new_id() -> str:
    return str(uuid.uuid4())


@dataclass
class Settings:
    """What the command line gave."""

    host: str
    port: int
    timeout: float = 5.0
    version: int = 1
    hello_timeout: float | None = None
    job: str | None = None
    expect_leaving: bool = False


CheckFunction = Callable[..., None]


@dataclass
class Check:
    section: str
    title: str
    run: Callable[..., None]


@dataclass
class Suite:
    """The checks of one role, in the order they run."""

    role: str
    checks: list[Check] = field(default_factory=list)

    def check(
        self, section: str, title: str
    ) -> Callable[[Callable[..., None]], Callable[..., None]]:
        def register(function: Callable[..., None]) -> Callable[..., None]:
            self.checks.append(Check(section, title, function))
            return function

        return register


class Outcome:
    PASS = "PASS"
    FAIL = "FAIL"
    SKIP = "SKIP"


def run_suite(suite: Suite, context_for: Callable[[], Any], out: TextIO = sys.stdout) -> int:
    """Run every check with a fresh context; print a line each and a summary; 0 if none failed."""
    counts = {Outcome.PASS: 0, Outcome.FAIL: 0, Outcome.SKIP: 0}
    for check in suite.checks:
        context = context_for()
        started = time.monotonic()
        try:
            check.run(context)
            outcome, note = Outcome.PASS, ""
        except Skipped as reason:
            outcome, note = Outcome.SKIP, str(reason)
        except Failed as reason:
            outcome, note = Outcome.FAIL, str(reason)
        except NoAnswer as reason:
            outcome, note = Outcome.FAIL, f"timed out: {reason}"
        except Closed as reason:
            outcome, note = Outcome.FAIL, f"connection closed unexpectedly: {reason}"
        except Exception as reason:
            # A peer under test may answer with any shape (a job that is not an object, a
            # list where an id was due): that fails the check, never the whole run.
            outcome, note = Outcome.FAIL, f"unexpected answer ({type(reason).__name__}: {reason})"
        finally:
            cleanup = getattr(context, "cleanup", None)
            if cleanup is not None:
                cleanup()
        counts[outcome] += 1
        seconds = time.monotonic() - started
        line = f"{outcome}  §{check.section:<6} {check.title} ({seconds:.1f} s)"
        if note:
            line += f"\n      {note}"
        print(line, file=out, flush=True)
    print(
        f"{suite.role}: {counts[Outcome.PASS]} passed, {counts[Outcome.FAIL]} failed, "
        f"{counts[Outcome.SKIP]} skipped",
        file=out,
        flush=True,
    )
    return 1 if counts[Outcome.FAIL] else 0


@contextmanager
def closing(*peers: Peer) -> Iterator[None]:
    try:
        yield
    finally:
        for peer in peers:
            peer.close()


def reports_of(command: Box) -> list[dict[str, Any]]:
    reports = get_json(command, "reports")
    expect(isinstance(reports, list), f"reports must be a list, got {reports!r:.80}")
    return list(reports)


def report_in(peer: Peer, command: str, job_id: str, timeout: float | None) -> dict[str, Any]:
    """Answer ``command`` boxes (``JobsDone``, ``Outcomes``) until one carries a report for
    ``job_id``; return that report."""
    deadline = time.monotonic() + (peer.timeout if timeout is None else timeout)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise NoAnswer(f"no {command} report for job {job_id}")
        box = peer.next_command(command, timeout=left)
        reports = reports_of(box)
        peer.answer(box)
        for item in reports:
            if isinstance(item, dict) and item.get("job_id") == job_id:
                return item
