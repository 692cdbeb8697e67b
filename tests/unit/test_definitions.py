"""Defining jobs with the decorators, and loading a jobs directory as a node does at start."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from twisted.logger import LogLevel, capturedLogs, formatEvent

import jobreactor.definitions as definitions
from jobreactor import JobDefinitionError, job, job_callback, job_errback
from jobreactor.definitions import JobRegistry, load_jobs_directory, registering_into


def write(path: Path, source: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


def step_names(registry: JobRegistry, name: str) -> tuple[list[str], list[str]]:
    definition = registry.get(name)
    assert definition is not None
    return [n for n, _ in definition.callbacks], [n for n, _ in definition.errbacks]


# -- the decorators ---------------------------------------------------------------------


def test_decorators_register_into_the_active_registry_and_return_the_function() -> None:
    registry = JobRegistry()

    with registering_into(registry):

        @job("send_mail", max_attempt=3, timeout=30)
        def send_mail(args: dict[str, Any]) -> None:
            pass

        @job_callback("send_mail", "log_it")
        def log(args: dict[str, Any]) -> None:
            pass

        @job_callback("send_mail")
        def unnamed(args: dict[str, Any]) -> None:
            pass

        @job_errback("send_mail", "alert")
        def alert(args: dict[str, Any]) -> None:
            pass

    definition = registry.get("send_mail")
    assert definition is not None
    assert definition.function is send_mail
    assert definition.callbacks == [("log_it", log), ("unnamed", unnamed)]
    assert definition.errbacks == [("alert", alert)]
    assert (definition.max_attempt, definition.timeout) == (3, 30)
    assert registry.names() == ["send_mail"]
    assert "send_mail" not in definitions.default_registry.definitions


def test_outside_a_load_the_decorators_write_into_the_default_registry() -> None:
    name = "test_definitions_default_registry_job"
    try:

        @job(name)
        def default_job(args: dict[str, Any]) -> None:
            pass

        definition = definitions.default_registry.get(name)
        assert definition is not None and definition.function is default_job
    finally:
        definitions.default_registry.definitions.pop(name, None)


def test_a_job_defined_twice_names_both_places() -> None:
    registry = JobRegistry()
    with registering_into(registry):

        @job("twice")
        def first(args: dict[str, Any]) -> None:
            pass

        def second(args: dict[str, Any]) -> None:
            pass

        with pytest.raises(JobDefinitionError) as raised:
            job("twice")(second)

    message = str(raised.value)
    assert "'twice'" in message
    assert f"{__file__}:{first.__code__.co_firstlineno}" in message
    assert f"{__file__}:{second.__code__.co_firstlineno}" in message


@pytest.mark.parametrize("name", ["", None, 3])
def test_a_job_name_must_be_a_non_empty_string(name: Any) -> None:
    with registering_into(JobRegistry()), pytest.raises(JobDefinitionError, match="job name"):
        job(name)(lambda args: None)


@pytest.mark.parametrize(
    ("limits", "problem"),
    [
        ({"max_attempt": 0}, "max_attempt must be a positive integer"),
        ({"max_attempt": True}, "max_attempt must be a positive integer"),
        ({"max_attempt": "3"}, "max_attempt must be a positive integer"),
        ({"retry_delay": -1}, "retry_delay must be seconds"),
        ({"retry_delay": "5"}, "retry_delay must be seconds"),
        ({"retry_delay": float("nan")}, "retry_delay must be seconds"),
        ({"timeout": 0}, "timeout must be a number of seconds above 0"),
        ({"timeout": "30"}, "timeout must be a number of seconds above 0"),
        ({"timeout": float("inf")}, "timeout must be a number of seconds above 0"),
    ],
)
def test_bad_job_limits_are_refused_where_they_are_written(
    limits: dict[str, Any], problem: str
) -> None:
    with pytest.raises(JobDefinitionError, match=f"job 'limited': {problem}"):
        job("limited", **limits)


def test_good_job_limits_are_kept() -> None:
    def backoff(attempt: int) -> float:
        return min(2.0**attempt, 60.0)

    registry = JobRegistry()
    with registering_into(registry):
        job("limited", max_attempt=2, retry_delay=backoff, timeout=0.5)(print)
        job("fixed_delay", retry_delay=0)(print)

    limited = registry.get("limited")
    assert limited is not None
    assert (limited.max_attempt, limited.retry_delay, limited.timeout) == (2, backoff, 0.5)
    fixed = registry.get("fixed_delay")
    assert fixed is not None and fixed.retry_delay == 0


def test_a_callback_for_an_undefined_job_is_refused_when_checked() -> None:
    registry = JobRegistry()
    with registering_into(registry):

        @job_callback("ghost", "haunt")
        def haunt(args: dict[str, Any]) -> None:
            pass

    assert registry.get("ghost") is None
    with pytest.raises(JobDefinitionError, match="undefined job") as raised:
        registry.check_complete()
    assert "'ghost'" in str(raised.value)
    assert "'haunt'" in str(raised.value)


# -- loading a jobs directory -----------------------------------------------------------


def test_a_directory_is_loaded_recursively_in_sorted_order(tmp_path: Path) -> None:
    write(
        tmp_path / "b_jobs.py",
        """
        from jobreactor import job, job_callback

        @job_callback("shared", "from_b")
        def from_b(args):
            pass
        """,
    )
    write(
        tmp_path / "a_jobs.py",
        """
        from jobreactor import job, job_callback, job_errback

        @job("shared")
        def shared(args):
            args["result"] = "Yay!"

        @job_callback("shared", "from_a_1")
        def one(args):
            pass

        @job_callback("shared", "from_a_2")
        def two(args):
            pass

        @job_errback("shared", "report")
        def report(args):
            pass
        """,
    )
    write(
        tmp_path / "nested" / "deeper" / "c_jobs.py",
        """
        from jobreactor import job, job_callback

        @job_callback("shared", "from_nested")
        def from_nested(args):
            pass

        @job("nested_job")
        def nested_job(args):
            pass
        """,
    )
    write(tmp_path / "notes.txt", "not python")
    write(tmp_path / ".hidden" / "skipped.py", "raise RuntimeError('hidden files are skipped')")

    registry = load_jobs_directory(tmp_path)

    assert registry.names() == ["nested_job", "shared"]
    callbacks, errbacks = step_names(registry, "shared")
    assert callbacks == ["from_a_1", "from_a_2", "from_b", "from_nested"]
    assert errbacks == ["report"]
    args: dict[str, Any] = {}
    shared = registry.get("shared")
    assert shared is not None and shared.function is not None
    shared.function(args)
    assert args == {"result": "Yay!"}


def test_a_load_does_not_touch_the_default_registry(tmp_path: Path) -> None:
    write(tmp_path / "jobs.py", "from jobreactor import job\njob('only_in_load')(print)\n")

    load_jobs_directory(tmp_path)

    assert "only_in_load" not in definitions.default_registry.definitions


def test_a_jobs_directory_inside_a_hidden_directory_still_loads(tmp_path: Path) -> None:
    root = tmp_path / ".config" / "reactor_jobs"
    write(root / "jobs.py", "from jobreactor import job\njob('in_hidden_root')(print)\n")

    assert load_jobs_directory(root).names() == ["in_hidden_root"]


def test_a_missing_directory_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_dir"

    with pytest.raises(JobDefinitionError, match="no_such_dir"):
        load_jobs_directory(missing)


@pytest.mark.parametrize(
    ("source", "line", "error"),
    [
        ("x = 1\n\ndef broken(:\n    pass\n", 3, "SyntaxError"),
        ("x = 1\ny = 2\nraise RuntimeError('no database')\n", 3, "RuntimeError: no database"),
        ("import sys\n\n\nsys.exit('leaving')\n", 4, "SystemExit: leaving"),
        ("from jobreactor import job\n\n\n@job('')\ndef f(args):\n    pass\n", None, "job name"),
    ],
    ids=["syntax error", "exception", "sys.exit", "bad definition"],
)
def test_a_broken_jobs_file_names_the_file_the_line_and_the_error(
    tmp_path: Path, source: str, line: int | None, error: str
) -> None:
    write(tmp_path / "a_good.py", "from jobreactor import job\njob('fine')(print)\n")
    broken = write(tmp_path / "sub" / "broken_jobs.py", source)

    with pytest.raises(JobDefinitionError) as raised:
        load_jobs_directory(tmp_path)

    message = str(raised.value)
    assert str(broken) in message
    if line is not None:
        assert f"line {line}" in message
    assert error in message


def test_an_error_in_a_helper_module_points_at_the_jobs_file_line(tmp_path: Path) -> None:
    helpers = tmp_path / "helpers"
    write(
        helpers / "helper_for_definitions_test.py", "def explode():\n    raise OSError('helper')\n"
    )
    jobs = tmp_path / "jobs"
    write(
        jobs / "uses_helper.py",
        f"import sys\nsys.path.insert(0, {str(helpers)!r})\n"
        "import helper_for_definitions_test\n"
        "helper_for_definitions_test.explode()\n",
    )

    try:
        with pytest.raises(JobDefinitionError) as raised:
            load_jobs_directory(jobs)
    finally:
        sys.path.remove(str(helpers))
        sys.modules.pop("helper_for_definitions_test", None)

    assert f"{jobs / 'uses_helper.py'}, line 4: OSError: helper" in str(raised.value)


def test_the_same_job_in_two_files_names_both_files(tmp_path: Path) -> None:
    first = write(
        tmp_path / "first.py", "from jobreactor import job\n\n\n@job('dup')\ndef a(args): pass\n"
    )
    second = write(
        tmp_path / "second.py", "from jobreactor import job\n@job('dup')\ndef b(args): pass\n"
    )

    with pytest.raises(JobDefinitionError) as raised:
        load_jobs_directory(tmp_path)

    message = str(raised.value)
    assert f"{first}:4" in message
    assert f"{second}:2" in message


def test_a_callback_for_a_job_no_file_defines_stops_the_load(tmp_path: Path) -> None:
    write(
        tmp_path / "jobs.py", "from jobreactor import job_callback\njob_callback('nope')(print)\n"
    )

    with pytest.raises(JobDefinitionError, match=r"undefined job.*'nope'"):
        load_jobs_directory(tmp_path)


@pytest.mark.parametrize(
    ("files", "found"),
    [
        ({}, "has no .py file"),
        ({"helpers.py": "X = 1\n", "notes.txt": "hi\n"}, "has 1 .py file(s) but none uses @job"),
    ],
)
def test_a_jobs_directory_with_no_job_warns_naming_it(
    tmp_path: Path, files: dict[str, str], found: str
) -> None:
    directory = tmp_path / "reactor_jobs"
    directory.mkdir()
    for name, text in files.items():
        (directory / name).write_text(text)

    with capturedLogs() as events:
        registry = load_jobs_directory(directory)

    assert registry.names() == []
    warnings = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
    assert warnings == [
        f"jobs directory {directory.resolve()} {found}: this node can run no job, and every "
        "job sent to it fails with NoSuchJob (is --jobs / job_directory the right directory?)"
    ]


def test_a_jobs_directory_with_jobs_loads_without_a_warning(tmp_path: Path) -> None:
    write(tmp_path / "jobs" / "a.py", "from jobreactor import job\n@job('a')\ndef a(args): pass\n")

    with capturedLogs() as events:
        load_jobs_directory(tmp_path / "jobs")

    assert [e for e in events if e["log_level"] >= LogLevel.warn] == []
