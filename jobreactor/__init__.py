"""jobreactor: background jobs for Twisted, after the Ruby JobReactor.

Define jobs with :func:`job`, :func:`job_callback` and :func:`job_errback`; run nodes and a
distributor with :data:`JR` (or the :class:`Node` and :class:`Distributor` services); enqueue
with ``JR.enqueue`` or ``Distributor.enqueue``.
"""

# First, before anything imports Twisted's networking (see its docstring).
from jobreactor import _lazy_tls  # noqa: F401
from jobreactor.client import Client, connect
from jobreactor.config import Config
from jobreactor.credentials import Authority, Peer, authority_from_string
from jobreactor.definitions import JobRegistry, job, job_callback, job_errback, load_jobs_directory
from jobreactor.distributor import Distributor, NodeInfo
from jobreactor.errors import (
    ArgsTooLargeError,
    CancelJob,
    ConfigError,
    InvalidJobError,
    JobCancelled,
    JobDefinitionError,
    JobFailed,
    JobReactorError,
    NotRunningError,
    QueueFullError,
)
from jobreactor.handle import JobHandle
from jobreactor.model import Job, Status
from jobreactor.node import Node, current_node
from jobreactor.results import Outcome, on_result
from jobreactor.runtime import JR, JobReactor

__all__ = [
    "JR",
    "ArgsTooLargeError",
    "Authority",
    "CancelJob",
    "Client",
    "Config",
    "ConfigError",
    "Distributor",
    "InvalidJobError",
    "Job",
    "JobCancelled",
    "JobDefinitionError",
    "JobFailed",
    "JobHandle",
    "JobReactor",
    "JobReactorError",
    "JobRegistry",
    "Node",
    "NodeInfo",
    "NotRunningError",
    "Outcome",
    "Peer",
    "QueueFullError",
    "Status",
    "authority_from_string",
    "connect",
    "current_node",
    "job",
    "job_callback",
    "job_errback",
    "load_jobs_directory",
    "on_result",
]
