"""``twistd jr-node``: command-line options and the node service they describe."""

from __future__ import annotations

import signal
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python import usage

from jobreactor.config import Config
from jobreactor.definitions import load_jobs_directory
from jobreactor.errors import ConfigError, JobDefinitionError
from jobreactor.node import Node, endpoint_description
from jobreactor.storage import open_storage


class Options(usage.Options):
    """Every problem is a one-line usage error, so twistd exits non-zero without a traceback."""

    synopsis = "--name NAME [--distributor ENDPOINT ...] [--jobs DIR] [--storage URL] [--slots N]"
    optParameters = [
        ["name", "n", None, "Node name, unique among the nodes of a distributor (required)."],
        ["jobs", "j", "reactor_jobs", "Jobs directory, loaded recursively at start."],
        ["storage", "s", "memory", "Where accepted jobs are kept: memory."],
        ["slots", None, None, "Jobs run at once (default: the node_slots setting, 50).", int],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["distributors"] = []

    def opt_distributor(self, endpoint: str) -> None:
        """Distributor to dial, as an endpoint string (tcp:host=H:port=P); may be repeated.
        Default: tcp:host=localhost:port=5000."""
        self["distributors"].append(endpoint)

    opt_d = opt_distributor

    def postOptions(self) -> None:
        if not self["name"]:
            raise usage.UsageError("--name is required")
        if not self["distributors"]:
            self["distributors"] = ["tcp:host=localhost:port=5000"]
        try:
            for address in self["distributors"]:
                endpoint_description(address)
            self["registry"] = load_jobs_directory(self["jobs"])
            self["storage_object"] = open_storage(self["storage"])
            if self["slots"] is not None and self["slots"] < 1:
                raise ConfigError(f"--slots must be at least 1, not {self['slots']}")
        except (JobDefinitionError, ConfigError, ValueError) as error:
            raise usage.UsageError(str(error)) from None


class DaemonNode(service.MultiService):
    """The node as twistd runs it: a SIGTERM that ends in a completed drain exits 0.

    twistd re-raises the signal that stopped the reactor so the exit status says "killed";
    for a node that handed back its jobs and delivered its reports, stopping was the normal,
    successful end, and supervisors should see it as one.
    """

    def __init__(self, node: Node) -> None:
        super().__init__()
        self.node = node
        node.setServiceParent(self)

    def stopService(self) -> Deferred[None]:
        stopped: Deferred[None] = defer.maybeDeferred(super().stopService)

        def drained(result: Any) -> Any:
            from twisted.internet import reactor

            if getattr(reactor, "_exitSignal", None) in (signal.SIGTERM, signal.SIGINT):
                reactor._exitSignal = None  # type: ignore[attr-defined]
            return result

        return stopped.addCallback(drained)


def makeService(options: dict[str, Any]) -> service.IService:
    node = Node(
        options["name"],
        options["distributors"],
        storage=options["storage_object"],
        registry=options["registry"],
        slots=options["slots"],
        config=Config(),
    )
    return DaemonNode(node)
