"""``twistd jr-node``: command-line options and the node service they describe."""

from __future__ import annotations

import os
import sys
from typing import Any, ClassVar

from twisted.application import service
from twisted.python import usage
from twisted.python.failure import Failure

from jobreactor.credentials import read_credentials_file
from jobreactor.definitions import load_jobs_directory
from jobreactor.dialing import check_client_endpoint
from jobreactor.errors import ConfigError, JobDefinitionError
from jobreactor.logging import WithLogObserver
from jobreactor.node import Node
from jobreactor.node.recycling import Recycler, process_monitor
from jobreactor.storage import SQLiteStorage, open_storage
from jobreactor.tap_options import DaemonOptions, ExitsCleanly, as_positive_int, as_text


class Options(DaemonOptions):
    """Every problem is a one-line usage error, so twistd exits non-zero without a traceback."""

    table = "node"
    command = "jr-node"
    synopsis = (
        "--name NAME [--distributor ENDPOINT ...] [--jobs DIR] [--storage URL] [--slots N]"
        " [--credentials-file PATH] [--config FILE] [--setting NAME=VALUE ...]"
        " [--log-format json|text]"
    )
    longdesc = (
        "Runs a JobReactor node. Each option is taken from the command line, else from its "
        "environment variable (an empty one counts as unset), else from the [node] table of "
        "the --config file (keys: name, jobs, storage, distributors, slots, log_format, "
        "credentials_file), "
        "else from its default. Config settings (max_attempt, heartbeat_timeout, ...) come "
        "from --setting NAME=VALUE, else JR_SETTING_<NAME>, else the [settings] table."
    )
    optParameters: ClassVar[list[list[Any]]] = [
        [
            "name",
            "n",
            None,
            "Node name, unique among the nodes of a distributor (required). Env: JR_NODE_NAME.",
        ],
        [
            "jobs",
            "j",
            None,
            "Jobs directory, loaded recursively at start (default: the job_directory "
            "setting, reactor_jobs). Env: JR_JOBS.",
        ],
        [
            "storage",
            "s",
            None,
            "Where accepted jobs are kept: memory, sqlite:PATH or a redis://HOST:PORT/DB "
            "URL (default: memory). Env: JR_STORAGE.",
        ],
        [
            "slots",
            None,
            None,
            "Jobs run at once (default: the node_slots setting, 50). Env: JR_SLOTS.",
        ],
        [
            "max-jobs",
            None,
            None,
            "Drain and exit 0 after this many job attempts (default: the max_jobs setting, "
            "0: no limit). Env: JR_MAX_JOBS.",
        ],
        [
            "max-memory",
            None,
            None,
            "Drain and exit 0 once resident memory passes this many MB (default: the "
            "max_memory_mb setting, 0: no limit). Env: JR_MAX_MEMORY.",
        ],
        [
            "processes",
            None,
            None,
            "Run N node processes NAME-1..NAME-N under a process monitor that starts again "
            "each one that exits (default: this process is the node). Env: JR_PROCESSES.",
        ],
        [
            "credentials-file",
            None,
            None,
            "File holding one line user:password, presented to distributors that ask for "
            "credentials (docs/security.md). Env: JR_CREDENTIALS_FILE.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["distributors"] = []

    def opt_distributor(self, endpoint: str) -> None:
        self["distributors"].append(endpoint)

    opt_distributor.__doc__ = (
        "Distributor to dial, as a client endpoint string (tcp:host=H:port=P); may be "
        "repeated (default: tcp:host=localhost:port=5000). Env: JR_DISTRIBUTORS, "
        "comma-separated."
    )

    opt_d = opt_distributor

    def table_keys(self) -> tuple[str, ...]:
        return (
            "name",
            "jobs",
            "storage",
            "distributors",
            "slots",
            "log_format",
            "max_jobs",
            "max_memory",
            "processes",
            "credentials_file",
        )

    def postOptions(self) -> None:
        self.load_config_file()
        config = self.build_config()
        name, _ = self.pick("name", "JR_NODE_NAME", "name", as_text)
        if name is None:
            raise usage.UsageError(
                "--name is required (or JR_NODE_NAME, or name in the [node] table of --config)"
            )
        self["name"] = name
        jobs, jobs_source = self.pick("jobs", "JR_JOBS", "jobs", as_text)
        self["jobs"] = jobs if jobs is not None else config.job_directory
        storage, storage_source = self.pick("storage", "JR_STORAGE", "storage", as_text)
        self["storage"] = storage if storage is not None else "memory"
        self["slots"], _ = self.pick("slots", "JR_SLOTS", "slots", as_positive_int)
        max_jobs, _ = self.pick("max-jobs", "JR_MAX_JOBS", "max_jobs", as_positive_int)
        if max_jobs is not None:
            config.max_jobs = max_jobs
        max_memory, _ = self.pick("max-memory", "JR_MAX_MEMORY", "max_memory", as_positive_int)
        if max_memory is not None:
            config.max_memory_mb = max_memory
        self["processes"], _ = self.pick("processes", "JR_PROCESSES", "processes", as_positive_int)
        if os.environ.get("JR_NODE_CHILD"):
            self["processes"] = None  # started by --processes: be the node itself
        distributors, distributors_source = self.pick(
            "distributor",
            "JR_DISTRIBUTORS",
            "distributors",
            as_endpoints,
            cli_value=self["distributors"] or None,
        )
        self["distributors"] = distributors or ["tcp:host=localhost:port=5000"]
        self.choose_log_format()
        check_client_endpoints(self["distributors"], distributors_source)
        try:
            self["registry"] = load_jobs_directory(self["jobs"])
        except JobDefinitionError as error:
            raise usage.UsageError(f"{jobs_source}: {error}") from None
        try:
            self["storage_object"] = open_storage(self["storage"])
        except (ConfigError, ValueError) as error:
            raise usage.UsageError(f"{storage_source}: {error}") from None
        storage = self["storage_object"]
        if isinstance(storage, SQLiteStorage) and not os.path.isdir(os.path.dirname(storage.path)):
            raise usage.UsageError(
                f"{storage_source}: no directory {os.path.dirname(storage.path)!r} "
                f"for the SQLite file {storage.path!r}"
            )
        self["config_object"] = config
        path, path_source = self.pick(
            "credentials-file", "JR_CREDENTIALS_FILE", "credentials_file", as_text
        )
        self["credentials"] = None
        if path is not None:
            try:
                self["credentials"] = read_credentials_file(path)
            except ConfigError as error:
                raise usage.UsageError(f"{path_source}: {error}") from None


def as_endpoints(value: Any, source: str, typed: bool = False) -> list[str]:
    """Distributor endpoints from the command line (a list), the environment (comma-separated)
    or the config file (a list of strings, or one string)."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(item, str) and item for item in value)
    ):
        raise usage.UsageError(f"{source}: must be endpoint strings, not {value!r}")
    return value


def check_client_endpoints(addresses: list[str], source: str) -> None:
    """Parse each address as Twisted will when it dials, so a typo stops the node now."""
    for address in addresses:
        try:
            check_client_endpoint(address)
        except ValueError as error:
            raise usage.UsageError(f"{source}: {error}") from None


class DaemonNode(ExitsCleanly):
    """The node as twistd runs it: a SIGTERM that ends in a completed drain exits 0."""

    def __init__(self, node: Node) -> None:
        super().__init__(node)
        self.node = node

    def startService(self) -> None:
        super().startService()
        self.node.when_started().addErrback(self._cannot_start)

    def _cannot_start(self, failure: Failure) -> None:
        """A node that cannot start (storage corrupt, read-only, wrong password) ends the
        process with status 1: a supervisor must not take it for a healthy node."""
        from twisted.internet import reactor

        print(f"jr-node: cannot start: {failure.getErrorMessage()}", file=sys.stderr, flush=True)
        reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        reactor.callWhenRunning(reactor.stop)


def makeService(options: Options) -> service.IService:
    config = options["config_object"]
    if options["processes"] is not None:
        from twisted.internet import reactor

        monitor = process_monitor(
            options["name"],
            options["processes"],
            sys.argv,
            reactor=reactor,
            drain_seconds=config.shutdown_grace_period,
        )
        supervisor = ExitsCleanly(monitor)
        observer = options.observer_for_twistd()
        return supervisor if observer is None else WithLogObserver(supervisor, observer)
    node = Node(
        options["name"],
        options["distributors"],
        storage=options["storage_object"],
        registry=options["registry"],
        slots=options["slots"],
        config=options["config_object"],
        credentials=options["credentials"],
    )
    daemon = DaemonNode(node)
    if config.max_jobs or config.max_memory_mb:
        from twisted.internet import reactor

        Recycler(
            node,
            max_jobs=config.max_jobs,
            max_memory_mb=config.max_memory_mb,
            stop=reactor.stop,
            clock=reactor,
        ).setServiceParent(daemon)
    observer = options.observer_for_twistd()
    return daemon if observer is None else WithLogObserver(daemon, observer)
