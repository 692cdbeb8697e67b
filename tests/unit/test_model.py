"""The job record and the report: their wire form, and refusing a malformed one by field."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest

from jobreactor import InvalidJobError, Job, Status
from jobreactor.model import WORKFLOW_FIELDS, Report


def full_job() -> Job:
    """A job with every field set to something other than its default."""
    return Job(
        id="0b8f4d3e-1b0c-4c8e-9a53-5e7c1c2f4a10",
        name="mail.send",
        args={"to": "ada@example.com", "nested": {"list": [1, "2", 3.5, False, None]}},
        status=Status.ERROR,
        attempt=2,
        run=3,
        run_at=1_700_000_100.5,
        period=60.0,
        defer=True,
        node="worker_1",
        not_node=("worker_2", "worker_3"),
        max_attempt=4,
        retry_delay=1.5,
        timeout=30.0,
        failed_at=1_700_000_050.25,
        last_error="disk full",
        last_error_type="OSError",
        make_after=10.0,
        distributor="tcp:localhost:5000",
        enqueued_at=1_700_000_000.0,
    )


def full_report() -> Report:
    return Report(
        job_id="0b8f4d3e-1b0c-4c8e-9a53-5e7c1c2f4a10",
        run=3,
        status=Status.FAILED,
        feedback="error",
        final=True,
        args={"arg1": 1, "error": "boom"},
        error="boom",
        error_type="ValueError",
        run_at=1_700_000_100.5,
        attempt=2,
    )


def through_json(data: dict[str, Any]) -> Any:
    return json.loads(json.dumps(data, allow_nan=False))


# -- Job --------------------------------------------------------------------------------


def test_a_job_survives_the_wire_and_json() -> None:
    job = full_job()

    wire = through_json(job.to_wire())

    assert wire["status"] == "error"
    assert wire["not_node"] == ["worker_2", "worker_3"]
    assert Job.from_wire(wire) == job


def test_a_minimal_wire_job_gets_the_defaults() -> None:
    job = Job.from_wire({"id": "j1", "name": "my_job", "args": {}})

    assert job == Job(id="j1", name="my_job", args={})
    assert job.status is Status.NEW
    assert not job.is_final


@pytest.mark.parametrize(
    ("status", "final"),
    [
        (Status.COMPLETE, True),
        (Status.FAILED, True),
        (Status.CANCELLED, True),
        (Status.ERROR, False),
    ],
)
def test_final_statuses(status: Status, final: bool) -> None:
    assert Job(id="j", name="n", args={}, status=status).is_final is final


def test_the_statuses_are_the_originals_strings() -> None:
    assert [status.value for status in Status] == [
        "new",
        "queued",
        "in progress",
        "complete",
        "error",
        "failed",
        "cancelled",
    ]


def test_a_job_allows_every_node_but_those_it_excludes() -> None:
    job = Job(id="j", name="n", args={}, not_node=("worker_2",))

    assert job.allows("worker_1")
    assert not job.allows("worker_2")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"id": ""}, "id"),
        ({"id": 7}, "id"),
        ({"name": None}, "name"),
        ({"args": []}, "args"),
        ({"status": "done"}, "status"),
        ({"status": ["new"]}, "status"),
        ({"attempt": "1"}, "attempt"),
        ({"attempt": -1}, "attempt"),
        ({"run": True}, "run"),
        ({"run_at": "soon"}, "run_at"),
        ({"run_at": True}, "run_at"),
        ({"run_at": 10**400}, "run_at"),
        ({"period": [60]}, "period"),
        ({"timeout": "30"}, "timeout"),
        ({"max_attempt": 0}, "max_attempt"),
        ({"max_attempt": True}, "max_attempt"),
        ({"node": 3}, "node"),
        ({"distributor": ["tcp:x:1"]}, "distributor"),
        ({"last_error": {}}, "last_error"),
        ({"not_node": "worker_2"}, "not_node"),
        ({"not_node": [1]}, "not_node"),
        ({"defer": "false"}, "defer"),
    ],
)
def test_a_malformed_job_is_refused_naming_the_field(change: dict[str, Any], field: str) -> None:
    wire = {**full_job().to_wire(), **change}

    with pytest.raises(InvalidJobError, match=f"job field '{field}' "):
        Job.from_wire(wire)


def test_an_unknown_job_field_is_refused_naming_it() -> None:
    wire = {**full_job().to_wire(), "urgency": 1, "colour": "red"}

    with pytest.raises(InvalidJobError, match=r"unknown job field.*: colour, urgency"):
        Job.from_wire(wire)


@pytest.mark.parametrize("field", ["id", "name", "args"])
def test_a_job_without_a_required_field_is_refused_naming_it(field: str) -> None:
    wire = full_job().to_wire()
    del wire[field]

    with pytest.raises(InvalidJobError, match=f"'{field}' is missing"):
        Job.from_wire(wire)


@pytest.mark.parametrize("data", [None, [], "job", 3])
def test_a_job_must_be_an_object(data: Any) -> None:
    with pytest.raises(InvalidJobError, match="must be a JSON object"):
        Job.from_wire(data)


# -- Report -----------------------------------------------------------------------------


def test_a_report_survives_the_wire_and_json() -> None:
    report = full_report()

    wire = through_json(report.to_wire())

    assert wire["status"] == "failed"
    assert Report.from_wire(wire) == report


def test_a_minimal_report_gets_the_defaults() -> None:
    report = Report.from_wire(
        {"job_id": "j1", "run": 1, "status": "complete", "final": True, "args": None}
    )

    assert report == Report("j1", 1, Status.COMPLETE, None, True)


@pytest.mark.parametrize("field", ["job_id", "run", "status", "final"])
def test_a_report_without_a_required_field_is_refused_naming_it(field: str) -> None:
    wire = full_report().to_wire()
    del wire[field]

    with pytest.raises(InvalidJobError, match=f"'{field}' is missing"):
        Report.from_wire(wire)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"job_id": 5}, "job_id"),
        ({"run": "1"}, "run"),
        ({"run": False}, "run"),
        ({"status": "done"}, "status"),
        ({"final": 1}, "final"),
        ({"feedback": "maybe"}, "feedback"),
        ({"args": [1]}, "args"),
        ({"error": 3}, "error"),
        ({"error_type": ["E"]}, "error_type"),
        ({"run_at": "later"}, "run_at"),
        ({"attempt": -2}, "attempt"),
    ],
)
def test_a_malformed_report_is_refused_naming_the_field(change: dict[str, Any], field: str) -> None:
    wire = {**full_report().to_wire(), **change}

    with pytest.raises(InvalidJobError, match=f"report field '{field}'"):
        Report.from_wire(wire)


def test_a_report_must_be_an_object() -> None:
    with pytest.raises(InvalidJobError, match="must be a JSON object, not list"):
        Report.from_wire([])


def test_the_wire_form_has_every_field_and_leaves_out_only_unset_workflow_fields() -> None:
    """to_wire is written out by hand (for speed): a field added to Job must reach it."""
    plain = Job(id="j1", name="n", args={"a": 1}, not_node=("x",))
    wire = plain.to_wire()
    every = {field.name for field in attrs.fields(Job)}
    assert set(wire) == every - set(WORKFLOW_FIELDS)
    assert Job.from_wire(through_json(wire)) == plain
    full = attrs.evolve(
        plain,
        unique_key="k",
        unique_for=5.0,
        cron="*/5 * * * *",
        timezone="UTC",
        missed="skip",
        depends_on=("a", "b"),
        on_dependency_failure="run",
    )
    assert set(full.to_wire()) == every
    assert Job.from_wire(through_json(full.to_wire())) == full


def test_a_report_wire_form_has_every_field() -> None:
    report = Report("j1", 2, Status.FAILED, "error", True, {"a": 1}, "boom", "ValueError")
    wire = report.to_wire()
    assert set(wire) == {field.name for field in attrs.fields(Report)}
    assert Report.from_wire(through_json(wire)) == report
