"""Nodes that recycle themselves: past ``max_jobs`` jobs or ``max_memory_mb`` of memory, a
``twistd jr-node`` process drains as on SIGTERM and exits 0; ``--processes N`` keeps N such
processes running under Twisted's own ``ProcessMonitor``, starting again each one that exits.

A job that leaks memory (a C library that never frees, a cache that only grows) is common
enough that every job queue grows an answer; this one needs no outside supervisor, and the
drain means nothing is lost and nothing runs twice: jobs not started go back to the
distributor, running ones finish first.
"""

from __future__ import annotations

import math
import os
import resource
import sys
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.runner.procmon import ProcessMonitor

log = Logger()

#: Seconds between two looks at the process's memory.
MEMORY_CHECK_SECONDS = 0.5
#: ... and every this many finished attempts.
MEMORY_CHECK_ATTEMPTS = 20
#: Extra seconds ``--processes`` lets a child drain after SIGTERM before SIGKILL.
KILL_MARGIN = 10


def resident_mb() -> float:
    """This process's resident memory in MiB (``/proc/self/statm``; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class Recycler(service.Service):
    """Watches a node's count of finished attempts and its process's memory; once past
    either limit it calls ``stop`` (``reactor.stop``: twistd then stops the node, which
    drains, and exits 0)."""

    def __init__(
        self,
        node: Any,
        *,
        max_jobs: int,
        max_memory_mb: float,
        stop: Callable[[], Any],
        clock: Any,
        memory: Callable[[], float] = resident_mb,
    ) -> None:
        self.node = node
        self.max_jobs = max_jobs
        self.max_memory_mb = max_memory_mb
        self._stop = stop
        self._memory = memory
        self._clock = clock
        self._loop: LoopingCall | None = None
        self._attempts = 0
        self.recycling = False

    def startService(self) -> None:
        super().startService()
        if self.max_jobs or self.max_memory_mb:
            self.node.after_attempt = self._after_attempt
        if self.max_memory_mb:
            self._loop = LoopingCall(self.check_memory)
            self._loop.clock = self._clock
            self._loop.start(MEMORY_CHECK_SECONDS, now=False).addErrback(
                lambda failure: log.failure("checking memory", failure)
            )

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def _after_attempt(self) -> None:
        self._attempts += 1
        if self.max_jobs:
            self.check_jobs()
        # A fast leak outruns the timer (thousands of short jobs in half a second): look
        # at the memory every MEMORY_CHECK_ATTEMPTS attempts too (a read of /proc, cheap).
        if self.max_memory_mb and self._attempts % MEMORY_CHECK_ATTEMPTS == 0:
            self.check_memory()

    def check_jobs(self) -> None:
        if self.node.jobs_run >= self.max_jobs:
            self._recycle(f"it ran {self.node.jobs_run} jobs (max_jobs {self.max_jobs})")

    def check_memory(self) -> None:
        used = self._memory()
        if used > self.max_memory_mb:
            self._recycle(f"it uses {used:.0f} MB (max_memory_mb {self.max_memory_mb:g})")

    def _recycle(self, reason: str) -> None:
        if self.recycling:
            return
        self.recycling = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        log.info(
            "node {node} recycles: {reason}; draining as on SIGTERM, then exiting",
            node=self.node.name,
            reason=reason,
        )
        self._clock.callLater(0, self._stop)


def child_arguments(argv: list[str], name: str) -> list[str]:
    """The ``jr-node`` arguments of this command line for one child: ``--processes`` left out,
    ``--name`` replaced by the child's."""
    try:
        start = argv.index("jr-node") + 1
    except ValueError:
        start = len(argv)
    rest = argv[start:]
    kept: list[str] = []
    skip = False
    for index, argument in enumerate(rest):
        if skip:
            skip = False
            continue
        for option in ("--processes", "--name", "-n"):
            if argument == option:
                skip = index + 1 < len(rest)
                break
            if argument.startswith(option + "=") and option.startswith("--"):
                break
        else:
            kept.append(argument)
    return ["jr-node", "--name", name, *kept]


def process_monitor(
    name: str, count: int, argv: list[str], *, reactor: Any, drain_seconds: float
) -> ProcessMonitor:
    """A ``ProcessMonitor`` running ``count`` node processes ``NAME-1``..``NAME-N`` (each
    ``python -m twisted jr-node`` with this command line's options), restarting each that
    exits; stopping it sends SIGTERM, and SIGKILL only after the children had time to drain."""
    monitor = ProcessMonitor(reactor=reactor)
    monitor.killTime = math.ceil(drain_seconds + KILL_MARGIN)
    monitor.minRestartDelay = 1
    monitor.maxRestartDelay = 10
    monitor.threshold = 1
    env = dict(os.environ)
    env.pop("JR_NODE_NAME", None)
    env.pop("JR_PROCESSES", None)
    env["JR_NODE_CHILD"] = "1"  # a child never starts processes of its own
    for index in range(1, count + 1):
        child = f"{name}-{index}"
        # Plain lines: the monitor logs each line of a child's output with its name.
        arguments = [
            sys.executable,
            "-m",
            "twisted",
            "--log-format=text",
            *child_arguments(argv, child),
        ]
        monitor.addProcess(child, arguments, env=env)
    return monitor
