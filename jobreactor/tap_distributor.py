"""``twistd jr-distributor``: a standalone distributor that nodes and clients connect to."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, ClassVar

from twisted.application import service
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from jobreactor.credentials import WebLogins, authority_from_string
from jobreactor.distributor import Distributor
from jobreactor.errors import ConfigError, JobDefinitionError
from jobreactor.logging import WithLogObserver
from jobreactor.results import load_handlers_directory
from jobreactor.storage import SQLiteStorage
from jobreactor.storage.ledger import open_ledger
from jobreactor.tap_options import DaemonOptions, ExitsCleanly, as_text

if TYPE_CHECKING:
    from jobreactor.web import Dashboard

DEFAULT_LISTEN = "tcp:5000:interface=127.0.0.1"


class Options(DaemonOptions):
    """Every problem is a one-line usage error, so twistd exits non-zero without a traceback."""

    table = "distributor"
    command = "jr-distributor"
    synopsis = (
        "[--listen ENDPOINT] [--auth CHECKER] [--storage URL] [--handlers DIR] "
        "[--web ENDPOINT] [--config FILE] [--setting NAME=VALUE ...] [--log-format json|text]"
    )
    longdesc = (
        "Runs a standalone JobReactor distributor. Each option is taken from the command "
        "line, else from its environment variable (an empty one counts as unset), else from "
        "the [distributor] table of the --config file (keys: listen, auth, storage, "
        "handlers, web, log_format), else from "
        "its default. Config settings (node_grace_period, heartbeat_timeout, ...) come from "
        "--setting NAME=VALUE, else JR_SETTING_<NAME>, else the [settings] table."
    )
    optParameters: ClassVar[list[list[Any]]] = [
        [
            "listen",
            "l",
            None,
            f"Server endpoint string nodes and clients connect to (default: {DEFAULT_LISTEN}). "
            "Env: JR_LISTEN.",
        ],
        [
            "storage",
            "s",
            None,
            "Where the distributor keeps its id, waiting jobs and outcomes: memory (lost at "
            "exit), sqlite:PATH or a redis://HOST:PORT/DB URL (default: memory). "
            "Env: JR_STORAGE.",
        ],
        [
            "handlers",
            None,
            None,
            "Directory of Python files whose @on_result functions handle outcomes "
            "(loaded at start, like a node's jobs directory). Env: JR_HANDLERS.",
        ],
        [
            "web",
            None,
            None,
            "Server endpoint string of the web dashboard and /metrics, e.g. "
            "tcp:8080:interface=127.0.0.1 (default: none; anyone reaching it can cancel jobs, "
            "so keep it on loopback). Env: JR_WEB.",
        ],
        [
            "auth",
            None,
            None,
            "Ask every peer for credentials, checked by this twisted.cred checker string: "
            "file:PATH (lines user:password[:roles[:names]]) or memory:USER:PASSWORD:... "
            "(docs/security.md). Env: JR_AUTH.",
        ],
    ]

    def table_keys(self) -> tuple[str, ...]:
        return ("listen", "auth", "storage", "handlers", "web", "log_format")

    def postOptions(self) -> None:
        self.load_config_file()
        config = self.build_config()
        listen, source = self.pick("listen", "JR_LISTEN", "listen", as_text)
        self["listen"] = listen if listen is not None else DEFAULT_LISTEN
        self.choose_log_format()
        check_server_endpoint(self["listen"], source)
        storage, storage_source = self.pick("storage", "JR_STORAGE", "storage", as_text)
        self["storage"] = storage if storage is not None else "memory"
        try:
            self["storage_object"] = open_ledger(self["storage"])
        except (ConfigError, ValueError) as error:
            raise usage.UsageError(f"{storage_source}: {error}") from None
        files = getattr(self["storage_object"], "files", None)
        if isinstance(files, SQLiteStorage) and not os.path.isdir(os.path.dirname(files.path)):
            raise usage.UsageError(
                f"{storage_source}: no directory {os.path.dirname(files.path)!r} "
                f"for the SQLite file {files.path!r}"
            )
        handlers, handlers_source = self.pick("handlers", "JR_HANDLERS", "handlers", as_text)
        self["handlers_object"] = None
        if handlers is not None:
            try:
                self["handlers_object"] = load_handlers_directory(handlers)
            except JobDefinitionError as error:
                raise usage.UsageError(f"{handlers_source}: {error}") from None
        web, web_source = self.pick("web", "JR_WEB", "web", as_text)
        self["web"] = web or None
        if self["web"] is not None:
            check_server_endpoint(self["web"], web_source)
        self["config_object"] = config
        auth, auth_source = self.pick("auth", "JR_AUTH", "auth", as_text)
        self["authority"] = None
        if auth is not None:
            try:
                self["authority"] = authority_from_string(auth)
            except ConfigError as error:
                raise usage.UsageError(f"{auth_source}: {error}") from None


def check_server_endpoint(description: str, source: str) -> None:
    """Parse the endpoint as Twisted will when it listens, so a typo stops the process now."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    try:
        serverFromString(reactor, description)
    except Exception as error:
        raise usage.UsageError(
            f"{source}: {description!r} is not a server endpoint string ({error}); "
            "write e.g. tcp:5000:interface=127.0.0.1"
        ) from None


log = Logger()


class DaemonDistributor(ExitsCleanly):
    """The distributor as twistd runs it: a port it cannot listen on ends the process.

    twistd would otherwise keep running with nothing listening, which a supervisor cannot
    tell from a healthy daemon.
    """

    def __init__(
        self, distributor: Distributor, web: str | None = None, authority: Any = None
    ) -> None:
        super().__init__(distributor)
        self.distributor = distributor
        self.dashboard: Dashboard | None = None
        if web is not None:
            from jobreactor.web import Dashboard  # twisted.web: only with --web

            # With --auth the dashboard asks for the same users' passwords (HTTP basic).
            checkers: list[Any] | None = [WebLogins(authority)] if authority else None
            self.dashboard = Dashboard(distributor, web, checkers=checkers)
            self.dashboard.setServiceParent(self)

    def startService(self) -> None:
        super().startService()
        self.distributor.when_listening().addErrback(self._cannot_listen, self.distributor.listen)
        if self.dashboard is not None:
            self.dashboard.when_listening().addErrback(self._cannot_listen, self.dashboard.endpoint)

    def _cannot_listen(self, failure: Failure, endpoint: str | None) -> None:
        from twisted.internet import reactor

        if failure.check(CannotListenError):
            message = f"jr-distributor: cannot listen on {endpoint}: {failure.value}"
        else:
            message = (
                f"jr-distributor: cannot start with storage {self.distributor.storage}: "
                f"{failure.value}"
            )
        log.critical("{message}", message=message)
        print(message, file=sys.stderr, flush=True)
        # twistd exits 0 once the reactor stops; a failed start must not look like success.
        # (this may run before the reactor does: listening starts in startService)
        reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        reactor.callWhenRunning(reactor.stop)


def makeService(options: Options) -> service.IService:
    distributor = DaemonDistributor(
        Distributor(
            options["listen"],
            config=options["config_object"],
            storage=options["storage_object"],
            handlers=options["handlers_object"],
            portal=options["authority"],
        ),
        web=options["web"],
        authority=options["authority"],
    )
    observer = options.observer_for_twistd()
    return distributor if observer is None else WithLogObserver(distributor, observer)
