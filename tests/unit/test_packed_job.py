"""The packed form of a waiting job (``pack_job`` / ``unpack_job``): every field comes back
equal and of the same type, or the job is not packed at all."""

from __future__ import annotations

import enum
from typing import Any

import attrs
import pytest

from jobreactor import Job, Status
from jobreactor.model import pack_job, unpack_job

from .test_model import full_job


def same(left: Any, right: Any) -> bool:
    """Equal, and of the same types at every depth (``1 == 1.0 == True`` is not enough)."""
    if type(left) is not type(right):
        return False
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(same(left[k], right[k]) for k in left)
    if isinstance(left, (list, tuple)):
        return len(left) == len(right) and all(map(same, left, right))
    if isinstance(left, float) and left == 0:
        return str(left) == str(right)  # -0.0 stays -0.0
    return bool(left == right)


def assert_round_trip(job: Job, extra: int = 1021) -> bytes:
    packed = pack_job(job, extra)
    assert packed is not None, job
    back, size = unpack_job(packed, job.id)
    assert size == extra
    for field in attrs.fields(Job):
        assert same(getattr(back, field.name), getattr(job, field.name)), field.name
    assert back == job
    return packed


ARGS = {
    "int": 7,
    "big": 10**30,
    "negative": -3,
    "float": 0.1,
    "whole_float": 2.0,
    "negative_zero": -0.0,
    "tiny": 5e-324,
    "huge": 1.7976931348623157e308,
    "true": True,
    "false": False,
    "none": None,
    "text": 'naïve ☃ \U0001f600 "quoted" \\ \n',
    "empty": "",
    "list": [1, 1.0, "1", None, [True, {}], []],
    "nested": {"a": {"b": {"c": [0, -1.5]}}, "": "empty key"},
}


def every_field_set() -> Job:
    """A job with every field other than its default, several of them workflow fields."""
    return attrs.evolve(
        full_job(),
        args=ARGS,
        priority=-1000,
        unique_key="report:2024",
        unique_for=3600.0,
        cron="0 3 * * *",
        timezone="Europe/Berlin",
        missed="run_once",
        depends_on=("a", "b"),
        on_dependency_failure="run",
    )


def test_a_job_with_every_field_set_comes_back_the_same() -> None:
    assert_round_trip(every_field_set())


def test_a_plain_job_packs_to_its_name_args_and_enqueue_time() -> None:
    job = Job(id="j1", name="noop", args={"n": 5}, enqueued_at=12.5)
    assert assert_round_trip(job, 1021) == b'[1021,"noop",{"n":5},12.5]'


#: One value other than the default for each field, alone on an otherwise plain job: each
#: field is written and read in its place (the unset ones after it are left out).
ONE_FIELD: dict[str, Any] = {
    "status": Status.QUEUED,
    "attempt": 1,
    "run": 4,
    "run_at": 5,  # an int stays an int
    "period": 30.0,
    "defer": True,
    "node": "n1",
    "not_node": ("n2",),
    "max_attempt": 1,
    "retry_delay": 0.0,
    "timeout": 2.5,
    "failed_at": 1.0,
    "last_error": "boom",
    "last_error_type": "ValueError",
    "make_after": 0.5,
    "distributor": "d1",
    "enqueued_at": 0,
    "priority": 5,
    "unique_key": "k",
    "unique_for": 10,
    "cron": "* * * * *",
    "timezone": "UTC",
    "missed": "skip",
    "depends_on": ("j0",),
    "on_dependency_failure": "fail",
}


def test_every_field_has_a_case() -> None:
    assert set(ONE_FIELD) == {f.name for f in attrs.fields(Job)} - {"id", "name", "args"}


@pytest.mark.parametrize("field", sorted(ONE_FIELD))
def test_each_field_alone_comes_back_the_same(field: str) -> None:
    job = Job(id="j1", name="noop", args={}, **{field: ONE_FIELD[field]})
    assert_round_trip(job)


def test_args_from_json_with_nesting_come_back_the_same() -> None:
    assert_round_trip(Job(id="j1", name="noop", args={"deep": [[[{"x": [1.5]}]]]}))


class Colour(enum.IntEnum):
    RED = 1


class Name(str):
    pass


@pytest.mark.parametrize(
    "change",
    [
        {"args": {"pair": (1, 2)}},  # a tuple would come back a list
        {"args": {"colour": Colour.RED}},  # an int subclass would come back an int
        {"args": {"nested": {"colour": Colour.RED}}},
        {"args": {"name": Name("x")}},
        {"args": {1: "int key"}},  # JSON would make the key a string
        {"args": {"nested": {None: 1}}},
        {"args": {"when": float("nan")}},
        {"run_at": float("inf")},
        {"priority": Colour.RED},
        {"node": Name("n1")},
        {"not_node": ["n1"]},  # a list where a tuple belongs
        {"depends_on": ("a", Name("b"))},
        {"status": "new"},  # a plain string where a Status belongs
    ],
    ids=repr,
)
def test_a_job_that_would_not_come_back_the_same_is_not_packed(change: dict[str, Any]) -> None:
    job = attrs.evolve(Job(id="j1", name="noop", args={}), **change)
    assert pack_job(job, 0) is None


def test_args_nested_past_any_depth_are_not_packed() -> None:
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    assert pack_job(Job(id="j1", name="noop", args={"deep": deep}), 0) is None
