# mypy: disable-error-code="misc"
# (mixin methods take ``self: Distributor``, a subclass of their own class, on purpose)
"""Unique jobs: one job per ``unique_key`` while it is owned, and ``unique_for`` s after.

The distributor sees every job, so it is the one place where "is a job with this key
already here?" has an exact answer. A second enqueue with the key gets the existing job:
in this process its very handle (and its feedbacks fire for the second caller too); for
a remote client the ``Enqueue`` answer maps the sent id to the existing one in ``merged``,
and the job's reports go to that client as well (a *follower*).

With storage the keys survive a restart: owned jobs carry their key in their record (and
their followers), and ``unique_for`` windows are rebuilt from the newest stored outcomes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from jobreactor.distributor.records import Feedback, _Entry, log
from jobreactor.handle import JobHandle
from jobreactor.model import Job, Report
from jobreactor.outcomes import final_outcome, fire_feedback

if TYPE_CHECKING:
    from jobreactor.distributor.service import Distributor

#: Newest stored outcomes scanned at start for ``unique_for`` windows still open.
UNIQUE_RELOAD_LIMIT = 100_000
#: Ended keys are swept of expired windows once per this many endings.
SWEEP_EVERY = 1000


@attrs.define(eq=False)
class Follower:
    """A second enqueuer of a unique job: a remote peer (``origin``) or local feedbacks."""

    origin: str | None
    success: Feedback | None = None
    error: Feedback | None = None


@attrs.frozen
class EndedKey:
    """A unique job that ended: its key stays taken until ``until`` (POSIX seconds)."""

    job: Job
    report: Report
    until: float


class UniqueJobs:
    """Unique keys (mixed into :class:`Distributor`)."""

    _unique_owned: dict[str, str]
    _unique_ended: dict[str, EndedKey]
    _unique_sweep: int

    def _unique_twin(
        self: Distributor,
        job: Job,
        success: Feedback | None,
        error: Feedback | None,
        origin: str | None,
    ) -> JobHandle | None:
        """The handle of the job that already holds ``job``'s key, or None (a new job)."""
        key = job.unique_key
        if key is None:
            return None
        holder = self._owned.get(self._unique_owned.get(key, ""))
        if holder is not None and holder.job.id != job.id:
            if origin is None or origin != holder.origin:
                holder.followers += (Follower(origin, success, error),)
                self._keep_job(holder)
            log.info(
                "job {job_id} ({name}) has unique key {key}: it is job {existing}",
                job_id=job.id,
                name=job.name,
                key=key,
                existing=holder.job.id,
            )
            return self._handle_of(holder)
        ended = self._unique_ended.get(key)
        if ended is None or ended.job.id == job.id:
            return None
        if ended.until <= self._clock.seconds():
            del self._unique_ended[key]
            return None
        handle = self.new_handle(ended.job)
        self._tell_follower(Follower(origin, success, error), ended.job, ended.report)
        handle._settle(final_outcome(ended.job, ended.report))
        return handle

    def _unique_claim(self: Distributor, entry: _Entry) -> None:
        """``entry``'s job is now owned here: its key is taken."""
        if entry.job.unique_key is not None:
            self._unique_owned[entry.job.unique_key] = entry.job.id
            self._unique_ended.pop(entry.job.unique_key, None)

    def _unique_release(self: Distributor, entry: _Entry, report: Report) -> None:
        """``entry``'s job ended: its key is free, or taken for ``unique_for`` more seconds."""
        key = entry.job.unique_key
        if key is None:
            return
        if self._unique_owned.get(key) == entry.job.id:
            del self._unique_owned[key]
        if entry.job.unique_for is not None:
            until = self._clock.seconds() + entry.job.unique_for
            self._unique_ended[key] = EndedKey(entry.job, report, until)
            self._unique_sweep += 1
            if self._unique_sweep >= SWEEP_EVERY:
                self._unique_sweep = 0
                now = self._clock.seconds()
                for old in [k for k, e in self._unique_ended.items() if e.until <= now]:
                    del self._unique_ended[old]

    def _fire_followers(self: Distributor, entry: _Entry, report: Report) -> None:
        for follower in entry.followers:
            self._tell_follower(follower, entry.job, report)

    def _tell_follower(self: Distributor, follower: Follower, job: Job, report: Report) -> None:
        if follower.origin is None:
            fire_feedback(job, report, follower.success, follower.error)
            return
        # After the Enqueue answer that names the job (it waits for the same writes).
        origin = follower.origin
        self._ledger.written().addCallback(lambda _: self._forward(origin, report))

    def _follows(self: Distributor, entry: _Entry, peer: str) -> bool:
        """Whether remote ``peer`` enqueued ``entry``'s job as a duplicate of its key."""
        return any(follower.origin == peer for follower in entry.followers)

    def _resent_after_end(self: Distributor, peer: str, job: Job) -> bool:
        """A peer sent again a unique job that ended (it reconnected before its outcome
        came): send it the outcome rather than run the job again."""
        ended = self._unique_ended.get(job.unique_key or "")
        if ended is None or ended.job.id != job.id:
            return False
        self._tell_follower(Follower(peer), ended.job, ended.report)
        return True

    async def _reload_unique(self: Distributor) -> None:
        """Take the keys of the reloaded jobs, and the ``unique_for`` windows still open."""
        for entry in self._owned.values():
            self._unique_claim(entry)
        now = self._clock.seconds()
        from jobreactor.distributor.keeping import _outcome_report

        for outcome in await self.storage.outcomes("all", UNIQUE_RELOAD_LIMIT):
            key, seconds = outcome.job.get("unique_key"), outcome.job.get("unique_for")
            if key is None or seconds is None or key in self._unique_owned:
                continue
            until = outcome.finished_at + float(seconds)
            known = self._unique_ended.get(key)
            if until > now and (known is None or known.until < until):
                job = Job.from_wire(outcome.job)
                self._unique_ended[key] = EndedKey(job, _outcome_report(outcome), until)


def follower_records(entry: _Entry) -> list[str]:
    """The remote followers of a job, as kept in its stored record."""
    return [f.origin for f in entry.followers if f.origin is not None]


def restore_followers(entry: _Entry, record: dict[str, Any]) -> None:
    entry.followers = tuple(Follower(str(origin)) for origin in record.get("followers") or [])
