"""What ``twistd jr-node`` and ``twistd jr-distributor`` share: a TOML config file, environment
variables, ``Config`` settings and the log format.

Each value is taken from the first place that has it: the command line, then the environment
(an empty variable counts as unset), then the config file, then the default. A problem with
any of them is a :class:`~twisted.python.usage.UsageError` naming where the value came from, so
twistd prints one line and exits non-zero instead of a traceback.
"""

from __future__ import annotations

import os
import signal
import tomllib
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

import attrs
from twisted.application import service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python import usage

from jobreactor.config import Config
from jobreactor.errors import ConfigError
from jobreactor.logging import LOG_FORMATS, json_lines_observer

T = TypeVar("T")

#: Prefix of the environment variables that set a ``Config`` setting (``JR_SETTING_MAX_ATTEMPT``).
SETTING_PREFIX = "JR_SETTING_"
#: Tables a config file may hold; a node reads ``[node]``, a distributor ``[distributor]``,
#: both read ``[settings]``, so one file can serve both.
TABLES = ("node", "distributor", "settings")

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _setting_types() -> dict[str, str]:
    return {field.name: str(field.type) for field in attrs.fields(Config)}


def setting_from_text(name: str, text: str, source: str) -> Any:
    """A setting's value from an environment variable or ``--setting``, by the setting's type."""
    kind = _setting_types().get(name)
    if kind is None:
        known = ", ".join(_setting_types())
        raise usage.UsageError(f"{source}: unknown setting {name!r}; the settings are: {known}")
    value = text.strip()
    if kind == "bool":
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise usage.UsageError(f"{source}: {name} must be true or false, not {text!r}")
    if kind == "int":
        try:
            return int(value)
        except ValueError:
            raise usage.UsageError(f"{source}: {name} must be an integer, not {text!r}") from None
    if kind == "float":
        try:
            number = float(value)
        except ValueError:
            raise usage.UsageError(f"{source}: {name} must be a number, not {text!r}") from None
        return number
    if kind == "dict[str, str]":
        return rate_limits_from_text(name, value, source)
    return text


def rate_limits_from_text(name: str, value: str, source: str) -> dict[str, str]:
    """``call_api=50/s,send_mail=10/m`` (as ``--setting rate_limits=...`` takes it)."""
    limits = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        job_name, equals, limit = item.partition("=")
        if not equals or not job_name.strip():
            raise usage.UsageError(
                f"{source}: {name} must be JOB=LIMIT pairs separated by commas "
                f"(call_api=50/s,send_mail=10/m), not {value!r}"
            )
        limits[job_name.strip()] = limit.strip()
    return limits


def read_config_file(path: str, source: str) -> dict[str, dict[str, Any]]:
    """The tables of a TOML config file; an unreadable or malformed file is a usage error."""
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as error:
        raise usage.UsageError(
            f"{source}: config file {path!r} cannot be read: {error.strerror or error}"
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise usage.UsageError(
            f"{source}: config file {path!r} is not valid TOML: {error}"
        ) from None
    for key, value in data.items():
        if key not in TABLES:
            tables = ", ".join(f"[{table}]" for table in TABLES)
            raise usage.UsageError(
                f"config file {path!r}: unknown table or key {key!r}; it may hold {tables}"
            )
        if not isinstance(value, dict):
            raise usage.UsageError(f"config file {path!r}: {key} must be a table ([{key}])")
    return data


# -- converters: (value, source, typed) -> value, raising UsageError naming the source ------
# ``typed`` is true for a value from the config file: TOML has types, so "3" is not 3 there.


def as_text(value: Any, source: str, typed: bool = False) -> str:
    if not isinstance(value, str) or not value.strip():
        raise usage.UsageError(f"{source}: must be a non-empty string, not {value!r}")
    return value


def as_positive_int(value: Any, source: str, typed: bool = False) -> int:
    if isinstance(value, str) and not typed:
        try:
            value = int(value.strip())
        except ValueError:
            raise usage.UsageError(f"{source}: must be an integer, not {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise usage.UsageError(f"{source}: must be an integer, not {value!r}")
    if value < 1:
        raise usage.UsageError(f"{source}: must be at least 1, not {value}")
    return value


def as_log_format(value: Any, source: str, typed: bool = False) -> str:
    if not isinstance(value, str) or value.strip().lower() not in LOG_FORMATS:
        choices = " or ".join(LOG_FORMATS)
        raise usage.UsageError(f"{source}: the log format is {choices}, not {value!r}")
    return value.strip().lower()


class DaemonOptions(usage.Options):
    """Options of a jobreactor twistd plugin: ``--config``, ``--log-format``, ``--setting``.

    Subclasses name their config table (``table``) and the command (``command``), and read
    every value through :meth:`pick`, which applies the precedence.
    """

    table: ClassVar[str]
    command: ClassVar[str]

    optParameters: ClassVar[list[list[Any]]] = [
        [
            "config",
            "c",
            None,
            "TOML config file with a [node] / [distributor] table of these options "
            "and a [settings] table of Config settings. Env: JR_CONFIG.",
        ],
        [
            "log-format",
            None,
            None,
            "Log format: text (default) or json, one JSON object per line. Env: JR_LOG_FORMAT.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["settings"] = []
        self._failed = False
        self._file: dict[str, dict[str, Any]] = {}
        self._file_name = ""

    def opt_setting(self, assignment: str) -> None:
        """A Config setting, as NAME=VALUE (e.g. max_attempt=3); may be repeated. Env: JR_SETTING_<NAME>."""  # noqa: E501
        name, equals, value = assignment.partition("=")
        if not equals or not name.strip():
            raise usage.UsageError(f"--setting {assignment!r}: write NAME=VALUE")
        self["settings"].append((name.strip(), value))

    def parseOptions(self, options: Any = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError:
            self._failed = True
            raise

    def getUsage(self, width: int | None = None) -> str:
        # twistd and twist print the whole usage before (or after) a usage error; one line
        # pointing at --help keeps the error itself visible.
        if self._failed:
            return f"({self.command} --help lists the options)\n"
        return super().getUsage(width)

    # -- reading values ----------------------------------------------------------------

    def load_config_file(self) -> None:
        path, source = self["config"], "--config"
        if path is None:
            path, source = os.environ.get("JR_CONFIG") or None, "JR_CONFIG"
        if path is None:
            return
        self._file = read_config_file(path, source)
        self._file_name = path
        known = self.table_keys()
        for key in self._file.get(self.table, {}):
            if key not in known:
                raise usage.UsageError(
                    f"config file {path!r}: unknown key {key!r} in [{self.table}]; "
                    f"the keys are: {', '.join(known)}"
                )

    def table_keys(self) -> tuple[str, ...]:
        """The keys the command's table of the config file may hold."""
        raise NotImplementedError

    def pick(
        self,
        option: str,
        env: str,
        key: str,
        convert: Callable[[Any, str, bool], T],
        cli_value: Any = None,
    ) -> tuple[T | None, str]:
        """The value of one option and a label of where it came from, by precedence."""
        value = self.get(option) if cli_value is None else cli_value
        if value is not None:
            return convert(value, f"--{option}", False), f"--{option}"
        text = os.environ.get(env)
        if text:
            return convert(text, env, False), env
        table = self._file.get(self.table, {})
        if key in table:
            source = f"{key} in [{self.table}] of {self._file_name}"
            return convert(table[key], source, True), source
        return None, f"--{option} (default)"

    def build_config(self) -> Config:
        """A ``Config`` from ``[settings]``, then ``JR_SETTING_*``, then ``--setting``."""
        config = Config()
        settings = self._file.get("settings", {})
        for name, value in settings.items():
            self._set(config, name, value, f"{name} in [settings] of {self._file_name}")
        for variable, text in sorted(os.environ.items()):
            if variable.startswith(SETTING_PREFIX) and text:
                name = variable[len(SETTING_PREFIX) :].lower()
                self._set(config, name, setting_from_text(name, text, variable), variable)
        for name, text in self["settings"]:
            source = f"--setting {name}"
            self._set(config, name, setting_from_text(name, text, source), source)
        return config

    @staticmethod
    def _set(config: Config, name: str, value: Any, source: str) -> None:
        try:
            config[name] = value
        except ConfigError as error:
            raise usage.UsageError(f"{source}: {error}") from None

    def choose_log_format(self) -> None:
        """Resolve ``--log-format`` and, under ``twist``, give twist the matching observer.

        Under ``twistd`` the plugin's ``makeService`` installs the observer instead (see
        :mod:`jobreactor.logging`); twistd's own ``--logger`` wins over it.
        """
        log_format, _ = self.pick("log-format", "JR_LOG_FORMAT", "log_format", as_log_format)
        self["log_format"] = log_format
        parent: Mapping[str, Any] | None = getattr(self, "parent", None)
        if log_format is None or parent is None:
            return
        if "fileLogObserverFactory" in parent:  # twist
            from twisted.logger import textFileLogObserver

            factory = json_lines_observer if log_format == "json" else textFileLogObserver
            parent["fileLogObserverFactory"] = factory  # type: ignore[index]
            parent["logFormat"] = log_format  # type: ignore[index]
        elif log_format == "json" and parent.get("syslog"):
            raise usage.UsageError("--log-format json cannot go to --syslog; drop one of them")
        elif log_format == "json" and parent.get("logfile") == "-" and not parent.get("nodaemon"):
            raise usage.UsageError("a daemon cannot log to stdout: give -n or a --logfile")

    def observer_for_twistd(self) -> Any:
        """The JSON observer to install under twistd, or None (text, twist, or --logger)."""
        from twisted.application.app import ServerOptions

        from jobreactor.logging import twistd_observer

        parent = getattr(self, "parent", None)
        if (
            self.get("log_format") != "json"
            or not isinstance(parent, ServerOptions)
            or parent.get("logger") is not None
        ):
            return None
        return twistd_observer(parent)


class ExitsCleanly(service.MultiService):
    """Runs ``child``; a SIGTERM or SIGINT that ends in a completed ``stopService`` exits 0.

    twistd re-raises the signal that stopped the reactor so the exit status says "killed";
    for a node that handed back its jobs and delivered its reports, or a distributor that
    let its sent jobs land, stopping was the normal, successful end, and supervisors
    (systemd, Kubernetes) should see it as one.
    """

    def __init__(self, child: service.IService) -> None:
        super().__init__()
        child.setServiceParent(self)

    def stopService(self) -> Deferred[None]:
        stopped: Deferred[None] = defer.maybeDeferred(super().stopService)

        def done(result: Any) -> Any:
            from twisted.internet import reactor

            if getattr(reactor, "_exitSignal", None) in (signal.SIGTERM, signal.SIGINT):
                reactor._exitSignal = None  # type: ignore[attr-defined]
            return result

        return stopped.addCallback(done)
