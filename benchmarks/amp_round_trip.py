"""Bare AMP round trips between two processes: the floor under one job at a time.

    .venv/bin/python benchmarks/amp_round_trip.py [--port P] [--count N]

One Twisted process answers a one-argument AMP command (300 bytes of text) that another sends
``--count`` times, one outstanding, over loopback TCP with ``TCP_NODELAY``; it prints the p50
and p99 round trip (the first tenth not counted). A serial job through jobreactor costs at
least this plus what the distributor and the node do with it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from typing import Any

from twisted.internet import defer, endpoints, protocol, task
from twisted.protocols import amp


class Ping(amp.Command):
    arguments = [(b"data", amp.Unicode())]
    response = [(b"data", amp.Unicode())]


class Echo(amp.AMP):
    @Ping.responder
    def ping(self, data: str) -> dict[str, str]:
        return {"data": data}

    def connectionMade(self) -> None:
        super().connectionMade()
        self.transport.setTcpNoDelay(True)  # type: ignore[attr-defined,union-attr]


def serve(port: int) -> None:
    from twisted.internet import reactor

    endpoint = endpoints.TCP4ServerEndpoint(reactor, port, interface="127.0.0.1")
    endpoint.listen(protocol.Factory.forProtocol(Echo))
    reactor.run()  # type: ignore[attr-defined]


async def measure(reactor: Any, port: int, count: int) -> None:
    client = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    for _ in range(100):  # the server process may still be starting
        try:
            peer = await endpoints.connectProtocol(client, amp.AMP())
            break
        except Exception:
            await task.deferLater(reactor, 0.05, lambda: None)
    else:
        raise SystemExit("the echo process did not listen")
    peer.transport.setTcpNoDelay(True)
    payload = "x" * 300
    times = []
    for _ in range(count):
        began = time.perf_counter()
        await peer.callRemote(Ping, data=payload)
        times.append(time.perf_counter() - began)
    times = sorted(times[count // 10 :])
    p50, p99 = times[len(times) // 2], times[int(len(times) * 0.99)]
    print(f"bare AMP round trip: p50 {p50 * 1000:.3f} ms, p99 {p99 * 1000:.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=47123)
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.serve:
        serve(options.port)
        return
    echo = subprocess.Popen([sys.executable, __file__, "--serve", "--port", str(options.port)])
    try:
        task.react(
            lambda reactor: defer.ensureDeferred(measure(reactor, options.port, options.count))
        )
    finally:
        echo.kill()


if __name__ == "__main__":
    main()
