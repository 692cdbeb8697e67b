# mypy: disable-error-code="misc"
# (mixin methods take ``self: Distributor``, a subclass of their own class, on purpose)
"""Routing by job name, and global rate limits at dispatch.

A node says in ``Hello`` which job names it runs (``jobs``, with their ``rate_limit``); the
distributor then sends a job only to a node that runs its name. A job whose name no
connected node runs waits; once it has waited ``no_node_timeout`` seconds it fails with
``error_type`` ``NoSuchJob`` (at once with the default ``no_node_timeout`` of 0, as when a
node refused it). (A node that does not say, from before this, is taken to
run every name, as before.)

A rate limit (a node's ``@job(rate_limit=)`` or the distributor's ``rate_limits`` setting,
which wins) is enforced where jobs are dispatched, across all nodes together: jobs of that
name leave the waiting line no faster than the limit, in their order, and the rest wait.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IDelayedCall

from jobreactor.distributor.records import _Entry, _NodeLink, _priority, log
from jobreactor.outcomes import refusal_report
from jobreactor.protocol import BadMessage
from jobreactor.ratelimit import Pacer, RateLimit, parse_rate_limit
from jobreactor.waiting import WaitingLine

if TYPE_CHECKING:
    from jobreactor.distributor.service import Distributor

#: The ``error_type`` of a job no connected node could run for ``no_node_timeout`` seconds
#: (the same as a node's for a name it does not define).
NO_NODE_FOR_JOB = "NoSuchJob"


def read_hello_jobs(jobs: Any) -> dict[str, RateLimit | None] | None:
    """The ``jobs`` of a ``Hello``: name to rate limit (None: no limit); None if not given."""
    if jobs is None:
        return None
    if not isinstance(jobs, dict) or not all(isinstance(n, str) and n for n in jobs):
        raise BadMessage("jobs must be an object of job name to {rate_limit}")
    names: dict[str, RateLimit | None] = {}
    for name, about in jobs.items():
        limit = about.get("rate_limit") if isinstance(about, dict) else None
        try:
            names[name] = parse_rate_limit(limit) if limit is not None else None
        except ValueError as error:
            raise BadMessage(f"job {name!r}: {error}") from None
    return names


class Routing:
    """Names and rate limits (mixed into :class:`Distributor`)."""

    _pacers: dict[str, Pacer]
    _held: dict[str, WaitingLine[_Entry]]
    _unroutable: dict[str, float]
    _pace_call: IDelayedCall | None

    def _node_jobs(self: Distributor, link: _NodeLink, jobs: dict[str, RateLimit | None]) -> None:
        """Take a node's ``Hello`` list of jobs: where to route, and their rate limits."""
        link.jobs = frozenset(jobs)
        for name, limit in jobs.items():
            if limit is not None and name not in self.config.rate_limits:
                self._set_pace(name, limit)

    def _set_pace(self: Distributor, name: str, limit: RateLimit) -> None:
        pacer = self._pacers.get(name)
        if pacer is None:
            self._pacers[name] = Pacer(limit)
        elif pacer.limit != limit and limit.interval > pacer.limit.interval:
            log.info(
                "rate limit of {name}: {limit} (was {old})",
                name=name,
                limit=limit.text,
                old=pacer.limit.text,
            )
            pacer.limit = limit  # nodes disagree: the strictest holds

    def _pacer(self: Distributor, name: str) -> Pacer | None:
        pacer = self._pacers.get(name)
        configured = self.config.rate_limits.get(name)
        if configured is not None and (pacer is None or pacer.limit.text != configured):
            pacer = self._pacers[name] = Pacer(parse_rate_limit(configured))
        return pacer

    def _runs(self: Distributor, name: str, job_name: str) -> bool:
        """Whether node ``name`` runs jobs called ``job_name`` (as far as it said)."""
        jobs = self._links[name].jobs
        return jobs is None or job_name in jobs

    def _paced(self: Distributor, entry: _Entry) -> bool:
        """Whether ``entry`` must wait for its rate limit: then it waits in its name's own
        line (so a pass over the waiting line touches it once, not at every pass), behind
        the others of its name. If it may go, its start is counted."""
        name = entry.job.name
        line = self._held.get(name)
        if line is not None:
            line.append(entry)
            return True
        pacer = self._pacer(name)
        if pacer is None or pacer.take(self._clock.seconds()):
            return False
        self._held[name] = line = WaitingLine(_priority)
        line.append(entry)
        self._wake_at(pacer.next_at)
        return True

    def _dispatch_paced(
        self: Distributor, rooms: dict[str, int], batches: dict[str, list[_Entry]]
    ) -> None:
        """Send the rate-limited jobs whose turn came, oldest first, before the others."""
        now = self._clock.seconds()
        for name, line in list(self._held.items()):
            pacer = self._pacer(name)
            if pacer is None:  # the limit was lifted
                del self._held[name]
                self._waiting.put_back(list(line))
                continue
            stuck = False
            while line and rooms and pacer.take(now):
                entry = line.popleft()
                target = self._choose(entry.job, rooms)
                if target is None:
                    # No node with room takes it: the next node event wakes it, not a timer.
                    stuck = True
                    pacer.next_at -= pacer.limit.interval
                    line.appendleft(entry)
                    if not self._routable(entry):  # its nodes left while it waited
                        for waiting in line:
                            self._no_node_runs(waiting)
                    break
                batches.setdefault(target, []).append(entry)
                rooms[target] -= 1
                if rooms[target] == 0:
                    del rooms[target]
            if not line:
                del self._held[name]
            elif rooms and not stuck:
                self._wake_at(pacer.next_at)

    @property
    def paced(self: Distributor) -> int:
        """Jobs waiting here for their rate limit."""
        return sum(len(line) for line in self._held.values())

    def _unpace(self: Distributor, entry: _Entry) -> None:
        """An entry counted by :meth:`_paced` found no node: give its turn back."""
        pacer = self._pacers.get(entry.job.name)
        if pacer is not None:
            pacer.next_at -= pacer.limit.interval

    def _wake_at(self: Distributor, when: float) -> None:
        delay = max(0.0, when - self._clock.seconds())
        call = self._pace_call
        if call is not None and call.active() and call.getTime() <= when:
            return
        if call is not None and call.active():
            call.cancel()
        self._pace_call = self._clock.callLater(delay, self._paced_wake)

    def _paced_wake(self: Distributor) -> None:
        self._pace_call = None
        self._schedule_dispatch()

    def _no_node_runs(self: Distributor, entry: _Entry) -> None:
        """No connected node runs ``entry``'s name: it waits, and fails after the timeout."""
        timeout = self.config.no_node_timeout
        first_seen = entry.job.id not in self._unroutable
        since = self._unroutable.setdefault(entry.job.id, self._clock.seconds())
        if self._clock.seconds() - since >= timeout:
            del self._unroutable[entry.job.id]
            has = "; ".join(
                f"{link.name} has: {', '.join(sorted(link.jobs)) or '(none)'}"
                for link in self._links.values()
                if link.slots > 0 and link.jobs is not None
            )
            waited = f" after {timeout:g} s (no_node_timeout)" if timeout else ""
            message = (
                f"no job named {entry.job.name!r} is defined on any connected node{waited} ({has})"
            )
            log.warn("job {job_id} failed: {message}", job_id=entry.job.id, message=message)
            self._clock.callLater(0, self._fail_unroutable, entry, message)
        elif first_seen:
            self._clock.callLater(timeout, self._schedule_dispatch)

    def _fail_unroutable(self: Distributor, entry: _Entry, message: str) -> None:
        if self._owned.get(entry.job.id) is entry and entry.node is None:
            self._unqueue(entry)
            self._finish_with_report(entry, refusal_report(entry.job, message, NO_NODE_FOR_JOB))

    def _routable(self: Distributor, entry: _Entry) -> bool:
        """Whether some connected node runs ``entry``'s name (or did not say what it runs)."""
        self_said = [link for link in self._links.values() if link.slots > 0]
        if any(link.jobs is None or entry.job.name in link.jobs for link in self_said):
            self._unroutable.pop(entry.job.id, None)
            return True
        return not self_said  # nobody connected: jobs wait for nodes, as ever
