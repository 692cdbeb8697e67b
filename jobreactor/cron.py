"""Cron schedules: when a ``cron=`` job runs next, computed in its time zone.

The expression is read by ``cronsim`` (standard five fields, names such as ``mon-fri``);
times are computed as wall-clock times in ``timezone`` (``zoneinfo``, UTC by default) and
turned into POSIX seconds, so a daily ``0 9 * * *`` in ``Europe/Berlin`` stays at 09:00
local time across daylight-saving changes. A time that does not exist that night (02:30
when clocks jump from 02:00 to 03:00) runs at the first minute after the jump; a time that
exists twice (autumn) runs once, at its first occurrence.
"""

from __future__ import annotations

import datetime
import zoneinfo

from cronsim import CronSim, CronSimError

from jobreactor.model import Job

#: A cron run that starts more than this many seconds after its time was *missed* (no node
#: could run it then): ``missed="skip"`` leaves it out, ``missed="run_once"`` runs it once.
MISSED_AFTER = 60.0


def zone(timezone: str | None) -> zoneinfo.ZoneInfo:
    """The ``zoneinfo`` zone named ``timezone`` (UTC for None); ValueError if unknown."""
    try:
        return zoneinfo.ZoneInfo(timezone or "UTC")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {timezone!r} (an IANA name such as 'Europe/Berlin')"
        ) from None


def check_schedule(expression: str, timezone: str | None) -> None:
    """Raise ValueError naming what is wrong with a cron expression or its time zone."""
    tz = zone(timezone)
    if len(expression.split()) != 5:
        raise ValueError(
            f"{expression!r} is not a five-field cron expression (minute hour day month weekday)"
        )
    try:
        CronSim(expression, datetime.datetime.now(tz))
    except CronSimError as error:
        raise ValueError(f"{expression!r} is not a valid cron expression: {error}") from None


def next_time(expression: str, timezone: str | None, after: float) -> float:
    """POSIX seconds of the first time of ``expression`` strictly after ``after``."""
    tz = zone(timezone)
    start = datetime.datetime.fromtimestamp(after, tz)
    return next(CronSim(expression, start)).timestamp()


def next_run(job: Job, after: float) -> float:
    """When cron job ``job`` runs next, after POSIX time ``after``."""
    assert job.cron is not None
    return next_time(job.cron, job.timezone, after)


def skips_missed_run(job: Job, now: float) -> bool:
    """Whether a cron job due now should leave this run out: it is more than
    :data:`MISSED_AFTER` late and its policy is ``skip`` (the default)."""
    if job.cron is None or job.run_at is None or job.attempt > 0:
        return False  # not cron, or a retry of a failed run: retries keep their own times
    return (job.missed or "skip") == "skip" and now - job.run_at > MISSED_AFTER
