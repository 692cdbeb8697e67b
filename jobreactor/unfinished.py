"""Say so when a script ends before its jobs do.

``JR.run`` puts the reactor in a daemon thread, so a script that enqueues and falls off its
end exits at once: the jobs still waiting for a node, or whose outcome has not come back, are
lost without a word. :class:`UnfinishedJobs` remembers the handles ``JR.enqueue`` gave out,
and at exit ``JR`` prints one line on stderr naming the jobs that never finished.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable

from jobreactor.handle import JobHandle

__all__ = ["UnfinishedJobs", "unfinished_message"]


class UnfinishedJobs:
    """The handles given out by one runtime that have no final outcome yet; any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handles: list[JobHandle] = []
        self._prune_at = 64

    def add(self, handle: JobHandle) -> None:
        with self._lock:
            if len(self._handles) >= self._prune_at:
                # Forget settled handles; with many pending ones, prune less often, so that
                # adding stays cheap on average.
                self._handles = [kept for kept in self._handles if not kept.done]
                self._prune_at = max(64, 2 * len(self._handles))
            self._handles.append(handle)

    def pending(self) -> list[JobHandle]:
        """The handles whose job has no final outcome, in enqueue order."""
        with self._lock:
            return [handle for handle in self._handles if not handle.done]


def _names(handles: Iterable[JobHandle]) -> str:
    counts = Counter(handle.name for handle in handles)
    return ", ".join(name if n == 1 else f"{name} x{n}" for name, n in sorted(counts.items()))


def unfinished_message(pending: list[JobHandle], waiting_for_node: int | None) -> str | None:
    """The line to print at exit for ``pending`` handles, or None when there are none.

    ``waiting_for_node`` is how many jobs the process's own distributor still held for want
    of a node (None when the jobs went to a standalone distributor).
    """
    if not pending:
        return None
    count = len(pending)
    jobs = "1 job" if count == 1 else f"{count} jobs"
    where = ""
    if waiting_for_node:
        where = f"; {min(waiting_for_node, count)} never reached a node (is one running?)"
    return (
        f"jobreactor: exiting with {jobs} unfinished ({_names(pending)}){where}; their "
        f"feedbacks will not run. Wait for them before exiting, e.g. handle.result(timeout=60)."
    )
