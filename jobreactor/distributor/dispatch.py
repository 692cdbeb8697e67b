# mypy: disable-error-code="misc"
# (mixin methods take ``self: Distributor``, a subclass of their own class, on purpose)
"""Dispatch: the waiting lines and routing each job to a node with room.

Jobs wait in one priority-then-FIFO line until a connected node that the job allows has
room; a pass over the line runs once per reactor turn, however many events asked for it,
so nothing spins while waiting. Jobs due later wait apart and go to a node early.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet import error as internet_error
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from jobreactor.answers import read_run_jobs_answer
from jobreactor.distributor.records import (
    FUTURE_MARGIN,
    PACK_BEYOND,
    REST_SECONDS,
    _Entry,
    _NodeLink,
    log,
)
from jobreactor.errors import JobCancelled
from jobreactor.limits import printable
from jobreactor.model import Job
from jobreactor.outcomes import refusal_report
from jobreactor.protocol import (
    GiveBack,
    NotEncodable,
    RunJobs,
    in_boxes,
)
from jobreactor.waiting import WaitingLine

if TYPE_CHECKING:
    from jobreactor.distributor.service import Distributor


class Dispatch:
    """Routing (mixed into :class:`Distributor`)."""

    _dispatch_call: IDelayedCall | None

    def _queue_for(self: Distributor, entry: _Entry) -> WaitingLine[_Entry]:
        """Jobs due later wait apart: they take no slot, so no slot should hold them up."""
        run_at = entry.job.run_at
        if run_at is not None and run_at > self._clock.seconds() + FUTURE_MARGIN:
            return self._future
        return self._waiting

    def _line_up(self: Distributor, entry: _Entry) -> None:
        """Put a job at the end of its line; far from the head it waits packed (a third of
        the memory; it is unpacked when it leaves the line, or when anything reads it)."""
        if self._queue_for(entry).append(entry) > PACK_BEYOND:
            entry.pack()

    def _pack_deep(self: Distributor) -> None:
        """Pack the jobs far from the head of the lines (once, after a restart reloaded
        them: reloading reads every job)."""
        for line in (self._waiting, self._future):
            for entry in islice(line, PACK_BEYOND, None):
                entry.pack()

    def _schedule_dispatch(self: Distributor) -> None:
        if self._dispatch_call is None and self.running:
            self._dispatch_call = self._clock.callLater(0, self._dispatch)

    def _dispatch(self: Distributor) -> None:
        self._dispatch_call = None
        batches: dict[str, list[_Entry]] = {}
        if self._future:
            # Any node that takes jobs will park these until their time.
            open_links = {
                name: link.room
                for name, link in self._links.items()
                if link.slots > 0 and not (link.leaving or link.resting)
            }
            waiting_longer: list[_Entry] = []
            due_by = self._clock.seconds() + FUTURE_MARGIN
            while self._future and open_links:
                entry = self._future.popleft()
                if entry.job.run_at is None or entry.job.run_at <= due_by:
                    self._waiting.append(entry)  # its time came while it waited: needs a slot
                    continue
                target = self._choose(entry.job, open_links)
                if target is None or self._pacer(entry.job.name) is not None:
                    if target is not None:  # rate limited: it is sent when it is due
                        self._wake_at(entry.job.run_at - FUTURE_MARGIN)
                    waiting_longer.append(entry)
                    continue
                batches.setdefault(target, []).append(entry)
                open_links[target] -= 1  # spread them out
            self._future.put_back(waiting_longer)
        rooms = {name: link.room for name, link in self._links.items() if link.room > 0}
        skipped: list[_Entry] = []
        if self._held:
            self._dispatch_paced(rooms, batches)
        while self._waiting and rooms:
            entry = self._waiting.popleft()
            if self._paced(entry):
                continue
            target = self._choose(entry.job, rooms)
            if target is None:
                self._unpace(entry)
                if not self._routable(entry):
                    self._no_node_runs(entry)
                skipped.append(entry)
                continue
            batches.setdefault(target, []).append(entry)
            rooms[target] -= 1
            if rooms[target] == 0:
                del rooms[target]
        self._waiting.put_back(skipped)
        for name, entries in batches.items():
            self._send(self._links[name], entries)
        self._take_back_queued()

    def _take_back_queued(self: Distributor) -> None:
        """A node with an idle slot while another holds due jobs queued: move them over.

        Nothing left in the waiting line fits the idle node (it would have been sent there),
        so the jobs queued on busy nodes beyond their slots are the only ones that could use
        the slot; a long job must not wait behind another while a slot elsewhere is free.
        """
        idle = [link for link in self._links.values() if link.slots > 0 and link.idle_slots > 0]
        if not idle:
            return
        free = sum(link.idle_slots for link in idle)
        for link in self._links.values():
            excess = len(link.load) - link.slots
            if excess <= 0 or link.giving_back or link.gave_nothing or link in idle:
                continue
            candidates = []
            for job_id in link.load:
                entry = self._owned.get(job_id)
                if (
                    entry is not None
                    and entry.node == link.name
                    and any(self._may_run(entry.job, other.name) for other in idle)
                ):
                    candidates.append(job_id)
            if not candidates:
                continue
            link.giving_back = True
            asked = self._call(link, GiveBack, job_ids=candidates, count=min(excess, free))
            asked.addCallbacks(
                self._given_back, self._give_back_failed, callbackArgs=(link,), errbackArgs=(link,)
            )
            asked.addErrback(self._log_failure, "handling the answer to GiveBack")

    def _fits(self: Distributor, job: Job, node: str) -> bool:
        """``node`` is not excluded by ``not_node`` and runs jobs of this name."""
        return job.allows(node) and self._runs(node, job.name)

    def _may_run(self: Distributor, job: Job, node: str) -> bool:
        """:meth:`_fits`, and the job names no other node it must run on."""
        if job.node is not None and job.node != node and self.config.always_use_specified_node:
            return False
        return self._fits(job, node)

    def _given_back(self: Distributor, answer: dict[str, Any], link: _NodeLink) -> None:
        # The jobs come back as handed_back reports (after this answer, on the same
        # connection): they are requeued there, once, like those of a stopping node.
        link.giving_back = False
        given = answer.get("given_back")
        # Found nothing unstarted (its excess is reports on their way): wait for a report.
        link.gave_nothing = not given

    def _give_back_failed(self: Distributor, failure: Failure, link: _NodeLink) -> None:
        link.giving_back = False
        if failure.check(internet_error.ConnectionClosed, defer.CancelledError):
            return
        # A node that does not know GiveBack: it gets no jobs beyond its slots from now on.
        log.info(
            "node {node} cannot give back queued jobs ({error}): it gets no more jobs than slots",
            node=link.name,
            error=printable(failure.getErrorMessage(), 200),
        )
        link.queue_limit = link.queue_allowance = 0

    def _choose(self: Distributor, job: Job, rooms: dict[str, int]) -> str | None:
        if job.node is not None:
            if job.node in rooms and self._fits(job, job.node):
                return job.node
            if self.config.always_use_specified_node:
                return None
        # The node with the most idle slots first (a job there starts at once), then the
        # one with the most room (queued jobs spread evenly over busy nodes), then the one
        # that waited longest for a job (equal nodes take turns, however fast they report).
        best = None
        best_key = (0, 0, 0)
        links = self._links
        for name, room in rooms.items():
            if self._fits(job, name):
                link = links[name]
                key = (room - link.queue_allowance, room, -link.last_chosen)
                if best is None or key > best_key:
                    best, best_key = name, key
        if best is not None:
            self._routed += 1
            links[best].last_chosen = self._routed
        return best

    def _send(self: Distributor, link: _NodeLink, entries: list[_Entry]) -> None:
        later = self._clock.seconds() + FUTURE_MARGIN
        for entry in entries:
            entry.node = link.name
            self._keep_node(entry)
            self.stats.sent(entry.job)
            if link.name not in entry.sent_to:
                entry.sent_to += (link.name,)
            if entry.job.run_at is None or entry.job.run_at <= later:
                link.load.add(entry.job.id)  # it will take one of the node's slots
        link.gave_nothing = False  # its load changed: a GiveBack may find jobs again
        for batch in in_boxes(entries, lambda entry: entry.size, link.protocol.limits):
            sent = self._call(link, RunJobs, jobs=[entry.job.to_wire() for entry in batch])
            sent.addCallback(self._timed, link, self._clock.seconds())
            self._in_flight.add(sent)
            sent.addBoth(self._landed, sent)
            sent.addCallbacks(
                self._sent, self._send_failed, callbackArgs=(link, batch), errbackArgs=(link, batch)
            )
            sent.addErrback(self._log_failure, "handling the answer to RunJobs")

    def _call(self: Distributor, link: _NodeLink, command: Any, **arguments: Any) -> Deferred[Any]:
        try:
            result: Deferred[Any] = link.protocol.callRemote(command, **arguments)
        except Exception as error:  # AMP raises TooLong and friends synchronously
            return fail(NotEncodable(printable(error, 300)))
        return result

    def _timed(self: Distributor, answer: Any, link: _NodeLink, since: float) -> Any:
        link.measure(round_trip=self._clock.seconds() - since)
        return answer

    def _landed(self: Distributor, result: Any, sent: Deferred[Any]) -> Any:
        self._in_flight.discard(sent)
        return result

    def _rest(self: Distributor, link: _NodeLink) -> None:
        if link.resting:
            return
        link.resting = True

        def wake() -> None:
            link.resting = False
            self._schedule_dispatch()

        self._clock.callLater(REST_SECONDS, wake)

    def _sent(
        self: Distributor, answer: dict[str, Any], link: _NodeLink, batch: list[_Entry]
    ) -> None:
        verdict = read_run_jobs_answer([entry.job.id for entry in batch], answer)
        for job_id in verdict.parked:
            link.load.discard(job_id)
        # A job the answer does not account for is not on the node: back to the queue (§4.2).
        unaccounted = [(job_id, "left out of its answer") for job_id in verdict.unaccounted]
        retry_elsewhere: list[_Entry] = []
        for job_id, error in [*verdict.retry, *unaccounted]:
            entry = self._owned.get(job_id)
            if entry is None:
                continue
            link.load.discard(job_id)
            if entry.node == link.name:
                log.warn(
                    "node {node} could not take job {job_id}: {error}",
                    node=link.name,
                    job_id=job_id,
                    error=error,
                )
                retry_elsewhere.append(entry)
        for job_id, error in verdict.failed:
            entry = self._owned.get(job_id)
            if entry is None:
                continue
            link.load.discard(job_id)
            self._finish_with_report(entry, refusal_report(entry.job, error, "RejectedByNode"))
        if retry_elsewhere:
            self._rest(link)
            self._requeue(retry_elsewhere)
        self._schedule_dispatch()

    def _send_failed(
        self: Distributor, failure: Failure, link: _NodeLink, batch: list[_Entry]
    ) -> None:
        if failure.check(internet_error.ConnectionClosed, defer.CancelledError):
            return  # _node_lost (or a stopping distributor) decides what becomes of them
        if failure.check(NotEncodable) and len(batch) > 1:
            # One job that cannot be sent must fail only itself: send them one by one.
            for entry in batch:
                self._send(link, [entry])
            return
        log.warn(
            "node {node} could not take {count} jobs: {error}",
            node=link.name,
            count=len(batch),
            error=printable(failure.getErrorMessage(), 300),
        )
        for entry in batch:
            link.load.discard(entry.job.id)
            message = (
                f"{failure.type.__name__ if failure.type else 'Error'}: {failure.getErrorMessage()}"
            )
            self._finish_with_report(entry, refusal_report(entry.job, message, "DispatchFailed"))

    def _requeue(self: Distributor, entries: Iterable[_Entry]) -> None:
        """Put jobs back at the head of the queue, in the order they were enqueued."""
        entries = list(entries)
        for entry in reversed(entries):
            if entry.node is not None:
                entry.node = None
                self._keep_node(entry)
            if entry.cancel_requested:  # it was to stop anyway: do not send it anywhere
                self._finish(entry, None, Failure(JobCancelled(entry.job.id, entry.job.name)))
                continue
            self._queue_for(entry).appendleft(entry)
        if entries:
            self._schedule_dispatch()

    def _unqueue(self: Distributor, entry: _Entry) -> None:
        # One scan of the entry's priority level per line (a membership test first scanned
        # every level of the line, then the level again).
        for queue in (self._waiting, self._future, *self._held.values()):
            try:
                queue.remove(entry)
            except ValueError:
                continue
            return
