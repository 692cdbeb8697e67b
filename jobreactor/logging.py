"""Log observers for the daemons: one JSON object per line, for log collectors.

Three ways to get JSON lines out of ``twistd jr-node`` / ``twistd jr-distributor``:

- ``--log-format json`` (or ``JR_LOG_FORMAT=json``, or ``log_format = "json"`` in the config
  file): the plugin's own option. Under ``twistd`` it honours ``--logfile`` (default: stdout
  with ``-n``, ``twistd.log`` when daemonized); under ``twist`` it honours ``--log-file``.
- ``twistd --logger jobreactor.logging.json_observer ...``: twistd's own option, naming
  :func:`json_observer`; always stdout. It takes precedence over ``--log-format``.
- ``twist --log-format json ...`` (before the plugin name): twist's own JSON, in which each
  record starts with an ASCII record separator (``\\x1e``, RFC 7464) rather than being a
  plain line.

Each line is a ``twisted.logger`` event as :func:`twisted.logger.eventAsJSON` writes it:
``log_format``, ``log_level``, ``log_namespace``, ``log_time`` and the event's own fields
(a job's id, name, node and attempt where the event carries them).
"""

from __future__ import annotations

import sys
from typing import IO, Any

from twisted.application import service
from twisted.logger import ILogObserver, jsonFileLogObserver
from twisted.python import components

__all__ = ["LOG_FORMATS", "json_lines_observer", "json_observer", "twistd_observer"]

#: The values of ``--log-format``.
LOG_FORMATS = ("text", "json")


def json_lines_observer(output: IO[Any]) -> ILogObserver:
    """An observer writing each event to ``output`` as one JSON object on its own line."""
    observer: ILogObserver = jsonFileLogObserver(output, recordSeparator="")
    return observer


def json_observer() -> ILogObserver:
    """Observer factory for ``twistd --logger jobreactor.logging.json_observer``: JSON lines
    on standard output."""
    return json_lines_observer(sys.stdout)


def twistd_observer(twistd_options: Any) -> ILogObserver:
    """The JSON-lines observer for the log destination twistd's own options chose.

    Mirrors twistd: ``--logfile=-`` or ``-n`` without ``--logfile`` is stdout, otherwise the
    file (``twistd.log`` by default), rotated as twistd rotates its own.
    """
    from twisted.python.logfile import LogFile

    logfile = twistd_options.get("logfile")
    if logfile == "-" or (not logfile and twistd_options.get("nodaemon")):
        return json_lines_observer(sys.stdout)
    return json_lines_observer(LogFile.fromFullPath(logfile or "twistd.log"))


class WithLogObserver(service.MultiService):
    """Runs ``child`` and hands ``observer`` to the twistd application it is added to.

    twistd looks for an ``ILogObserver`` component on the application (as a ``.tac`` file sets
    one) when no ``--logger`` was given; the plugin's service is the one thing it creates
    before it starts logging, so this is where the plugin can choose the observer.
    """

    def __init__(self, child: service.IService, observer: ILogObserver) -> None:
        super().__init__()
        self.observer = observer
        self.child = child
        child.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        if isinstance(parent, components.Componentized):
            parent.setComponent(ILogObserver, self.observer)
        super().setServiceParent(parent)
