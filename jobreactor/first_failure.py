"""A sign to the enqueuer when a job first fails and is going to be retried.

A failing job is retried (by default up to 10 attempts, ``n * 5`` s apart: about four minutes)
before its error feedback runs, as in the original. Without a word in between, an application
with a bug in a job sees nothing for minutes. The distributor that owns the job's feedbacks
logs its first failure at warning level, with the error and how to retry less.
"""

from __future__ import annotations

from twisted.logger import Logger

from jobreactor.model import Job, Report, Status

__all__ = ["warn_first_failure"]

log = Logger()


def warn_first_failure(job: Job, report: Report, node: str | None) -> None:
    """Log ``report`` if it says the first attempt of ``job`` failed and a retry follows."""
    if report.final or report.status is not Status.ERROR or report.attempt != 1:
        return
    error = report.error or report.args.get("error") or "(no message)"
    error_type = report.error_type or report.args.get("error_type") or "Error"
    log.warn(
        "job {job_name} ({job_id}) failed on node {node}: {error_type}: {error}; it will be "
        "retried (up to max_attempt attempts, 10 by default) before its error feedback runs; "
        "@job({job_name!r}, max_attempt=1) or enqueue(..., max_attempt=1) stops at the first "
        "failure",
        job_name=job.name,
        job_id=job.id,
        node=node or "?",
        error=error,
        error_type=error_type,
    )
