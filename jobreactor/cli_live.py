"""``jr nodes`` and ``jr stats``: ask a running distributor, over its web endpoint, how the
cluster is doing.

``jr nodes --web http://127.0.0.1:8080`` prints the connected nodes; ``jr stats`` the
totals, rates and per-name figures; ``--json`` prints the distributor's JSON as it is, for
scripts. The URL may also come from ``JR_WEB_URL`` (not ``JR_WEB``: that is the daemon's
endpoint string); credentials go in it (``http://user:password@host:port``) when the
dashboard requires them. Exit status: 0 done,
1 the distributor could not be reached or refused, 2 the command line is wrong.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from typing import Any, TextIO
from urllib.parse import unquote, urlsplit, urlunsplit

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, ResponseDone
from twisted.web.http_headers import Headers

#: The commands this module adds to ``jr``.
LIVE_COMMANDS = ("nodes", "stats")
#: Seconds ``jr nodes`` / ``jr stats`` wait for the distributor's answer.
TIMEOUT = 10.0


def add_live_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``nodes`` and ``stats`` to ``jr``'s subcommands."""
    for name, text in (
        ("nodes", "the nodes connected to a running distributor (over its --web endpoint)"),
        ("stats", "totals, rates and per-name figures of a running distributor"),
    ):
        command = commands.add_parser(name, parents=[common], help=text)
        command.add_argument(
            "--web",
            metavar="URL",
            default=os.environ.get("JR_WEB_URL"),
            help="the distributor's dashboard URL, e.g. http://127.0.0.1:8080 "
            "(default: $JR_WEB_URL)",
        )


_RESPONSE_DONE = Failure(ResponseDone())


class _Collect(Protocol):
    """Gathers a response body (``readBody`` warns on the proxied transports Agent uses)."""

    def __init__(self, done: Deferred[bytes]) -> None:
        self.done = done
        self.parts: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.parts.append(data)

    def connectionLost(self, reason: Failure = _RESPONSE_DONE) -> None:
        if reason.check(ResponseDone):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


def read_body(response: Any) -> Deferred[bytes]:
    """The whole body of an Agent ``response``."""
    done: Deferred[bytes] = Deferred()
    response.deliverBody(_Collect(done))
    return done


class LiveError(Exception):
    """A one-line reason ``jr nodes`` / ``jr stats`` could not answer."""


def run_live(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run ``jr nodes`` or ``jr stats``; returns the exit status."""
    out = out if out is not None else sys.stdout
    if not args.web:
        message = "say which distributor with --web URL (or set JR_WEB_URL)"
        print(f"jr: error: {message}", file=sys.stderr)
        return 2
    try:
        url, authorization = _split_credentials(args.web)
    except LiveError as error:
        print(f"jr: error: {error}", file=sys.stderr)
        return 2
    path = "api/nodes" if args.command == "nodes" else "api/stats"
    status = [0]

    async def main(reactor: Any) -> None:
        try:
            document = await _get_json(reactor, url + path, authorization)
        except LiveError as error:
            print(f"jr: error: {error}", file=sys.stderr)
            status[0] = 1
            return
        if args.json:
            print(json.dumps(document, indent=2, ensure_ascii=False), file=out)
        elif args.command == "nodes":
            _print_nodes(document, out)
        else:
            _print_stats(document, out)

    try:
        task.react(lambda reactor: Deferred.fromCoroutine(main(reactor)))
    except SystemExit as done:
        if done.code not in (0, None):
            return done.code if isinstance(done.code, int) else 1
    return status[0]


def _split_credentials(url: str) -> tuple[str, bytes | None]:
    """The URL without ``user:password@`` (ending in ``/``) and an Authorization value."""
    parts = urlsplit(url if "://" in url else "http://" + url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LiveError(f"--web wants an http:// or https:// URL, not {url!r}")
    authorization = None
    netloc = parts.netloc
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        authorization = b"Basic " + base64.b64encode(pair)
        netloc = netloc.rsplit("@", 1)[1]
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return urlunsplit((parts.scheme, netloc, path, "", "")), authorization


async def _get_json(reactor: Any, url: str, authorization: bytes | None) -> Any:
    headers = Headers({b"Accept": [b"application/json"]})
    if authorization is not None:
        headers.addRawHeader(b"Authorization", authorization)
    shown = url
    try:
        requested = Agent(reactor).request(b"GET", url.encode("utf-8"), headers)
        requested.addTimeout(TIMEOUT, reactor)
        response = await requested
        body = await read_body(response)
    except Exception as error:
        reason = str(error) or type(error).__name__
        raise LiveError(f"cannot reach the distributor at {shown}: {reason}") from None
    if response.code == 401:
        raise LiveError(
            f"{shown} wants credentials: put them in the URL (http://user:pass@host:port)"
        )
    if response.code != 200:
        raise LiveError(f"{shown} answered HTTP {response.code}: {body[:200]!r}")
    try:
        return json.loads(body)
    except ValueError:
        raise LiveError(f"{shown} did not answer JSON: is it a jobreactor dashboard?") from None


def _table(headers: list[str], rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    for line in [headers, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip(), file=out)


def _print_nodes(document: dict[str, Any], out: TextIO) -> None:
    nodes = document.get("nodes", [])
    if not nodes:
        print("no node is connected", file=out)
        return
    _table(
        ["NAME", "ADDRESS", "SLOTS", "LOAD", "HELD"],
        [[n["name"], n["address"], str(n["slots"]), str(n["load"]), str(n["held"])] for n in nodes],
        out,
    )


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}/s"


def _print_stats(document: dict[str, Any], out: TextIO) -> None:
    totals = document["totals"]
    rates = document["per_second"]
    print(
        f"nodes {document['nodes']} (slots {document['slots']})  waiting {document['waiting']}  "
        f"running {document['running']}",
        file=out,
    )
    print(
        f"enqueued {totals['enqueued']} ({_rate(rates['enqueued'])})  "
        f"done {totals['done']} ({_rate(rates['done'])})  "
        f"failed {totals['failed']} ({_rate(rates['failed'])})  "
        f"cancelled {totals['cancelled']}  retries {totals['retries']}",
        file=out,
    )
    rows = document.get("names", [])
    if not rows:
        return
    print(file=out)

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}s"

    _table(
        ["NAME", "ENQUEUED", "DONE", "FAILED", "CANCELLED", "FAIL%", "P50", "P90", "P99"],
        [
            [
                r["name"],
                str(r["enqueued"]),
                str(r["done"]),
                str(r["failed"]),
                str(r["cancelled"]),
                "-" if r["failure_rate"] is None else f"{100 * r['failure_rate']:.1f}",
                seconds(r["duration_p50"]),
                seconds(r["duration_p90"]),
                seconds(r["duration_p99"]),
            ]
            for r in rows
        ],
        out,
    )
