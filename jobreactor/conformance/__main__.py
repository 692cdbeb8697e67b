"""``python -m jobreactor.conformance HOST:PORT --role distributor|node`` (protocol.md §12)."""

from __future__ import annotations

import argparse
import sys

from jobreactor.conformance import distributor, node
from jobreactor.conformance.runner import Settings, run_suite
from jobreactor.conformance.wire import NoAnswer
from jobreactor.protocol import PROTOCOL_VERSION


def address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (e.g. 127.0.0.1:5000), not {text!r}")
    return host.strip("[]"), int(port)


def positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 3600:
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, not {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    parse = argparse.ArgumentParser(
        prog="python -m jobreactor.conformance",
        description="Check a distributor or a node against docs/protocol.md, over a socket.",
    )
    parse.add_argument(
        "address",
        type=address,
        nargs="?",
        help="distributor role: where the distributor listens; node role: where the suite "
        "listens for the node to dial in",
    )
    parse.add_argument(
        "--role",
        choices=["distributor", "node"],
        required=True,
        help="distributor: the suite plays nodes and clients; node: it plays the distributor",
    )
    parse.add_argument(
        "--list", action="store_true", help="print the checks of the role and their sections"
    )
    parse.add_argument("--timeout", type=positive, default=5.0, help="seconds per wait (5)")
    parse.add_argument(
        "--version",
        type=int,
        default=PROTOCOL_VERSION,
        help=f"the protocol version to speak ({PROTOCOL_VERSION})",
    )
    parse.add_argument(
        "--hello-timeout",
        type=positive,
        help="distributor role: its hello_timeout, to check that a silent connection is closed",
    )
    parse.add_argument("--job", help="node role: a job the node defines that succeeds")
    parse.add_argument(
        "--expect-leaving",
        action="store_true",
        help="node role: at the end, wait for Leaving (stop the node when asked)",
    )
    return parse


def main(argv: list[str] | None = None) -> int:
    parse = parser()
    options = parse.parse_args(argv)
    suite = distributor.suite if options.role == "distributor" else node.suite
    if options.list:
        for check in suite.checks:
            print(f"§{check.section:<6} {check.title}")
        return 0
    if options.address is None:
        parse.error("give the address, HOST:PORT")
    host, port = options.address
    settings = Settings(
        host=host,
        port=port,
        timeout=options.timeout,
        version=options.version,
        hello_timeout=options.hello_timeout,
        job=options.job,
        expect_leaving=options.expect_leaving,
    )
    if options.role == "distributor":
        try:
            distributor.Context(settings).raw().close()
        except OSError as error:
            print(f"cannot connect to a distributor at {host}:{port}: {error}", file=sys.stderr)
            return 2
        return run_suite(distributor.suite, lambda: distributor.context_for(settings))
    try:
        session = node.Session(settings)
    except OSError as error:
        print(f"cannot listen on {host}:{port}: {error}", file=sys.stderr)
        return 2
    print(f"listening on {host}:{port}: start the node now", flush=True)
    try:
        return run_suite(node.suite, lambda: node.context_for(session))
    except NoAnswer as error:
        print(str(error), file=sys.stderr)
        return 1
    finally:
        session.close()


if __name__ == "__main__":
    sys.exit(main())
