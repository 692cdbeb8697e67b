"""The interface every job storage implements; a node talks to nothing else."""

from __future__ import annotations

from collections.abc import Collection

from twisted.internet.defer import Deferred
from zope.interface import Interface

from jobreactor.errors import JobReactorError
from jobreactor.model import Job, Status


class StorageError(JobReactorError):
    """A storage could not do what it was asked: server unreachable or too slow, file missing.

    The message names the storage and the reason. A node that gets it from ``save`` does not
    acknowledge the job, so the distributor keeps it or gives it to another node.
    """


class IJobStorage(Interface):  # type: ignore[misc]
    """Where a node keeps the jobs it accepted, so a restart can find them again.

    Every method returns a Deferred. Jobs are kept per node name: nodes sharing one storage
    never see each other's jobs.
    """

    def open() -> Deferred[None]:
        """Connect or create what the storage needs; called once when the node starts."""

    def save(node: str, job: Job) -> Deferred[None]:
        """Store ``job`` (insert or replace by id) under ``node``; fires once it is durable."""

    def load(node: str, job_id: str) -> Deferred[Job | None]:
        """The job of ``node`` with id ``job_id``, or None."""

    def remove(node: str, job_id: str) -> Deferred[None]:
        """Forget the job; removing a missing job is not an error."""

    def jobs_for(node: str, statuses: Collection[Status] | None = None) -> Deferred[list[Job]]:
        """The jobs of ``node`` (those with one of ``statuses``, if given)."""

    def nodes() -> Deferred[list[str]]:
        """The names of the nodes that have at least one job stored, sorted."""

    def close() -> Deferred[None]:
        """Release connections; called when the node stops."""
