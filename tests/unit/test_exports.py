"""The public face of the package: what ``import jobreactor`` promises."""

from __future__ import annotations

import jobreactor
from jobreactor import JR, job, job_callback, job_errback
from jobreactor.definitions import (
    job as defined_job,
)
from jobreactor.definitions import (
    job_callback as defined_job_callback,
)
from jobreactor.definitions import (
    job_errback as defined_job_errback,
)
from jobreactor.runtime import JobReactor


def test_every_name_in_all_exists() -> None:
    missing = [name for name in jobreactor.__all__ if not hasattr(jobreactor, name)]

    assert missing == []
    assert len(set(jobreactor.__all__)) == len(jobreactor.__all__)


def test_all_lists_the_names_a_user_reaches_for() -> None:
    expected = {
        "JR",
        "job",
        "job_callback",
        "job_errback",
        "CancelJob",
        "Config",
        "ConfigError",
        "Distributor",
        "Node",
        "Job",
        "JobFailed",
        "JobHandle",
        "InvalidJobError",
        "ArgsTooLargeError",
        "JobDefinitionError",
        "Status",
    }

    assert expected <= set(jobreactor.__all__)


def test_the_decorators_are_the_job_definition_decorators() -> None:
    assert job is defined_job
    assert job_callback is defined_job_callback
    assert job_errback is defined_job_errback
    assert callable(job("exports_check"))


def test_jr_is_the_process_wide_runtime() -> None:
    assert isinstance(JR, JobReactor)
    assert JR is jobreactor.JR
    for method in ("run", "run_forever", "wait_ready", "start_distributor", "start_node"):
        assert callable(getattr(JR, method)), method
    assert callable(JR.enqueue)


def test_errors_share_one_root() -> None:
    for name in ("ConfigError", "InvalidJobError", "ArgsTooLargeError", "JobDefinitionError"):
        assert issubclass(getattr(jobreactor, name), jobreactor.JobReactorError), name
    assert issubclass(jobreactor.ArgsTooLargeError, jobreactor.InvalidJobError)
