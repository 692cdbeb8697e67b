"""The remote client's held jobs: kept as their wire text, sent exactly as ``Job.to_wire``
would have been encoded (the distributor reads the same bytes)."""

from __future__ import annotations

import datetime
import math
from typing import Any

import attrs
import pytest
from twisted.internet.task import Clock

from jobreactor.client import Submitter
from jobreactor.enqueueing import build_job
from jobreactor.errors import InvalidJobError
from jobreactor.jsontext import compact
from jobreactor.limits import DEFAULT_LIMITS
from jobreactor.model import Job, _checked_report, _plain_report
from jobreactor.protocol import JSON, Encoded

LIMIT = 1024 * 1024


def held_and_built(name: str, args: Any, options: dict[str, Any]) -> tuple[str, Job]:
    """The text a submitter holds for an enqueue, and the Job ``build_job`` makes of it."""
    clock = Clock()
    clock.advance(1_700_000_000.25)
    submitter = Submitter(clock, LIMIT)
    handle = submitter.enqueue(name, args, dict(options), None, None)
    built = build_job(name, args, dict(options), now=clock.seconds(), max_args_bytes=LIMIT)
    return submitter._jobs[handle.id].wire(), attrs.evolve(built, id=handle.id)


@pytest.mark.parametrize(
    ("name", "args", "options"),
    [
        ("noop", None, {}),
        ("noop", {"n": 1, "s": 'ż"\\', "f": 0.1, "b": True, "z": None}, {}),
        ("nested", {"deep": {"list": [1, [2, {"x": "y"}]]}, "big": 10**30}, {}),
        ('zażółć " name', {}, {}),
        ("later", {}, {"after": 2.5, "priority": -3, "max_attempt": 4, "timeout": 9}),
        (
            "placed",
            {},
            {"run_at": datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC), "period": 60},
        ),
        ("placed", {}, {"node": "n1", "not_node": ["b", "a"], "defer": True, "retry_delay": 0}),
        ("once", {}, {"unique_key": "k", "unique_for": 30}),
        ("cron", {}, {"cron": "*/5 * * * *", "timezone": "Europe/Warsaw", "missed": "run_once"}),
        ("after_deps", {}, {"depends_on": ["a", "b", "a"], "on_dependency_failure": "run"}),
    ],
)
def test_a_held_job_is_the_text_of_its_wire_form(
    name: str, args: Any, options: dict[str, Any]
) -> None:
    text, job = held_and_built(name, args, options)

    assert text == compact(job.to_wire())


def test_jobs_of_one_name_share_the_text_around_their_args() -> None:
    clock = Clock()
    submitter = Submitter(clock, LIMIT)
    first = submitter.enqueue("shared", {"n": 1}, {}, None, None)
    second = submitter.enqueue("shared", {"n": 2}, {}, None, None)

    assert submitter._jobs[first.id].shape is submitter._jobs[second.id].shape


def test_a_merged_job_is_sent_again_under_the_id_it_became() -> None:
    submitter = Submitter(Clock(), LIMIT)
    handle = submitter.enqueue("once", {"n": 1}, {"unique_key": "k"}, None, None)
    submitted = submitter._jobs[handle.id]

    submitter._merge(submitted, "the-existing-job")

    assert handle.id == "the-existing-job"
    assert submitter._jobs["the-existing-job"] is submitted
    assert '"id":"the-existing-job"' in submitted.wire()
    assert submitted.job().id == "the-existing-job"
    assert submitted.job().unique_key == "k"


def test_a_submitted_job_is_held_as_its_wire_text() -> None:
    job = build_job("x", {"a": [1, 2]}, {"node": "n"}, now=5.0, max_args_bytes=LIMIT)
    submitter = Submitter(Clock(), LIMIT)

    handle = submitter.submit(job, None, None)

    assert submitter._jobs[handle.id].wire() == compact(job.to_wire())
    assert submitter._jobs[handle.id].job() == job


@pytest.mark.parametrize(
    "bad",
    [
        Job(id="bad", name="x", args={"f": math.nan}),
        Job(id="bad", name="x", args={}, run_at=math.inf),
        Job(id="bad", name="x", args={}, enqueued_at=math.nan),
    ],
)
def test_a_submitted_job_json_cannot_carry_fails_alone_at_once(bad: Job) -> None:
    good = build_job("x", {}, {}, now=5.0, max_args_bytes=LIMIT)
    submitter = Submitter(Clock(), LIMIT)

    refused = submitter.submit(bad, None, None)
    kept = submitter.submit(good, None, None)

    assert refused.done
    failures: list[Any] = []
    refused.accepted.addErrback(failures.append)
    assert failures and "JSON" in str(failures[0].value)
    refused.deferred.addErrback(lambda failure: None)
    assert submitter.pending == 1 and not kept.done


def to_box(value: Any) -> dict[bytes, bytes]:
    strings: dict[bytes, bytes] = {}
    JSON().toBox(b"value", strings, {"value": value}, None)
    return strings


def test_encoded_text_is_sent_as_the_value_it_encodes() -> None:
    value = [{"id": "a", "args": {"s": "ż" * 30_000}}, {"id": "b", "args": {}}]

    assert to_box(Encoded(compact(value))) == to_box(value)
    assert len(to_box(value)) > 1  # split across keys the same way too


GOOD_REPORT: dict[str, Any] = {
    "job_id": "0f1e2d3c-aaaa-4bbb-8ccc-000000000001",
    "run": 1,
    "status": "complete",
    "feedback": "success",
    "final": True,
    "args": {"n": 1, "s": "ż", "f": 0.5, "b": False, "z": None},
    "error": None,
    "error_type": None,
    "run_at": None,
    "attempt": 1,
    "handed_back": False,
    "duration": 0.001,
    "traceback": None,
}


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"args": None},
        {"run_at": 1e9, "final": False, "feedback": None, "status": "queued"},
        {"feedback": "error", "status": "failed", "error": "boom", "error_type": "ValueError"},
        {"args": {"deep": {"x": [1]}}},
        {"args": {"big": "x" * (2 * 1024 * 1024)}},
        {"args": {"f": math.inf}},
        {"args": {1: "not a string key"}},
        {"run": True},
        {"run": -1},
        {"status": "done"},
        {"final": "true"},
        {"feedback": "ok"},
        {"attempt": -1},
        {"handed_back": 0},
        {"duration": -0.5},
        {"duration": 3},
        {"run_at": math.nan},
        {"job_id": ""},
        {"job_id": "x" * 300},
        {"job_id": "lone \ud800"},
        {"args": {"text": "lone \ud800"}},
        {"args": {"lone \udfff": 1}},
        {"args": {"text": "żółw"}},
        {"job_id": 7},
    ],
)
def test_the_fast_reading_of_a_report_agrees_with_report_from_wire(
    changes: dict[str, Any],
) -> None:
    item = {**GOOD_REPORT, **changes}

    fast = _plain_report(item, DEFAULT_LIMITS)

    try:
        full = _checked_report(item, DEFAULT_LIMITS)
    except InvalidJobError:
        assert fast is None  # refused by the full reading
    else:
        assert fast is None or fast == full
    if not changes:
        assert fast is not None  # the usual report takes the fast reading
