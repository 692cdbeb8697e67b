"""Job definitions: the ``job`` / ``job_callback`` / ``job_errback`` decorators and loading a
jobs directory.

The decorators write into the registry that is *active*: the one a node is loading its
jobs directory into, or the process-wide :data:`default_registry` otherwise (handy for
tests and for jobs defined next to the code that embeds a node).
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import math
import os
import sys
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import attrs
from twisted.logger import Logger

from jobreactor.errors import JobDefinitionError
from jobreactor.ratelimit import parse_rate_limit

JobFunction = Callable[[dict[str, Any]], Any]
F = TypeVar("F", bound=JobFunction)


@attrs.define
class JobDefinition:
    """A job's function, its callbacks and errbacks in definition order, and its own limits."""

    name: str
    function: JobFunction | None = None
    callbacks: list[tuple[str, JobFunction]] = attrs.Factory(list)
    errbacks: list[tuple[str, JobFunction]] = attrs.Factory(list)
    max_attempt: int | None = None
    #: Seconds before retry, or a callable ``retry_delay(attempt) -> seconds``.
    retry_delay: float | Callable[[int], float] | None = None
    timeout: float | None = None
    defined_in: str | None = None
    #: Starts allowed across all nodes together (``"50/s"``), enforced by the distributor.
    rate_limit: str | None = None


@attrs.define
class JobRegistry:
    """The jobs one node can run, by name."""

    definitions: dict[str, JobDefinition] = attrs.Factory(dict)

    def _entry(self, name: str) -> JobDefinition:
        if not isinstance(name, str) or not name:
            raise JobDefinitionError(f"a job name must be a non-empty string, not {name!r}")
        return self.definitions.setdefault(name, JobDefinition(name))

    def add_job(self, name: str, function: JobFunction, **limits: Any) -> None:
        entry = self._entry(name)
        where = _where(function)
        if entry.function is not None:
            raise JobDefinitionError(
                f"job {name!r} is defined twice: at {entry.defined_in} and at {where}"
            )
        entry.function = function
        entry.defined_in = where
        for key, value in limits.items():
            setattr(entry, key, value)

    def add_callback(self, job_name: str, name: str | None, function: JobFunction) -> None:
        self._entry(job_name).callbacks.append((name or function.__name__, function))

    def add_errback(self, job_name: str, name: str | None, function: JobFunction) -> None:
        self._entry(job_name).errbacks.append((name or function.__name__, function))

    def get(self, name: str) -> JobDefinition | None:
        entry = self.definitions.get(name)
        return entry if entry is not None and entry.function is not None else None

    def names(self) -> list[str]:
        return sorted(name for name, entry in self.definitions.items() if entry.function)

    def check_complete(self) -> None:
        """Refuse callbacks or errbacks attached to a job that was never defined."""
        orphans = sorted(name for name, entry in self.definitions.items() if entry.function is None)
        if orphans:
            places = []
            for name in orphans:
                entry = self.definitions[name]
                steps = [("callback", step) for step in entry.callbacks]
                steps += [("errback", step) for step in entry.errbacks]
                places.append(
                    f"{name!r} ("
                    + ", ".join(f"{kind} {label!r} at {_where(fn)}" for kind, (label, fn) in steps)
                    + ")"
                )
            raise JobDefinitionError(
                "callbacks or errbacks were given for undefined job(s): " + "; ".join(places)
            )


#: Where the decorators register when no jobs directory is being loaded.
default_registry = JobRegistry()
_active: contextvars.ContextVar[JobRegistry] = contextvars.ContextVar(
    "jobreactor_registry", default=default_registry
)


def _where(function: Any) -> str:
    code = getattr(function, "__code__", None)
    if code is None:
        return repr(function)
    return f"{code.co_filename}:{code.co_firstlineno}"


def job(
    name: str,
    *,
    max_attempt: int | None = None,
    retry_delay: float | Callable[[int], float] | None = None,
    timeout: float | None = None,
    rate_limit: str | None = None,
) -> Callable[[F], F]:
    """Define the job ``name``: the decorated function is the first step of its chain.

    It receives the job's ``args`` dict; it may change it in place, return a dict to merge
    into it, return a Deferred, or be ``async def``. ``max_attempt``, ``retry_delay`` and
    ``timeout`` override the settings for this job (an ``enqueue`` option overrides them).
    ``rate_limit`` (``"50/s"``, ``"600/m"``, ``"1000/h"``) caps how many of these jobs start,
    across all nodes together; nodes tell the distributor in their ``Hello``.
    """

    _check_limits(name, max_attempt, retry_delay, timeout)
    if rate_limit is not None:
        try:
            parse_rate_limit(rate_limit)
        except ValueError as error:
            raise JobDefinitionError(f"job {name!r}: {error}") from None

    def register(function: F) -> F:
        _active.get().add_job(
            name,
            function,
            max_attempt=max_attempt,
            retry_delay=retry_delay,
            timeout=timeout,
            rate_limit=rate_limit,
        )
        return function

    return register


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _check_limits(name: str, max_attempt: Any, retry_delay: Any, timeout: Any) -> None:
    """Refuse a bad limit where it is written, not when the first attempt runs into it."""
    if max_attempt is not None and (
        isinstance(max_attempt, bool) or not isinstance(max_attempt, int) or max_attempt < 1
    ):
        raise JobDefinitionError(
            f"job {name!r}: max_attempt must be a positive integer, not {max_attempt!r}"
        )
    if retry_delay is not None and not callable(retry_delay):
        delay = _seconds(retry_delay)
        if delay is None or delay < 0:
            raise JobDefinitionError(
                f"job {name!r}: retry_delay must be seconds (at least 0) or a callable "
                f"retry_delay(attempt), not {retry_delay!r}"
            )
    if timeout is not None:
        seconds = _seconds(timeout)
        if seconds is None or seconds <= 0:
            raise JobDefinitionError(
                f"job {name!r}: timeout must be a number of seconds above 0, not {timeout!r}"
            )


def job_callback(job_name: str, name: str | None = None) -> Callable[[F], F]:
    """Add the decorated function to the chain of ``job_name``, after those defined before it."""

    def register(function: F) -> F:
        _active.get().add_callback(job_name, name, function)
        return function

    return register


def job_errback(job_name: str, name: str | None = None) -> Callable[[F], F]:
    """Run the decorated function when an attempt of ``job_name`` fails, in definition order.

    It receives the attempt's starting args plus ``error`` (the message) and ``error_type``.
    """

    def register(function: F) -> F:
        _active.get().add_errback(job_name, name, function)
        return function

    return register


@contextlib.contextmanager
def registering_into(registry: JobRegistry) -> Iterator[JobRegistry]:
    """Make the decorators write into ``registry`` for the duration of the block."""
    token = _active.set(registry)
    try:
        yield registry
    finally:
        _active.reset(token)


log = Logger()


def load_jobs_directory(directory: str | Path) -> JobRegistry:
    """Import every ``*.py`` file under ``directory`` (recursively, sorted) into a new registry.

    A file that fails to import raises :class:`JobDefinitionError` naming the file, the line
    and the error, so a node refuses to start rather than run with half its jobs.
    """
    root = Path(directory)
    registry = JobRegistry()
    with registering_into(registry):
        files = import_directory(root, "jobs")
    registry.check_complete()
    if not registry.names():
        _warn_no_jobs(root, files)
    return registry


def import_directory(root: Path, what: str) -> int:
    """Import every ``*.py`` file under ``root`` (recursively, sorted); return how many.

    The decorators of the files write into whichever registry the caller made active. A
    file that fails to import raises :class:`JobDefinitionError` naming the file and line.
    """
    if not root.is_dir():
        raise JobDefinitionError(
            f"{what} directory {str(root)!r} does not exist or is not a directory"
        )
    package = f"_jobreactor_{what}_{uuid.uuid4().hex}"
    files = 0
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        # Only parts below the root count: a root under ~/.local must still load.
        if any(part.startswith(".") or part == "__pycache__" for part in relative.parts):
            continue
        files += 1
        _import_file(path, f"{package}.{'_'.join(relative.with_suffix('').parts)}")
    return files


def _warn_no_jobs(root: Path, files: int) -> None:
    """A node with no jobs starts fine and then fails every job: say so when it starts."""
    found = "has no .py file" if files == 0 else f"has {files} .py file(s) but none uses @job"
    log.warn(
        "jobs directory {directory} {found}: this node can run no job, and every job sent "
        "to it fails with NoSuchJob (is --jobs / job_directory the right directory?)",
        directory=str(root.resolve()),
        found=found,
    )


def _import_file(path: Path, module_name: str) -> None:
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise JobDefinitionError(f"{path}: cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except JobDefinitionError as error:
        del sys.modules[module_name]
        raise JobDefinitionError(f"{path}: {error}") from None
    except (Exception, SystemExit) as error:
        del sys.modules[module_name]
        here = {str(path), str(path.resolve()), os.path.abspath(path)}
        if isinstance(error, SyntaxError) and error.filename in here:
            line = error.lineno  # a SyntaxError in a module it imports has a traceback here
        else:
            frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename in here]
            line = frames[-1].lineno if frames else None
        raise JobDefinitionError(f"{path}, line {line}: {type(error).__name__}: {error}") from error
