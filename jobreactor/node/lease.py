"""The node's lease on its storage: one process at a time works a node's stored jobs.

A second process started by mistake with the same name and storage would otherwise load the
same unfinished jobs and run them too. The lease is taken before any job is loaded or any
distributor dialled, renewed every third of ``storage_lease_seconds`` on the node's clock,
and released when the node stops.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from jobreactor.storage import IJobStorage, StorageError

log = Logger()

#: Seconds between two attempts to take a lease another process holds.
LEASE_RETRY_SECONDS = 1.0


def _unique_owner() -> str:
    """This process (host, pid) and a random part: two nodes of one process differ too."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


@attrs.define(eq=False)
class StorageLease:
    """The lease of node ``node`` on ``storage``; ``on_lost`` runs if another process took it."""

    storage: IJobStorage
    node: str
    seconds: float
    clock: IReactorTime
    on_lost: Callable[[], None]
    owner: str = attrs.Factory(_unique_owner)
    held: bool = False
    _renewal: LoopingCall | None = None

    async def acquire(self, wanted: Callable[[], bool]) -> bool:
        """Wait until the lease is this process's (True), or ``wanted()`` turns false (False).

        While another process holds it, says so once and tries again every second. A
        :class:`StorageError` (the storage unreachable) is the caller's to handle.
        """
        warned = False
        while not await self.storage.acquire_lease(self.node, self.owner, self.seconds):
            if not warned:
                log.warn(
                    "storage of node {node} is in use by another process; waiting for it "
                    "(this process runs nothing meanwhile)",
                    node=self.node,
                )
                warned = True
            await deferLater(self.clock, LEASE_RETRY_SECONDS, lambda: None)
            if not wanted():
                return False
        if warned:
            log.info("storage of node {node} is free now; this process took it", node=self.node)
        self.held = True
        if not getattr(self.storage, "leases_expire", True):
            return True  # held until released or until this process ends: nothing to renew
        self._renewal = LoopingCall(self._renew)
        self._renewal.clock = self.clock
        self._renewal.start(self.seconds / 3, now=False).addErrback(
            lambda failure: log.failure("renewing the storage lease", failure)
        )
        return True

    def _renew(self) -> Deferred[Any]:
        renewed = self.storage.renew_lease(self.node, self.owner, self.seconds)

        def answered(still_ours: bool) -> None:
            if still_ours or not self.held:
                return
            log.error(
                "node {node} lost its storage lease to another process; it takes no more jobs "
                "and stops",
                node=self.node,
            )
            self._stop_renewing()
            self.held = False
            self.on_lost()

        def unreachable(failure: Failure) -> None:
            failure.trap(StorageError)  # kept until it is back, unless someone takes it
            log.warn(
                "node {node} could not renew its storage lease: {error}",
                node=self.node,
                error=failure.getErrorMessage(),
            )

        return renewed.addCallbacks(answered, unreachable)

    def _stop_renewing(self) -> None:
        if self._renewal is not None and self._renewal.running:
            self._renewal.stop()
        self._renewal = None

    async def release(self) -> None:
        """Give the lease up (when the node stops); failing to is only logged."""
        self._stop_renewing()
        if not self.held:
            return
        self.held = False
        try:
            await self.storage.release_lease(self.node, self.owner)
        except StorageError as error:
            log.warn(
                "node {node} could not release its storage lease ({error}); it ends by itself",
                node=self.node,
                error=error,
            )
