"""The interface every job storage implements; a node talks to nothing else."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from jobreactor.errors import JobReactorError
from jobreactor.model import Job, Status


def stored_at_once(result: Deferred[Any]) -> bool:
    """Whether a storage call has succeeded already (memory storage answers at once): the
    caller goes on in the same call, without a callback or a Deferred of its own."""
    return result.called and result.result is None


class StorageError(JobReactorError):
    """A storage could not do what it was asked: server unreachable or too slow, file missing.

    The message names the storage and the reason. A node that gets it from ``save`` does not
    acknowledge the job, so the distributor keeps it or gives it to another node.
    """


class PermanentStorageError(StorageError):
    """A storage that cannot work until someone fixes it: a corrupt file, missing
    permissions, a wrong password. Waiting does not help, so a node does not retry it: it
    says so and stops (``twistd jr-node`` exits 1)."""


class IJobStorage(Interface):  # type: ignore[misc]
    """Where a node keeps the jobs it accepted, so a restart can find them again.

    Every method returns a Deferred. Jobs are kept per node name: nodes sharing one storage
    never see each other's jobs.

    ``save`` and ``remove`` may be written in batches (SQLite and Redis write one reactor
    turn's worth in one transaction or one script call: :mod:`jobreactor.storage.batching`),
    as long as each Deferred fires only once its change is durable (and fails if it is not
    written), the changes of one job take effect in the order they were asked for, and a
    read sees every change asked for before it.

    The lease methods keep two processes from working one node's jobs at once (a second
    process started by mistake with the same name and storage would run them twice): a node
    holds the lease on its name from before it loads its jobs until it stops. ``owner`` is a
    string unique to the process (and node) asking.
    """

    leases_expire = Attribute(
        "True if a lease ends unless renewed in time (Redis: a killed holder cannot release "
        "it); False if it lasts until released or until its process ends (memory, SQLite)."
    )

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

    def acquire_lease(node: str, owner: str, seconds: float) -> Deferred[bool]:
        """Take the lease on ``node``'s jobs for ``owner``: True if it is now (or was already)
        ``owner``'s, False while another live process holds it. ``seconds`` is how long it
        lasts without a renewal where the storage cannot tell a dead holder on its own."""

    def renew_lease(node: str, owner: str, seconds: float) -> Deferred[bool]:
        """Extend ``owner``'s lease by ``seconds``; False if someone else holds it now."""

    def release_lease(node: str, owner: str) -> Deferred[None]:
        """Give the lease up if ``owner`` holds it (never another process's lease)."""

    def close() -> Deferred[None]:
        """Release connections; called when the node stops."""
