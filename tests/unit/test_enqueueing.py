"""``build_job``: what ``enqueue`` checks in the caller's thread before anything is sent."""

from __future__ import annotations

import datetime
import json
import uuid
from typing import Any

import pytest

from jobreactor import ArgsTooLargeError, InvalidJobError, Status
from jobreactor.enqueueing import build_job, new_job_id
from jobreactor.model import Job

NOW = 1_700_000_000.0
LIMIT = 1024 * 1024


def build(name: str = "my_job", args: Any = None, **options: Any) -> Job:
    return build_job(name, args, options, now=NOW, max_args_bytes=LIMIT)


def test_a_plain_job() -> None:
    job = build("my_job", {"arg1": "Hello", "nested": {"list": [1, 2.5, None, True]}})

    assert job.name == "my_job"
    assert job.args == {"arg1": "Hello", "nested": {"list": [1, 2.5, None, True]}}
    assert job.status is Status.NEW
    assert (job.run_at, job.period, job.defer, job.node, job.not_node) == (
        None,
        None,
        False,
        None,
        (),
    )
    assert job.enqueued_at == NOW


def test_no_args_means_an_empty_dict() -> None:
    assert build(args=None).args == {}


def test_ids_are_distinct_uuid4s() -> None:
    ids = [build().id for _ in range(200)]

    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(job_id).version == 4 for job_id in ids)


def test_the_job_keeps_a_copy_of_the_callers_args() -> None:
    args: dict[str, Any] = {"items": [1]}
    job = build(args=args)

    args["items"].append(2)

    assert job.args == {"items": [1]}


@pytest.mark.parametrize("name", ["", None, 42])
def test_a_job_name_must_be_a_non_empty_string(name: Any) -> None:
    with pytest.raises(InvalidJobError, match="job name"):
        build(name)


def test_an_unknown_option_is_refused_by_name() -> None:
    with pytest.raises(InvalidJobError, match=r"unknown enqueue option.*: urgency") as raised:
        build(urgency=1, after=3)

    assert "after" in str(raised.value)  # and the real options are listed


# -- args -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["not", "a", "dict"], "must be a dict, not list"),
        ("text", "must be a dict, not str"),
        ({1: "x"}, "keys must be strings.*int key 1"),
        ({"outer": {None: "x"}}, r"keys must be strings; args\['outer'\] has the NoneType key"),
        ({"outer": [{(1, 2): "x"}]}, "keys must be strings.*tuple key"),
        ({"tags": {"a", "b"}}, r"JSON-serializable; args\['tags'\] is a set"),
        ({"when": datetime.date(2024, 1, 1)}, r"JSON-serializable; args\['when'\] is a date"),
        ({"obj": object()}, r"JSON-serializable; args\['obj'\] is an object"),
        (
            {"a": [0, 1, 2, {"when": datetime.datetime(2024, 1, 1, 12, 0)}]},
            r"JSON-serializable; args\['a'\]\[3\]\['when'\] is a datetime "
            r"\(datetime.datetime\(2024, 1, 1, 12, 0\)\)",
        ),
        ({"b": b"raw"}, r"args\['b'\] is a bytes"),
        ({"ratio": float("nan")}, r"JSON-serializable; args\['ratio'\] is nan"),
        ({"r": [1.0, float("-inf")]}, r"JSON-serializable; args\['r'\]\[1\] is -inf"),
    ],
)
def test_args_that_json_cannot_carry_are_refused_naming_the_problem(
    args: Any, problem: str
) -> None:
    with pytest.raises(InvalidJobError, match=problem):
        build(args=args)


def test_circular_args_are_refused() -> None:
    args: dict[str, Any] = {}
    args["self"] = args

    with pytest.raises(InvalidJobError, match=r"JSON-serializable.*[Cc]ircular"):
        build(args=args)


def test_args_nested_too_deeply_are_refused() -> None:
    args: dict[str, Any] = {"deep": []}
    inner = args["deep"]
    for _ in range(100_000):
        inner.append([])
        inner = inner[0]

    with pytest.raises(InvalidJobError, match="nested too deeply"):
        build(args=args)


def test_args_above_max_args_bytes_are_refused_naming_the_limit() -> None:
    args = {"blob": "x" * 2000}

    with pytest.raises(ArgsTooLargeError, match="max_args_bytes") as raised:
        build_job("my_job", args, {}, now=NOW, max_args_bytes=2000)

    assert "2011 bytes" in str(raised.value)
    assert "2000 bytes" in str(raised.value)
    assert isinstance(raised.value, InvalidJobError)


def test_args_just_at_max_args_bytes_are_accepted() -> None:
    args = {"blob": "x" * 1989}  # {"blob":"..."} is 2000 bytes

    assert build_job("my_job", args, {}, now=NOW, max_args_bytes=2000).args == args


def test_the_limit_counts_the_bytes_of_the_json_text() -> None:
    args = {"t": "żółw ✓ 猫" * 100}
    size = len(json.dumps(args, separators=(",", ":")).encode("utf-8"))

    with pytest.raises(ArgsTooLargeError, match=f"are {size} bytes as JSON"):
        build_job("my_job", args, {}, now=NOW, max_args_bytes=size - 1)
    assert build_job("my_job", args, {}, now=NOW, max_args_bytes=size).args == args


# -- times ------------------------------------------------------------------------------


def test_after_becomes_an_absolute_run_at() -> None:
    assert build(after=20).run_at == NOW + 20
    assert build(after=0.25).run_at == NOW + 0.25
    assert build(after=0).run_at == NOW


def test_run_at_may_be_an_aware_datetime_or_posix_seconds() -> None:
    when = datetime.datetime(2030, 1, 2, 3, 4, 5, 500000, tzinfo=datetime.UTC)
    east = when.astimezone(datetime.timezone(datetime.timedelta(hours=5)))

    assert build(run_at=when).run_at == when.timestamp()
    assert build(run_at=east).run_at == when.timestamp()
    assert build(run_at=1_900_000_000.5).run_at == 1_900_000_000.5


def test_a_naive_run_at_is_refused() -> None:
    with pytest.raises(InvalidJobError, match=r"aware datetime.*naive"):
        build(run_at=datetime.datetime(2030, 1, 1))


@pytest.mark.parametrize("value", ["tomorrow", True, float("nan"), float("inf"), 10**400])
def test_run_at_must_be_a_finite_time(value: Any) -> None:
    with pytest.raises(InvalidJobError, match="run_at"):
        build(run_at=value)


def test_after_and_run_at_together_are_refused() -> None:
    with pytest.raises(InvalidJobError, match="after or run_at, not both"):
        build(after=1, run_at=NOW + 5)


def test_an_unset_after_beside_run_at_is_fine() -> None:
    assert build(after=None, run_at=NOW + 5).run_at == NOW + 5


def test_period_combines_with_after() -> None:
    job = build(after=20, period=100)

    assert (job.run_at, job.period) == (NOW + 20, 100.0)


@pytest.mark.parametrize(
    ("option", "value", "problem"),
    [
        ("after", -1, "after must be at least 0"),
        ("after", "5", "after must be a number of seconds"),
        ("after", True, "after must be a number of seconds"),
        ("after", float("inf"), "after must be a finite number"),
        ("period", 0, "period must be above 0"),
        ("period", -5, "period must be above 0"),
        ("period", float("nan"), "period must be a finite number"),
        ("timeout", 0, "timeout must be above 0"),
        ("timeout", "30", "timeout must be a number of seconds"),
        ("retry_delay", -1, "retry_delay must be at least 0"),
        ("max_attempt", 0, "max_attempt must be a positive integer"),
        ("max_attempt", 2.0, "max_attempt must be a positive integer"),
        ("max_attempt", True, "max_attempt must be a positive integer"),
        ("defer", "yes", "defer must be True or False"),
        ("node", "", "node must be a node name"),
        ("node", 5, "node must be a node name"),
        ("not_node", [""], "not_node must be a node name or a list"),
        ("not_node", 5, "not_node must be a node name or a list"),
    ],
)
def test_bad_option_values_are_refused_naming_the_option(
    option: str, value: Any, problem: str
) -> None:
    with pytest.raises(InvalidJobError, match=problem):
        build(**{option: value})


def test_the_other_options_are_kept() -> None:
    job = build(
        defer=True,
        node="worker_1",
        not_node=["worker_3", "worker_2"],
        max_attempt=3,
        retry_delay=1.5,
        timeout=30,
    )

    assert job.defer is True
    assert job.node == "worker_1"
    assert job.not_node == ("worker_2", "worker_3")
    assert (job.max_attempt, job.retry_delay, job.timeout) == (3, 1.5, 30.0)
    assert build(not_node="worker_9").not_node == ("worker_9",)


def test_a_built_job_survives_the_wire() -> None:
    job = build(args={"a": [1, "b"]}, after=5, period=60, not_node=["n"], timeout=2)

    assert Job.from_wire(job.to_wire()) == job


@pytest.mark.parametrize("priority", [True, 1.5, "high", 1001, -1001])
def test_priority_must_be_a_bounded_integer(priority: object) -> None:
    with pytest.raises(InvalidJobError, match="priority"):
        build(priority=priority)


def test_priority_travels_with_the_job() -> None:
    job = build(priority=7)
    assert job.priority == 7
    assert type(job).from_wire(job.to_wire()).priority == 7


def test_a_new_job_id_is_a_random_uuid4_in_its_usual_form() -> None:
    ids = {new_job_id() for _ in range(2000)}

    assert len(ids) == 2000
    for job_id in ids:
        parsed = uuid.UUID(job_id)
        assert str(parsed) == job_id
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
    # every variant nibble (8, 9, a, b) turns up
    assert {job_id[19] for job_id in ids} == set("89ab")
