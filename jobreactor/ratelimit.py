"""Global rate limits: ``"50/s"``, ``"600/m"``, ``"1000/h"`` read into a pace, and the pacer.

A limit of N per period is kept by spacing the starts ``period / N`` apart (the generic cell
rate algorithm without a burst): never more than N in any window of that length, and jobs
that wait keep their order, because the only question is *when* the next one may go.
"""

from __future__ import annotations

import re

import attrs

PERIODS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hour": 3600.0}
_FORM = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*([a-z]+)\s*$")


@attrs.frozen
class RateLimit:
    """``count`` starts per ``period`` seconds."""

    count: float
    period: float
    text: str

    @property
    def interval(self) -> float:
        """Seconds between two starts."""
        return self.period / self.count


def parse_rate_limit(text: object) -> RateLimit:
    """Read ``"50/s"`` (or ``/m``, ``/h``); ValueError naming what is wrong."""
    match = _FORM.match(text) if isinstance(text, str) else None
    if match is None or match[2] not in PERIODS or float(match[1]) <= 0:
        raise ValueError(
            f'a rate limit is "<count>/s", "<count>/m" or "<count>/h" with a count above 0, '
            f"not {text!r}"
        )
    return RateLimit(float(match[1]), PERIODS[match[2]], match[0].strip())


@attrs.define
class Pacer:
    """When the next job of one rate-limited name may start."""

    limit: RateLimit
    #: The earliest time the next start is allowed (theoretical arrival time).
    next_at: float = float("-inf")

    def take(self, now: float) -> bool:
        """Start one now if the pace allows it (and count it)."""
        if now + 1e-9 < self.next_at:
            return False
        self.next_at = max(now, self.next_at) + self.limit.interval
        return True
