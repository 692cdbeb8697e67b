"""Dialling a distributor, and saying plainly when it cannot be reached.

Nodes and clients reach their distributor through Twisted's ``ClientService``, which retries
for ever and logs only ``Scheduling retry N to connect <TCP4ClientEndpoint object at 0x…>``,
with neither the address nor the reason. Here:

- :func:`check_client_endpoint` refuses an address that is not a client endpoint string
  (``tcp://localhost:5000``, ``localhost:5000``) with a one-line hint naming the right form;
- :class:`DialReport` says where a side dialled and why it failed (refused, timed out, host
  not found, TLS failure, Hello refused), once per change of reason rather than once per
  retry, and remembers the last reason for ``JR.wait_ready``'s timeout;
- :func:`reporting_service` builds the ``ClientService`` with those reports in place of its
  own retry lines.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import urlsplit

from twisted.application.internet import ClientService
from twisted.internet import error as internet_error
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.logger import ILogObserver, Logger, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = [
    "DialReport",
    "check_client_endpoint",
    "describe_endpoint",
    "failure_reason",
    "reporting_service",
    "unreachable_peers",
]

log = Logger()

_URL = re.compile(r"^[A-Za-z][\w+.-]*://")
_HOST_PORT = re.compile(r"^\[?(?P<host>[\w.\-:]+?)\]?:(?P<port>\d+)$")


def _hint(host: str, port: str, tls: bool = False) -> str:
    return f"{'tls' if tls else 'tcp'}:host={host}:port={port}"


def check_client_endpoint(address: str, reactor: Any = None) -> str:
    """Return ``address`` if it is a client endpoint string; else raise a one-line ValueError.

    The error names the likely mistake and the string to write instead, e.g. ``'tcp://x:5000'
    is a URL; write the endpoint string tcp:host=x:port=5000``.
    """
    if _URL.match(address):
        parts = urlsplit(address)
        if parts.hostname and parts.port:
            right = _hint(parts.hostname, str(parts.port), parts.scheme in ("tls", "ssl"))
            raise ValueError(f"{address!r} is a URL, not a client endpoint string; write {right}")
        raise ValueError(
            f"{address!r} is a URL, not a client endpoint string; "
            "write e.g. tcp:host=localhost:port=5000"
        )
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    try:
        clientFromString(reactor, address)
    except (ValueError, TypeError, KeyError) as error:
        plain = _HOST_PORT.match(address)
        if plain:
            right = _hint(plain["host"], plain["port"])
            raise ValueError(
                f"{address!r} is a host and port, not a client endpoint string; write {right}"
            ) from None
        raise ValueError(
            f"{address!r} is not a client endpoint string ({error}); "
            "write e.g. tcp:host=localhost:port=5000"
        ) from None
    return address


def describe_endpoint(address: str) -> str:
    """``host:port`` for a ``tcp:``/``tls:`` endpoint string; the string itself otherwise."""
    kind, _, rest = address.partition(":")
    if kind not in ("tcp", "tls", "ssl", "tcp6"):
        return address
    keywords: dict[str, str] = {}
    positional: list[str] = []
    for part in re.split(r"(?<!\\):", rest):
        key, equals, value = part.partition("=")
        if equals:
            keywords[key] = value
        else:
            positional.append(part)
    host = keywords.get("host") or (positional[0] if positional else "?")
    port = keywords.get("port") or (positional[1] if len(positional) > 1 else "?")
    host = host.replace("\\:", ":")
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}" if kind in ("tcp", "tcp6") else f"{host}:{port} ({kind})"


def failure_reason(failure: Failure) -> str:
    """Why a connection attempt (or the connection right after it) failed, in a few words."""
    if failure.check(internet_error.ConnectionRefusedError):
        return "connection refused (is the distributor running and listening there?)"
    if failure.check(internet_error.TimeoutError, internet_error.TCPTimedOutError):
        return "timed out"
    if failure.check(internet_error.DNSLookupError):
        return "host name not found"
    if failure.check(internet_error.NoRouteError):
        return "no route to the host"
    name = type(failure.value).__name__
    if _is_tls(failure):
        return f"TLS failure: {failure.getErrorMessage()}"
    text = failure.getErrorMessage()
    if failure.check(internet_error.ConnectionLost, internet_error.ConnectionDone):
        inner = getattr(failure.value, "args", ())
        for item in inner:
            if isinstance(item, Failure):
                return failure_reason(item)
        return "the connection closed before the distributor answered"
    return f"{name}: {text}" if text else name


def _is_tls(failure: Failure) -> bool:
    kind = type(failure.value)
    return kind.__module__.startswith("OpenSSL") or "SSL" in kind.__name__


_lock = threading.Lock()
_failing: dict[int, DialReport] = {}


def unreachable_peers() -> list[str]:
    """One line per side of this process that cannot reach its distributor now; any thread."""
    with _lock:
        reports = list(_failing.values())
    return [report.status() for report in reports if report.last_reason is not None]


class DialReport:
    """The reachability of one distributor address, as seen by one node or client.

    ``who`` is the side dialling (``node worker_1``); ``address`` its endpoint string.
    A warning is logged when the reason changes (first failure, or a new reason), an info
    line when the distributor is reached again; retries with the same reason say nothing.
    """

    def __init__(self, who: str, address: str) -> None:
        self.who = who
        self.address = address
        self.where = describe_endpoint(address)
        #: Why the last attempt failed; None once the distributor accepted us.
        self.last_reason: str | None = None
        self.failures = 0

    def status(self) -> str:
        return f"{self.who} cannot reach the distributor at {self.where}: {self.last_reason}"

    def failed(self, reason: str, refusal: str | None = None) -> None:
        """Note a failed attempt; log it if ``reason`` differs from the last one.

        ``refusal`` is the distributor's own error when it refused the Hello: the line then
        says that the distributor refused us, and why.
        """
        self.failures += 1
        if reason == self.last_reason:
            return
        self.last_reason = reason
        with _lock:
            _failing[id(self)] = self
        if refusal is not None:
            log.warn(
                "the distributor at {where} refused {who}: {error}; retrying "
                "(said again only if this changes)",
                who=self.who,
                where=self.where,
                address=self.address,
                error=refusal,
            )
            return
        log.warn(
            "{who} cannot reach the distributor at {where}: {reason}; retrying "
            "(said again only if this changes)",
            who=self.who,
            where=self.where,
            address=self.address,
            reason=reason,
        )

    def connection_failed(self, failure: Failure) -> Failure:
        """Errback for a connection attempt: note why, pass the failure on."""
        self.failed(failure_reason(failure))
        return failure

    def hello_refused(self, failure: Failure) -> None:
        """Errback for the Hello: a refusal, or a connection that broke (TLS) before it."""
        if _is_tls(failure) or failure.check(
            internet_error.ConnectionLost, internet_error.ConnectionDone
        ):
            self.failed(failure_reason(failure))
        else:
            error = failure.getErrorMessage()
            self.failed(f"it refused the Hello: {error}", refusal=error)

    def accepted(self) -> None:
        """The distributor accepted our Hello: say so if we had been failing."""
        if self.last_reason is not None:
            log.info(
                "{who} reached the distributor at {where} after {failures} failed attempt(s)",
                who=self.who,
                where=self.where,
                failures=self.failures,
            )
        self.last_reason = None
        self.failures = 0
        self.forget()

    def forget(self) -> None:
        with _lock:
            _failing.pop(id(self), None)


@implementer(IStreamClientEndpoint)
class _ReportingEndpoint:
    """A client endpoint that tells a :class:`DialReport` why each attempt failed."""

    def __init__(self, endpoint: IStreamClientEndpoint, report: DialReport) -> None:
        self._endpoint = endpoint
        self._report = report

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        connecting: Deferred[IProtocol] = self._endpoint.connect(protocolFactory)
        return connecting.addErrback(self._report.connection_failed)

    def __repr__(self) -> str:
        return f"<endpoint {self._report.where}>"


def _without_retry_lines(event: dict[str, Any]) -> None:
    """ClientService's retry lines name no address and no reason: DialReport says it."""
    if str(event.get("log_format", "")).startswith("Scheduling retry"):
        return
    globalLogPublisher(event)


class _ReportingClientService(ClientService):
    _log = Logger(
        namespace="twisted.application.internet.ClientService",
        observer=cast(ILogObserver, _without_retry_lines),
    )


def reporting_service(
    reactor: Any,
    report: DialReport,
    factory: IProtocolFactory,
    *,
    retryPolicy: Callable[[int], float],
    clock: Any,
    prepareConnection: Callable[[Any], Any],
) -> ClientService:
    """A ``ClientService`` dialling ``report.address`` that reports through ``report``."""
    endpoint = _ReportingEndpoint(clientFromString(reactor, report.address), report)
    return _ReportingClientService(
        endpoint,
        factory,
        retryPolicy=retryPolicy,
        clock=clock,
        prepareConnection=prepareConnection,
    )
