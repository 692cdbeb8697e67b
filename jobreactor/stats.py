"""What the distributor counts about its jobs, for the dashboard, ``/metrics`` and ``jr stats``.

The distributor calls four one-line hooks (:meth:`ClusterStats.enqueued`, ``sent``,
``reported``, ``finished``). Each costs a few dict and list
increments: counters by job name and status, fixed-bucket histograms and a per-second ring of
rates. Nothing is allocated per job except an entry in two small bounded tables (the last
finished and the last failed jobs) that the dashboard shows; readers (the web pages, the
Prometheus collector) aggregate when they are asked, not when a job moves.

Label cardinality is bounded by the job names the application defines: never job ids.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

from twisted.internet.interfaces import IReactorTime

from jobreactor.model import Job, Report, Status

#: Upper bounds (seconds) of the job duration histogram buckets; the last is +Inf.
DURATION_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    math.inf,
)
#: Upper bounds (seconds) of the enqueue-to-start latency histogram buckets.
LATENCY_BUCKETS = DURATION_BUCKETS

#: Seconds of per-second rates kept for the dashboard's chart.
RATE_SECONDS = 180
#: How many finished jobs (any outcome) and failed jobs the dashboard can still show.
KEEP_FINISHED = 500
KEEP_FAILED = 500

#: The ``status`` label of ``jobreactor_jobs_finished_total`` for each final status.
OUTCOME_LABELS = {
    Status.COMPLETE: "done",
    Status.FAILED: "failed",
    Status.CANCELLED: "cancelled",
}


class Histogram:
    """Counts of observations per fixed bucket, with their sum: Prometheus' histogram shape."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations at or below it)`` for each bucket."""
        total = 0
        result = []
        for bound, count in zip(self.bounds, self.counts, strict=True):
            total += count
            result.append((bound, total))
        return result

    def quantile(self, q: float) -> float | None:
        """Estimate the ``q`` quantile (0..1) by linear interpolation inside its bucket.

        As precise as the buckets are; None with no observations. An estimate that falls in
        the +Inf bucket is reported as the last finite bound.
        """
        if not self.count:
            return None
        rank = q * self.count
        seen = 0
        lower = 0.0
        for bound, count in zip(self.bounds, self.counts, strict=True):
            if count and seen + count >= rank:
                if math.isinf(bound):
                    return lower
                return lower + (bound - lower) * (rank - seen) / count
            seen += count
            if not math.isinf(bound):
                lower = bound
        return lower


class RateWindow:
    """Events per second over the last ``seconds`` seconds, in a ring of per-second counts.

    ``add`` is O(1) except when time moved on, when it clears the seconds it skipped.
    """

    def __init__(self, kinds: Sequence[str], seconds: int = RATE_SECONDS) -> None:
        self.kinds = tuple(kinds)
        self.seconds = seconds
        self._rings = [[0] * seconds for _ in self.kinds]
        self._second = 0  # the newest second counted

    def _advance(self, second: int) -> None:
        if second <= self._second:
            return
        skipped = min(second - self._second, self.seconds)
        for ring in self._rings:
            for back in range(skipped):
                ring[(second - back) % self.seconds] = 0
        self._second = second

    def add(self, kind: int, now: float) -> None:
        second = int(now)
        if second != self._second:
            self._advance(second)
            if second < self._second:  # the clock went back a little: count it as now
                second = self._second
        self._rings[kind][second % self.seconds] += 1

    def series(self, now: float) -> dict[str, Any]:
        """Per-second counts, oldest first, ending with the current (incomplete) second."""
        self._advance(int(now))
        end = self._second
        start = end - self.seconds + 1
        result: dict[str, Any] = {"end": end, "seconds": self.seconds}
        for name, ring in zip(self.kinds, self._rings, strict=True):
            result[name] = [ring[s % self.seconds] for s in range(start, end + 1)]
        return result

    def per_second(self, kind: int, now: float, window: int = 60) -> float:
        """Mean events per second over the last ``window`` complete seconds."""
        self._advance(int(now))
        ring = self._rings[kind]
        window = min(window, self.seconds - 1)
        total = sum(ring[(self._second - back) % self.seconds] for back in range(1, window + 1))
        return total / window


class FinishedJob(NamedTuple):
    """A job's last state as the distributor saw it end: what its dashboard page shows.

    A named tuple: one is made per finished job, and that is the cheapest record to make.
    """

    job: Job
    status: Status
    node: str | None
    finished_at: float
    error: str | None
    error_type: str | None
    #: Seconds its last attempt ran, as measured by the node (None if it never ran).
    duration: float | None
    #: The traceback text of its last failed attempt, if the node sent one.
    traceback: str | None = None
    #: Attempts made in its last run, as the node reported them.
    attempt: int = 0


ENQUEUED, DONE, FAILED = 0, 1, 2


class ClusterStats:
    """Counters, histograms and rates of one distributor, fed by its hooks (reactor thread)."""

    def __init__(
        self,
        clock: IReactorTime,
        *,
        keep_finished: int = KEEP_FINISHED,
        keep_failed: int = KEEP_FAILED,
    ) -> None:
        self._clock = clock
        self.keep_finished = keep_finished
        self.keep_failed = keep_failed
        self.enqueued_by_name: dict[str, int] = {}
        #: ``(name, "done"|"failed"|"cancelled") -> count``
        self.finished_by_name: dict[tuple[str, str], int] = {}
        self.retries_by_name: dict[str, int] = {}
        self.durations: dict[str, Histogram] = {}
        self.dispatch_latency = Histogram(LATENCY_BUCKETS)
        self.rates = RateWindow(("enqueued", "done", "failed"))
        self._finished: dict[str, FinishedJob] = {}
        self._failed: dict[str, FinishedJob] = {}

    # -- hooks (the distributor calls these) -------------------------------------------

    def enqueued(self, job: Job) -> None:
        """A job was accepted (from the application or a remote client)."""
        counts = self.enqueued_by_name
        counts[job.name] = counts.get(job.name, 0) + 1
        self.rates.add(ENQUEUED, self._clock.seconds())
        self._failed.pop(job.id, None)  # retried: no longer among the failed

    def sent(self, job: Job) -> None:
        """A job was sent to a node: observe its wait from enqueue (or due time) to start.

        Jobs sent early to wait for their time on the node are not counted.
        """
        now = self._clock.seconds()
        since = job.enqueued_at
        if job.run_at is not None:
            if job.run_at > now:
                return
            since = job.run_at if since is None else max(since, job.run_at)
        if since is not None:
            self.dispatch_latency.observe(max(0.0, now - since))

    def reported(self, job: Job, report: Report) -> None:
        """A node reported on a job (any report the distributor applied)."""
        if report.duration is not None:
            histogram = self.durations.get(job.name)
            if histogram is None:
                histogram = self.durations[job.name] = Histogram(DURATION_BUCKETS)
            histogram.observe(report.duration)
        if not report.final and report.status is Status.ERROR:
            self.retries_by_name[job.name] = self.retries_by_name.get(job.name, 0) + 1

    def finished(self, job: Job, report: Report | None, node: str | None) -> None:
        """A job reached its outcome; ``report`` is None when it ended here (cancelled)."""
        status = report.status if report is not None else Status.CANCELLED
        if status not in OUTCOME_LABELS:
            status = Status.FAILED if report and report.feedback == "error" else Status.COMPLETE
        label = OUTCOME_LABELS[status]
        key = (job.name, label)
        self.finished_by_name[key] = self.finished_by_name.get(key, 0) + 1
        now = self._clock.seconds()
        if status is Status.COMPLETE:
            self.rates.add(DONE, now)
        elif status is Status.FAILED:
            self.rates.add(FAILED, now)
        record = FinishedJob(
            job=job,
            status=status,
            node=node,
            finished_at=now,
            error=report.error if report is not None else None,
            error_type=report.error_type if report is not None else None,
            duration=report.duration if report is not None else None,
            traceback=report.traceback if report is not None else None,
            attempt=report.attempt if report is not None else job.attempt,
        )
        _keep(self._finished, job.id, record, self.keep_finished)
        if status is Status.FAILED:
            _keep(self._failed, job.id, record, self.keep_failed)

    # -- readers ------------------------------------------------------------------------

    def finished_job(self, job_id: str) -> FinishedJob | None:
        """The recorded end of a recently finished job (the last ``keep_finished``)."""
        return self._failed.get(job_id) or self._finished.get(job_id)

    def recent_finished(self, count: int) -> list[FinishedJob]:
        """The last ``count`` jobs that finished, newest first."""
        records = []
        for record in reversed(self._finished.values()):
            records.append(record)
            if len(records) >= count:
                break
        return records

    def failed_jobs(self) -> Iterator[FinishedJob]:
        """The last ``keep_failed`` failed jobs not retried since, newest first."""
        return reversed(list(self._failed.values()))

    def totals(self) -> dict[str, int]:
        """Jobs enqueued, done, failed and cancelled, and retries, over all names."""
        result = {"enqueued": sum(self.enqueued_by_name.values())}
        for label in OUTCOME_LABELS.values():
            result[label] = sum(n for (_, lab), n in self.finished_by_name.items() if lab == label)
        result["retries"] = sum(self.retries_by_name.values())
        return result

    def by_name(self) -> list[dict[str, Any]]:
        """One row per job name: counts, failure rate, duration percentiles (seconds)."""
        names = set(self.enqueued_by_name) | {name for name, _ in self.finished_by_name}
        rows = []
        for name in sorted(names):
            done = self.finished_by_name.get((name, "done"), 0)
            failed = self.finished_by_name.get((name, "failed"), 0)
            histogram = self.durations.get(name)
            rows.append(
                {
                    "name": name,
                    "enqueued": self.enqueued_by_name.get(name, 0),
                    "done": done,
                    "failed": failed,
                    "cancelled": self.finished_by_name.get((name, "cancelled"), 0),
                    "retries": self.retries_by_name.get(name, 0),
                    "failure_rate": failed / (done + failed) if done + failed else None,
                    "duration_p50": histogram.quantile(0.5) if histogram else None,
                    "duration_p90": histogram.quantile(0.9) if histogram else None,
                    "duration_p99": histogram.quantile(0.99) if histogram else None,
                }
            )
        return rows


def _keep(table: dict[str, FinishedJob], key: str, record: FinishedJob, limit: int) -> None:
    table.pop(key, None)  # a re-run job moves to the newest place
    table[key] = record
    if len(table) > limit:
        del table[next(iter(table))]
