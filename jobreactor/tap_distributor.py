"""``twistd jr-distributor``: a standalone distributor that nodes and clients connect to."""

from __future__ import annotations

import os
import sys
from typing import Any, ClassVar

from twisted.application import service
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from jobreactor.distributor import Distributor
from jobreactor.logging import WithLogObserver
from jobreactor.tap_options import DaemonOptions, ExitsCleanly, as_text

DEFAULT_LISTEN = "tcp:5000:interface=127.0.0.1"


class Options(DaemonOptions):
    """Every problem is a one-line usage error, so twistd exits non-zero without a traceback."""

    table = "distributor"
    command = "jr-distributor"
    synopsis = (
        "[--listen ENDPOINT] [--config FILE] [--setting NAME=VALUE ...] [--log-format json|text]"
    )
    longdesc = (
        "Runs a standalone JobReactor distributor. Each option is taken from the command "
        "line, else from its environment variable (an empty one counts as unset), else from "
        "the [distributor] table of the --config file (keys: listen, log_format), else from "
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
    ]

    def table_keys(self) -> tuple[str, ...]:
        return ("listen", "log_format")

    def postOptions(self) -> None:
        self.load_config_file()
        config = self.build_config()
        listen, source = self.pick("listen", "JR_LISTEN", "listen", as_text)
        self["listen"] = listen if listen is not None else DEFAULT_LISTEN
        self.choose_log_format()
        check_server_endpoint(self["listen"], source)
        self["config_object"] = config


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

    def __init__(self, distributor: Distributor) -> None:
        super().__init__(distributor)
        self.distributor = distributor

    def startService(self) -> None:
        super().startService()
        self.distributor.when_listening().addErrback(self._cannot_listen)

    def _cannot_listen(self, failure: Failure) -> None:
        from twisted.internet import reactor

        message = f"jr-distributor: cannot listen on {self.distributor.listen}: {failure.value}"
        log.critical("{message}", message=message)
        print(message, file=sys.stderr, flush=True)
        # twistd exits 0 once the reactor stops; a failed start must not look like success.
        # (this may run before the reactor does: listening starts in startService)
        reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        reactor.callWhenRunning(reactor.stop)


def makeService(options: Options) -> service.IService:
    distributor = DaemonDistributor(Distributor(options["listen"], config=options["config_object"]))
    observer = options.observer_for_twistd()
    return distributor if observer is None else WithLogObserver(distributor, observer)
