# mypy: disable-error-code="misc"
# (mixin methods take ``self: Distributor``, a subclass of their own class, on purpose)
"""Dependencies: a job enqueued with ``depends_on`` waits here until those jobs succeeded.

The distributor owns every job to its final outcome, so it knows when each dependency ends
and how. A dependent job is owned (it can be cancelled, it is kept in storage) but waits in
no line until all its dependencies succeeded; it then goes to the waiting line with
``args["depends_on"][<id>]`` set to each dependency's final args. A dependency that fails or
is cancelled fails it with ``error_type`` ``DependencyFailed`` without running it, unless
``on_dependency_failure="run"``. A dependency that already ended is looked up in the stored
outcomes (kept for ``result_ttl``); an id with neither a job nor an outcome fails the
dependent the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from jobreactor.distributor.records import _Entry, _job_size, log
from jobreactor.model import Report, Status
from jobreactor.outcomes import refusal_report

if TYPE_CHECKING:
    from jobreactor.distributor.service import Distributor

#: The ``error_type`` of a job failed because a dependency did not succeed.
DEPENDENCY_FAILED = "DependencyFailed"


@attrs.define(eq=False)
class Blocked:
    """A job waiting for its dependencies: those still running, and the final args of the
    ones that ended."""

    entry: _Entry
    missing: set[str] = attrs.Factory(set)
    results: dict[str, Any] = attrs.Factory(dict)
    #: Dependencies still being looked up in the stored outcomes.
    looking_up: int = 0


class Dependencies:
    """Jobs waiting for other jobs (mixed into :class:`Distributor`)."""

    _blocked: dict[str, Blocked]
    _dependents: dict[str, set[str]]

    def _awaits_dependencies(self: Distributor, entry: _Entry) -> bool:
        """Whether ``entry`` must wait for its dependencies; if so, start waiting.

        Checked on the next turn, so that jobs reloaded after a restart (in any order)
        are all owned again by then.
        """
        if not entry.job.depends_on:
            return False
        self._blocked[entry.job.id] = Blocked(entry)
        self._clock.callLater(0, self._resolve_dependencies, entry.job.id)
        return True

    def _resolve_dependencies(self: Distributor, job_id: str) -> None:
        blocked = self._blocked.get(job_id)
        if blocked is None:
            return  # cancelled meanwhile
        for dependency in blocked.entry.job.depends_on:
            if dependency in self._owned:
                blocked.missing.add(dependency)
                self._dependents.setdefault(dependency, set()).add(job_id)
            else:
                blocked.looking_up += 1
                found = self.outcome(dependency)
                found.addCallback(self._looked_up, job_id, dependency)
                found.addErrback(
                    self._log_failure, "looking up dependency {dependency}", dependency=dependency
                )
        self._maybe_release(job_id)

    def _looked_up(self: Distributor, outcome: Any, job_id: str, dependency: str) -> None:
        blocked = self._blocked.get(job_id)
        if blocked is None:
            return
        blocked.looking_up -= 1
        if outcome is None:
            self._dependency_ended(
                blocked, dependency, None, f"depends on job {dependency}, which is unknown here"
            )
        elif outcome.status == "done":
            self._dependency_ended(blocked, dependency, outcome.args, None)
        else:
            self._dependency_ended(
                blocked,
                dependency,
                outcome.args,
                f"dependency {dependency} ({outcome.name}) {outcome.status}"
                + (f": {outcome.error_type}: {outcome.error}" if outcome.error else ""),
            )
        self._maybe_release(job_id)

    def _dependency_finished(self: Distributor, entry: _Entry, report: Report) -> None:
        """``entry``'s job ended: release or fail the jobs that wait for it."""
        self._blocked.pop(entry.job.id, None)  # a waiting dependent cancelled: stop waiting
        for job_id in sorted(self._dependents.pop(entry.job.id, ())):
            blocked = self._blocked.get(job_id)
            if blocked is None:
                continue
            blocked.missing.discard(entry.job.id)
            problem = None
            if report.status != Status.COMPLETE:
                problem = f"dependency {entry.job.id} ({entry.job.name}) {report.status.value}"
                if report.error:
                    problem += f": {report.error_type}: {report.error}"
            self._dependency_ended(blocked, entry.job.id, report.args, problem)
            self._maybe_release(job_id)

    def _dependency_ended(
        self: Distributor,
        blocked: Blocked,
        dependency: str,
        args: dict[str, Any] | None,
        problem: str | None,
    ) -> None:
        job = blocked.entry.job
        if problem is not None and job.on_dependency_failure != "run":
            self._blocked.pop(job.id, None)
            log.info(
                "job {job_id} ({name}) not run: {problem}",
                job_id=job.id,
                name=job.name,
                problem=problem,
            )
            self._finish_with_report(blocked.entry, refusal_report(job, problem, DEPENDENCY_FAILED))
            return
        blocked.results[dependency] = args if args is not None else {}

    def _maybe_release(self: Distributor, job_id: str) -> None:
        blocked = self._blocked.get(job_id)
        if blocked is None or blocked.missing or blocked.looking_up:
            return
        del self._blocked[job_id]
        entry = blocked.entry
        args = dict(entry.job.args)
        args["depends_on"] = {d: blocked.results.get(d, {}) for d in entry.job.depends_on}
        # No dependencies left to wait for: a reload after a restart queues it at once.
        entry.job = attrs.evolve(entry.job, args=args, depends_on=())
        # The results make it larger: count what it holds now (released at the same size).
        size = _job_size(entry.job)
        self._admission.resize(entry.origin, entry.size, size)
        entry.size = size
        self._keep_job(entry)
        log.info(
            "job {job_id} ({name}): its dependencies ended, it may run",
            job_id=entry.job.id,
            name=entry.job.name,
        )
        self._line_up(entry)
        self._schedule_dispatch()

    @property
    def blocked(self: Distributor) -> int:
        """Jobs waiting here for their dependencies to end."""
        return len(self._blocked)
