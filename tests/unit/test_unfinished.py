"""The line a script prints when it exits with jobs unfinished."""

from __future__ import annotations

import io

from jobreactor.handle import JobHandle
from jobreactor.runtime import JobReactor
from jobreactor.unfinished import UnfinishedJobs, unfinished_message


def handle(name: str, number: int) -> JobHandle:
    return JobHandle(f"id-{number}", name, lambda handle: None)


def test_settled_jobs_are_not_reported_and_are_forgotten() -> None:
    tracked = UnfinishedJobs()
    handles = [handle("my_job", n) for n in range(200)]
    for index, each in enumerate(handles):
        tracked.add(each)
        if index % 2:
            each._settle({})

    pending = tracked.pending()
    assert pending == handles[0::2]
    assert len(tracked._handles) < 200  # settled handles were dropped on the way


def test_the_message_counts_and_names_the_jobs() -> None:
    pending = [handle("my_job", 1), handle("report", 2), handle("my_job", 3)]

    assert unfinished_message([], 0) is None
    assert unfinished_message(pending, None) == (
        "jobreactor: exiting with 3 jobs unfinished (my_job x2, report); their feedbacks will "
        "not run. Wait for them before exiting, e.g. handle.result(timeout=60)."
    )
    assert unfinished_message(pending[:1], 5) == (
        "jobreactor: exiting with 1 job unfinished (my_job); 1 never reached a node (is one "
        "running?); their feedbacks will not run. Wait for them before exiting, e.g. "
        "handle.result(timeout=60)."
    )


def test_a_runtime_with_nothing_unfinished_prints_nothing() -> None:
    out = io.StringIO()
    JobReactor().report_unfinished(out)
    assert out.getvalue() == ""
