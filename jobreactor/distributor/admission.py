"""Admission: how much a distributor takes in, so that no sender can grow it without bound.

Caps on the jobs (and their bytes) waiting for an outcome, per sender and in all: past them
``Enqueue`` is answered ``QUEUE_FULL`` and the distributor stops reading from that sender
(``pauseProducing``: its bytes wait in the kernel, not in this process) until its jobs drain.
Caps on connections, in all and per address, and an idle timeout for client connections.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
from twisted.internet.interfaces import IReactorTime

from jobreactor.config import Config
from jobreactor.distributor.records import log
from jobreactor.errors import QueueFullError
from jobreactor.limits import printable

if TYPE_CHECKING:
    from jobreactor.distributor.sessions import DistributorProtocol

#: A paused sender is read again once it is below this share of its caps.
RESUME_AT = 0.8


@attrs.define
class _Usage:
    jobs: int = 0
    bytes: int = 0


class Admission:
    """The distributor's counts of waiting jobs and of connections, and its caps on them.

    A sender is a remote peer's name; jobs enqueued in this process count under ``None``.
    """

    def __init__(self, config: Config, clock: IReactorTime) -> None:
        self.config = config
        self._clock = clock
        self._total = _Usage()
        self._senders: dict[str | None, _Usage] = {}
        self._paused: dict[str, DistributorProtocol] = {}
        self._connections: dict[DistributorProtocol, str] = {}
        self._per_address: dict[str, int] = {}
        #: Bytes of the outcomes kept for absent peers, all together.
        self.kept_outcome_bytes = 0

    # -- waiting jobs -----------------------------------------------------------------

    def full(self, sender: str | None, jobs: int, size: int) -> str | None:
        """Why ``jobs`` more jobs of ``size`` bytes from ``sender`` do not fit, or None."""
        config = self.config
        if self._total.jobs + jobs > config.max_waiting_jobs:
            return f"the distributor holds {self._total.jobs} waiting jobs (max_waiting_jobs)"
        if self._total.bytes + size > config.max_waiting_bytes:
            return (
                f"the distributor holds {self._total.bytes} bytes of waiting jobs "
                "(max_waiting_bytes)"
            )
        usage = self._senders.get(sender, _Usage())
        if sender is not None and usage.jobs + jobs > config.max_waiting_jobs_per_sender:
            return f"{usage.jobs} jobs of this sender are waiting (max_waiting_jobs_per_sender)"
        if sender is not None and usage.bytes + size > config.max_waiting_bytes_per_sender:
            return (
                f"{usage.bytes} bytes of this sender's jobs are waiting "
                "(max_waiting_bytes_per_sender)"
            )
        return None

    def check_local(self, size: int) -> None:
        """Raise :class:`QueueFullError` if a job enqueued in this process does not fit."""
        reason = self.full(None, 1, size)
        if reason is not None:
            raise QueueFullError(f"queue full: {reason}; try again later")

    def add(self, sender: str | None, size: int) -> None:
        usage = self._senders.setdefault(sender, _Usage())
        usage.jobs += 1
        usage.bytes += size
        self._total.jobs += 1
        self._total.bytes += size

    def resize(self, sender: str | None, old: int, new: int) -> None:
        """A waiting job of ``sender`` grew or shrank (its dependencies' results added)."""
        usage = self._senders.get(sender)
        if usage is None:
            return
        usage.bytes += new - old
        self._total.bytes += new - old

    def release(self, sender: str | None, size: int) -> None:
        usage = self._senders.get(sender)
        if usage is None:
            return
        usage.jobs -= 1
        usage.bytes -= size
        self._total.jobs -= 1
        self._total.bytes -= size
        if usage.jobs <= 0:
            del self._senders[sender]
        if self._paused:
            self._resume_senders()

    def waiting_of(self, sender: str | None) -> int:
        usage = self._senders.get(sender)
        return usage.jobs if usage is not None else 0

    def pause(self, sender: str, protocol: DistributorProtocol) -> None:
        """Stop reading from ``sender`` until its jobs (and everyone's) drain."""
        if sender not in self._paused:
            log.warn(
                "queue full for {peer}: not reading from it until its jobs drain",
                peer=protocol.describe_peer(),
            )
        self._paused[sender] = protocol
        protocol.pause_reading()

    def forget(self, sender: str) -> None:
        self._paused.pop(sender, None)

    def _resume_senders(self) -> None:
        config = self.config
        if (
            self._total.jobs > RESUME_AT * config.max_waiting_jobs
            or self._total.bytes > RESUME_AT * config.max_waiting_bytes
        ):
            return
        for sender, protocol in list(self._paused.items()):
            usage = self._senders.get(sender, _Usage())
            if (
                usage.jobs <= RESUME_AT * config.max_waiting_jobs_per_sender
                and usage.bytes <= RESUME_AT * config.max_waiting_bytes_per_sender
            ):
                del self._paused[sender]
                protocol.resume_reading()

    # -- connections ------------------------------------------------------------------

    def opened(self, protocol: DistributorProtocol) -> bool:
        """Count a new connection; False (and one log line) if it is over a cap."""
        address = _address_of(protocol)
        config = self.config
        reason = None
        if len(self._connections) >= config.max_connections:
            reason = f"{len(self._connections)} connections are open (max_connections)"
        elif self._per_address.get(address, 0) >= config.max_connections_per_address:
            reason = (
                f"{self._per_address[address]} connections from {printable(address, 80)} "
                "are open (max_connections_per_address)"
            )
        if reason is not None:
            log.warn(
                "refusing a connection from {address}: {reason}", address=address, reason=reason
            )
            return False
        self._connections[protocol] = address
        self._per_address[address] = self._per_address.get(address, 0) + 1
        return True

    def closed(self, protocol: DistributorProtocol) -> None:
        address = self._connections.pop(protocol, None)
        if address is None:
            return
        self._per_address[address] -= 1
        if self._per_address[address] <= 0:
            del self._per_address[address]

    def watch_idle(self, protocol: DistributorProtocol) -> None:
        """Close ``protocol`` (a client's) once it has been idle for ``idle_timeout``: no
        command from it and no job of it waiting for an outcome."""
        timeout = self.config.idle_timeout
        if timeout <= 0:
            return

        def check() -> None:
            protocol.idle_timer = None
            link = protocol.link
            if link is None or protocol.transport is None:
                return
            idle = self._clock.seconds() - protocol.last_command
            if self.waiting_of(link.name) or idle < timeout:
                protocol.idle_timer = self._clock.callLater(max(timeout - idle, 0.05), check)
                return
            log.info(
                "closing the idle connection of {peer} (no command for {seconds:.0f} s, "
                "idle_timeout)",
                peer=protocol.describe_peer(),
                seconds=idle,
            )
            protocol.transport.loseConnection()

        protocol.idle_timer = self._clock.callLater(timeout, check)


def _address_of(protocol: DistributorProtocol) -> str:
    peer = protocol.transport.getPeer() if protocol.transport is not None else None
    host = getattr(peer, "host", None)
    return str(host if host is not None else peer)
