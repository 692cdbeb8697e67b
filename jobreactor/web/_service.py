"""The dashboard as a Twisted service: listens on a server endpoint string next to a distributor."""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Site

from jobreactor.web._live import LiveUpdates
from jobreactor.web._resources import build_tree

log = Logger()


class Dashboard(service.Service):
    """Serves the live dashboard, its JSON API and ``/metrics`` for ``distributor``.

    ``endpoint`` is any Twisted server endpoint string (``tcp:8080:interface=127.0.0.1``,
    ``ssl:8443:privateKey=key.pem:certKey=cert.pem``). Without ``checkers`` anyone who reaches
    the port may look and cancel jobs: bind it to loopback. With ``checkers``
    (``twisted.cred`` credential checkers, e.g. the distributor's own), every page and action
    needs HTTP basic credentials (use ``ssl:`` so they do not cross the network in clear), and
    ``/metrics`` too unless ``metrics_open``.
    """

    def __init__(
        self,
        distributor: Any,
        endpoint: str,
        *,
        reactor: Any = None,
        clock: IReactorTime | None = None,
        checkers: list[ICredentialsChecker] | None = None,
        metrics_open: bool = False,
        push_interval: float | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.distributor = distributor
        self.endpoint = endpoint
        self._reactor = reactor
        clock = clock if clock is not None else reactor
        tree, self.live = build_tree(
            distributor,
            clock,  # type: ignore[arg-type]
            checkers=checkers,
            metrics_open=metrics_open,
            push_interval=push_interval,
        )
        self.site = Site(tree)
        self.site.displayTracebacks = False
        self._port: IListeningPort | None = None
        self._listening: Deferred[IListeningPort] | None = None

    @property
    def live_updates(self) -> LiveUpdates:
        return self.live

    def startService(self) -> None:
        super().startService()
        listening = serverFromString(self._reactor, self.endpoint).listen(self.site)
        self._listening = listening

        def listened(port: IListeningPort) -> IListeningPort:
            self._port = port
            log.info(
                "dashboard of distributor {id} on {address}",
                id=self.distributor.id,
                address=port.getHost(),
            )
            return port

        listening.addCallback(listened)

    def when_listening(self) -> Deferred[Dashboard]:
        """Fire with this dashboard once its port is open (or fail saying why not)."""
        if self._listening is None:
            raise RuntimeError("start the dashboard service first")
        done: Deferred[Dashboard] = Deferred()

        def ok(port: IListeningPort) -> IListeningPort:
            done.callback(self)
            return port

        def failed(failure: Failure) -> None:
            done.errback(failure)

        self._listening.addCallbacks(ok, failed)
        return done

    @property
    def address(self) -> Any:
        """The listening address (``.host``, ``.port``), once listening."""
        return self._port.getHost() if self._port is not None else None

    @property
    def url(self) -> str | None:
        """``http://host:port/`` of a TCP endpoint once listening (https for ``ssl:``)."""
        address = self.address
        if address is None or not hasattr(address, "port"):
            return None
        scheme = "https" if self.endpoint.startswith(("ssl:", "tls:")) else "http"
        host = address.host if ":" not in address.host else f"[{address.host}]"
        return f"{scheme}://{host}:{address.port}/"

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.live.close()
        port, self._port = self._port, None
        if port is None:
            return succeed(None)
        return maybeDeferred(port.stopListening).addCallback(lambda _: None)
