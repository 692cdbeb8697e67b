"""Turning a node's report into what the application sees: a feedback call and a handle's
outcome. Shared by the embedded distributor and the remote client, so both behave alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from jobreactor.errors import JobCancelled, JobFailed
from jobreactor.model import Job, Report, Status

Feedback = Callable[[dict[str, Any]], Any]

log = Logger()


class Named(Protocol):
    """What names a job in an outcome: a Job, or the handle a remote client keeps instead."""

    @property
    def id(self) -> str: ...

    @property
    def name(self) -> str: ...


def final_outcome(job: Named, report: Report) -> dict[str, Any] | Failure:
    """What a job's handle settles with once ``report`` (a final one) arrived."""
    if report.feedback == "success":
        return report.args
    if report.feedback == "error":
        return Failure(
            JobFailed(
                job.id,
                job.name,
                report.error or "",
                report.error_type or "",
                report.args,
                report.status.value,
            )
        )
    return Failure(JobCancelled(job.id, job.name))


def fire_feedback(
    job: Named,
    report: Report,
    success: Feedback | None,
    error: Feedback | None,
) -> None:
    """Call the feedback ``report`` asks for; a feedback that raises is logged, never spreads.

    (In the original, an exception in a feedback stopped the application's reactor.)
    """
    feedback = success if report.feedback == "success" else error
    if report.feedback is None or feedback is None:
        return
    try:
        result = feedback(report.args)
    except Exception:
        log.failure(
            "{kind} feedback of job {job_id} ({name}) raised",
            kind=report.feedback,
            job_id=job.id,
            name=job.name,
        )
        return
    if isinstance(result, Deferred):
        result.addErrback(
            lambda failure: log.failure(
                "{kind} feedback of job {job_id} ({name}) failed",
                failure,
                kind=report.feedback,
                job_id=job.id,
                name=job.name,
            )
        )


def refusal_report(job: Job, message: str, error_type: str) -> Report:
    """The final report for a job that failed before any node ran it (refused, undeliverable)."""
    args = dict(job.args, error=message, error_type=error_type)
    return Report(job.id, job.run + 1, Status.FAILED, "error", True, args, message, error_type)
