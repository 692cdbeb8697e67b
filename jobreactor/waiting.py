"""The distributor's line of jobs waiting for a node: highest priority first, FIFO within one."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class WaitingLine(Generic[T]):
    """A deque per priority level; levels are few, so finding the highest is cheap.

    ``appendleft`` puts an item at the head of *its* level (a job coming back from a lost
    node goes before others of its priority, not before more urgent ones).
    """

    def __init__(self, priority_of: Callable[[T], int]) -> None:
        self._priority_of = priority_of
        self._levels: dict[int, deque[T]] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def __iter__(self) -> Iterator[T]:
        for level in sorted(self._levels, reverse=True):
            yield from self._levels[level]

    def __contains__(self, item: object) -> bool:
        return any(item in line for line in self._levels.values())

    def counts_by_priority(self) -> dict[int, int]:
        """How many items wait at each priority level."""
        return {level: len(line) for level, line in self._levels.items()}

    def append(self, item: T) -> int:
        """Add ``item`` at the end of its level; return how many items wait now."""
        self._levels.setdefault(self._priority_of(item), deque()).append(item)
        self._size += 1
        return self._size

    def appendleft(self, item: T) -> None:
        self._levels.setdefault(self._priority_of(item), deque()).appendleft(item)
        self._size += 1

    def popleft(self) -> T:
        if not self._size:
            raise IndexError("pop from an empty WaitingLine")
        level = max(self._levels)
        line = self._levels[level]
        item = line.popleft()
        if not line:
            del self._levels[level]
        self._size -= 1
        return item

    def remove(self, item: T) -> None:
        level = self._priority_of(item)
        line = self._levels.get(level)
        if line is None:
            raise ValueError("item is not waiting")
        line.remove(item)
        if not line:
            del self._levels[level]
        self._size -= 1

    def put_back(self, items: list[T]) -> None:
        """Return items taken with ``popleft`` (in the order taken) to their places."""
        for item in reversed(items):
            self.appendleft(item)
