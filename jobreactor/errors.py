"""The exceptions of jobreactor, all under one root so callers can catch ours only."""

from __future__ import annotations

from typing import Any


class JobReactorError(Exception):
    """Root of every error jobreactor raises on purpose."""


class ConfigError(JobReactorError, ValueError):
    """A setting is unknown or has a value of the wrong type or range."""


class InvalidJobError(JobReactorError, ValueError):
    """``enqueue`` refused a job before anything was sent: the message names the problem."""


class ArgsTooLargeError(InvalidJobError):
    """The JSON form of a job's args is above ``JR.config.max_args_bytes``."""


class QueueFullError(JobReactorError):
    """The distributor (or this process's client) holds as many waiting jobs as its caps
    allow (``JR.config.max_waiting_jobs`` and friends): try again later."""


class JobDefinitionError(JobReactorError):
    """A jobs directory could not be loaded; the message names the file, line and error."""


class NotRunningError(JobReactorError):
    """The call needs a distributor or reactor that has not been started (or was stopped)."""


class CancelJob(Exception):
    """Raised inside a job, callback or errback to end the job (a periodic one for good).

    Raised in the job or a callback, the job ends as cancelled and the *success* feedback
    fires; raised in an errback, the *error* feedback fires. That is the original's rule.
    """


class JobFailed(JobReactorError):
    """A job ended without success: every attempt failed, or it was cancelled by an errback.

    ``error`` and ``error_type`` describe the last failure; ``job_args`` are the args as the
    node left them, the same value the error feedback received.
    """

    def __init__(
        self,
        job_id: str,
        name: str,
        error: str,
        error_type: str,
        job_args: dict[str, Any],
        status: str,
    ) -> None:
        super().__init__(f"job {name!r} ({job_id}) {status}: {error_type}: {error}")
        self.job_id = job_id
        self.name = name
        self.error = error
        self.error_type = error_type
        self.job_args = job_args
        self.status = status


class JobCancelled(JobReactorError):
    """The application cancelled the job through its handle before it finished."""

    def __init__(self, job_id: str, name: str) -> None:
        super().__init__(f"job {name!r} ({job_id}) was cancelled")
        self.job_id = job_id
        self.name = name
