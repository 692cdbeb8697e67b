"""Where a node or client dialled and why it failed: said plainly, once per change."""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from typing import Any, cast

import pytest
import pytest_twisted
from twisted.internet import error as internet_error
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.logger import (
    ILogObserver,
    LogLevel,
    capturedLogs,
    formatEvent,
    globalLogPublisher,
)
from twisted.python.failure import Failure

from jobreactor.client import Client, connect
from jobreactor.dialing import (
    DialReport,
    check_client_endpoint,
    describe_endpoint,
    failure_reason,
    unreachable_peers,
)


@pytest.mark.parametrize(
    ("address", "message"),
    [
        (
            "tcp://localhost:5000",
            "'tcp://localhost:5000' is a URL, not a client endpoint string; "
            "write tcp:host=localhost:port=5000",
        ),
        (
            "tls://jobs.example.org:5001",
            "'tls://jobs.example.org:5001' is a URL, not a client endpoint string; "
            "write tls:host=jobs.example.org:port=5001",
        ),
        (
            "localhost:5000",
            "'localhost:5000' is a host and port, not a client endpoint string; "
            "write tcp:host=localhost:port=5000",
        ),
        (
            "10.0.0.7:5000",
            "'10.0.0.7:5000' is a host and port, not a client endpoint string; "
            "write tcp:host=10.0.0.7:port=5000",
        ),
    ],
)
def test_an_address_that_is_no_endpoint_string_gets_the_right_form(
    address: str, message: str
) -> None:
    with pytest.raises(ValueError) as raised:
        check_client_endpoint(address)
    assert str(raised.value) == message


def test_endpoint_strings_pass() -> None:
    for address in ("tcp:host=localhost:port=5000", "tcp:localhost:5000", "unix:path=/tmp/s"):
        assert check_client_endpoint(address) == address


def test_jr_connect_with_a_url_refuses_it_with_the_hint() -> None:
    with pytest.raises(ValueError, match="write tcp:host=localhost:port=5000"):
        connect("tcp://localhost:5000", reactor=reactor)


@pytest.mark.parametrize(
    ("address", "shown"),
    [
        ("tcp:host=localhost:port=5000", "localhost:5000"),
        ("tcp:127.0.0.1:5001", "127.0.0.1:5001"),
        ("tcp6:host=\\:\\:1:port=5000", "[::1]:5000"),
        ("tls:host=jobs.example.org:port=5001:trustRoots=/ca", "jobs.example.org:5001 (tls)"),
        ("unix:path=/run/jr.sock", "unix:path=/run/jr.sock"),
    ],
)
def test_an_endpoint_is_shown_as_host_and_port(address: str, shown: str) -> None:
    assert describe_endpoint(address) == shown


def test_failure_reasons_are_a_few_plain_words() -> None:
    assert failure_reason(Failure(internet_error.ConnectionRefusedError())).startswith(
        "connection refused"
    )
    assert failure_reason(Failure(internet_error.TCPTimedOutError())) == "timed out"
    assert failure_reason(Failure(internet_error.DNSLookupError("x"))) == "host name not found"


def warnings(events: Sequence[Mapping[str, Any]]) -> list[str]:
    return [formatEvent(dict(e)) for e in events if e["log_level"] == LogLevel.warn]


def test_a_report_warns_once_per_change_of_reason_not_per_retry() -> None:
    report = DialReport("node worker_1", "tcp:host=localhost:port=5000")
    refused = Failure(internet_error.ConnectionRefusedError())

    with capturedLogs() as events:
        for _ in range(5):
            report.connection_failed(refused)
        report.hello_refused(Failure(ValueError("a node named 'worker_1' is already connected")))
        report.hello_refused(Failure(ValueError("a node named 'worker_1' is already connected")))
        assert unreachable_peers() == [
            "node worker_1 cannot reach the distributor at localhost:5000: it refused the "
            "Hello: a node named 'worker_1' is already connected"
        ]
        report.accepted()
        report.connection_failed(refused)
        report.accepted()

    assert warnings(events) == [
        "node worker_1 cannot reach the distributor at localhost:5000: connection refused "
        "(is the distributor running and listening there?); retrying (said again only if "
        "this changes)",
        "the distributor at localhost:5000 refused node worker_1: a node named 'worker_1' is "
        "already connected; retrying (said again only if this changes)",
        "node worker_1 cannot reach the distributor at localhost:5000: connection refused "
        "(is the distributor running and listening there?); retrying (said again only if "
        "this changes)",
    ]
    infos = [formatEvent(dict(e)) for e in events if e["log_level"] == LogLevel.info]
    assert infos == [
        "node worker_1 reached the distributor at localhost:5000 after 7 failed attempt(s)",
        "node worker_1 reached the distributor at localhost:5000 after 1 failed attempt(s)",
    ]
    assert unreachable_peers() == []


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest_twisted.ensureDeferred
async def test_a_client_dialling_a_closed_port_says_where_and_why_once() -> None:
    port = closed_port()
    client = Client(f"tcp:host=127.0.0.1:port={port}", name="app-1", reactor=reactor)
    published: list[Mapping[str, Any]] = []
    observer = cast(ILogObserver, published.append)
    globalLogPublisher.addObserver(observer)
    try:
        with capturedLogs() as events:
            client.startService()
            for _ in range(100):  # 0.2 s, 0.4 s, ... between attempts: two take ~0.2 s
                if client.dial_report.failures >= 2:
                    break
                await deferLater(reactor, 0.05, lambda: None)
            await client.stopService()
    finally:
        globalLogPublisher.removeObserver(observer)

    assert client.dial_report.failures >= 2
    assert warnings(events) == [
        f"client app-1 cannot reach the distributor at 127.0.0.1:{port}: connection refused "
        "(is the distributor running and listening there?); retrying (said again only if "
        "this changes)"
    ]
    # ClientService's own line names neither the address nor the reason: it is not logged.
    assert not [e for e in published if "Scheduling retry" in str(e.get("log_format"))]


def test_a_tls_failure_is_named_as_one() -> None:
    from OpenSSL import SSL

    error = SSL.Error([("SSL routines", "", "certificate verify failed")])
    assert failure_reason(Failure(error)).startswith("TLS failure: ")
    report = DialReport("client app-1", "tls:host=jobs.example.org:port=5001")
    with capturedLogs() as events:
        report.hello_refused(Failure(error))  # the handshake broke before Hello was answered
    assert warnings(events) == [
        "client app-1 cannot reach the distributor at jobs.example.org:5001 (tls): TLS failure: "
        f"{Failure(error).getErrorMessage()}; retrying (said again only if this changes)"
    ]
    report.forget()
