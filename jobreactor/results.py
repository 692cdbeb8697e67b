"""Outcomes that outlive the process, and the result handlers registered in code for them.

A feedback callable lives in the process that enqueued the job and dies with it. A result
handler (Jobber's *result processor*) is code: the distributor finds it by the job's name,
runs it after the outcome is stored, and runs it again after a restart if it had not
finished, so every final outcome gets its handler at least once.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import attrs

from jobreactor.errors import JobDefinitionError
from jobreactor.model import Report, Status

#: What a final report's status becomes in an outcome.
OUTCOME_STATUS = {
    Status.COMPLETE: "done",
    Status.FAILED: "failed",
    Status.CANCELLED: "cancelled",
}

#: Handler states of a stored outcome.
HANDLER_PENDING = "pending"  # a handler has to run (or run again after a restart)
HANDLER_DONE = "handled"  # every handler succeeded, or none was registered
HANDLER_GAVE_UP = "unhandled"  # a handler kept failing past its max_attempt

#: Attempts a handler gets before its outcome is left ``unhandled``.
DEFAULT_HANDLER_ATTEMPTS = 5


@attrs.frozen
class Outcome:
    """The final result of one job, as stored by a distributor with storage.

    ``status`` is ``"done"``, ``"failed"`` or ``"cancelled"``; ``args`` are the job's final
    args (for a failure, those its errbacks left); ``run`` counts the job's runs, so a
    handler that may be called twice for one outcome (after a crash) can deduplicate on
    ``(job_id, run)``. ``finished_at`` is POSIX seconds.
    """

    job_id: str
    name: str
    status: str
    args: dict[str, Any]
    error: str | None
    error_type: str | None
    run: int
    finished_at: float
    #: ``pending``, ``handled`` or ``unhandled`` (see the HANDLER_* constants).
    handled: str = HANDLER_PENDING
    #: The remote peer that enqueued the job (its outcome is delivered there), if any.
    origin: str | None = None
    #: The feedback the final report asked for (``success``, ``error`` or None).
    feedback: str | None = None
    #: The job as it was enqueued (same id and args): what ``retry`` runs again.
    job: dict[str, Any] = attrs.field(factory=dict, repr=False)

    @classmethod
    def from_report(
        cls,
        name: str,
        report: Report,
        finished_at: float,
        job: dict[str, Any],
        *,
        origin: str | None = None,
        handled: str = HANDLER_PENDING,
    ) -> Outcome:
        return cls(
            origin=origin,
            handled=handled,
            job_id=report.job_id,
            name=name,
            status=OUTCOME_STATUS.get(report.status, report.status.value),
            args=report.args,
            error=report.error,
            error_type=report.error_type,
            run=report.run,
            finished_at=finished_at,
            feedback=report.feedback,
            job=job,
        )

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self, recurse=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outcome:
        known = {field.name for field in attrs.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


ResultHandler = Callable[[Outcome], Any]
H = TypeVar("H", bound=ResultHandler)


@attrs.frozen
class HandlerDefinition:
    function: ResultHandler
    max_attempt: int = DEFAULT_HANDLER_ATTEMPTS


@attrs.define
class HandlerRegistry:
    """Result handlers by job name; ``"*"`` handlers run for every job."""

    handlers: dict[str, list[HandlerDefinition]] = attrs.Factory(dict)

    def add(self, name: str, definition: HandlerDefinition) -> None:
        self.handlers.setdefault(name, []).append(definition)

    def for_name(self, name: str) -> list[HandlerDefinition]:
        return [*self.handlers.get(name, ()), *self.handlers.get("*", ())]

    def names(self) -> list[str]:
        return sorted(self.handlers)


#: Where ``@on_result`` registers when no directory is being loaded: the application's
#: own handlers, imported with its code, used by the distributor it embeds.
default_handlers = HandlerRegistry()
_active: contextvars.ContextVar[HandlerRegistry] = contextvars.ContextVar(
    "jobreactor_handlers", default=default_handlers
)


def on_result(name: str, *, max_attempt: int = DEFAULT_HANDLER_ATTEMPTS) -> Callable[[H], H]:
    """Register ``handler(outcome)`` for every final outcome of jobs named ``name``.

    ``name="*"`` matches every job. The handler runs in the distributor's reactor thread
    after the outcome is stored; it may return a Deferred or be ``async def``. If it raises,
    it is retried with backoff up to ``max_attempt`` times, then the outcome is left
    ``unhandled`` (``jr outcomes --unhandled`` lists it).
    """
    if not isinstance(name, str) or not name:
        raise JobDefinitionError(f"on_result needs a job name or '*', not {name!r}")
    if isinstance(max_attempt, bool) or not isinstance(max_attempt, int) or max_attempt < 1:
        raise JobDefinitionError(
            f"max_attempt of a result handler must be >= 1, not {max_attempt!r}"
        )

    def register(function: H) -> H:
        if not callable(function):
            raise JobDefinitionError(f"on_result({name!r}) decorates a callable, not {function!r}")
        _active.get().add(name, HandlerDefinition(function, max_attempt))
        return function

    return register


@contextlib.contextmanager
def registering_handlers_into(registry: HandlerRegistry) -> Iterator[HandlerRegistry]:
    token = _active.set(registry)
    try:
        yield registry
    finally:
        _active.reset(token)


def load_handlers_directory(directory: str | Path) -> HandlerRegistry:
    """Import every ``*.py`` under ``directory`` into a new registry (as a node loads jobs).

    A broken file raises :class:`JobDefinitionError` naming the file and line.
    """
    from jobreactor.definitions import import_directory

    registry = HandlerRegistry()
    with registering_handlers_into(registry):
        import_directory(Path(directory), "handlers")
    return registry
