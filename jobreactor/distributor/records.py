"""The records the distributor keeps about jobs, nodes and outboxes."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from jobreactor.handle import JobHandle
from jobreactor.jsontext import lenient
from jobreactor.model import Job, Report, pack_job, unpack_job

Feedback = Callable[[dict[str, Any]], Any]

#: Seconds ``stopService`` waits for nodes to answer the jobs already sent to them.
STOP_WAIT = 5.0
#: A job due more than this many seconds ahead is sent to a node at once, to wait there.
FUTURE_MARGIN = 1.0
#: Seconds a node that refused jobs for its own trouble gets none.
REST_SECONDS = 1.0
#: After an error answer to Outcomes the reports are offered again after this many seconds,
#: doubling up to the maximum while the errors go on (protocol.md §4.6).
OUTCOME_RETRY_FIRST = 1.0
OUTCOME_RETRY_MAX = 30.0

log = Logger()

if TYPE_CHECKING:
    from jobreactor.distributor.sessions import DistributorProtocol


#: A job further than this from the head of the waiting line waits as packed text
#: (:meth:`_Entry.pack`): a third of the memory, for about 8 µs of CPU to pack and unpack
#: it. A shorter line (a burst that nodes drain in seconds, the default caps of 10,000
#: jobs a sender and 100,000 in all) costs at most some 30 MB more and no CPU.
PACK_BEYOND = 50_000


class _KeyRef(weakref.ref):  # type: ignore[type-arg]
    """A weak reference that knows its key (made by C code, unlike ``weakref.KeyedRef``)."""

    __slots__ = ("key",)
    key: str


class WeakHandles:
    """Job id to handle, held weakly: a handle nobody holds any more leaves by itself. A
    ``WeakValueDictionary`` with only what the distributor needs, at a third of its cost."""

    __slots__ = ("_gone", "_refs")

    def __init__(self) -> None:
        refs: dict[str, _KeyRef] = {}

        def gone(ref: _KeyRef) -> None:  # (in whichever thread dropped the handle)
            if refs.get(ref.key) is ref:
                refs.pop(ref.key, None)

        self._refs = refs
        self._gone = gone

    def add(self, job_id: str, handle: JobHandle) -> None:
        ref = _KeyRef(handle, self._gone)
        ref.key = job_id
        self._refs[job_id] = ref

    def pop(self, job_id: str) -> JobHandle | None:
        """The handle of ``job_id`` if someone still holds it; held weakly no more."""
        refs = self._refs
        if not refs:
            return None
        ref = refs.pop(job_id, None)
        handle: JobHandle | None = None if ref is None else ref()
        return handle

    def __len__(self) -> int:
        return len(self._refs)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._refs))


class _Rare:
    """The fields of an entry that few entries set, apart: the others do not pay for them
    (a slot is 8 bytes an entry, a million waiting jobs hold a million entries)."""

    __slots__ = ("cancel_requested", "followers", "owner", "sent_to_unknown", "seq")

    def __init__(self) -> None:
        self.cancel_requested = False
        self.followers: tuple[Any, ...] = ()
        self.owner: str | None = None
        self.sent_to_unknown = False
        self.seq = -1


@attrs.define(eq=False, weakref_slot=False)
class _Entry:
    """A job the distributor owns, with the application's feedbacks and handle.

    Deep in a long waiting line an entry keeps its job and size packed as one short text
    (:func:`~jobreactor.model.pack_job`, a third of the memory): ``job`` and ``size`` are
    then unset slots, and reading either unpacks both again (:class:`_PackedEntry`), so the
    code that uses ``entry.job`` never sees the difference.
    """

    job: Job
    #: None for a job nobody in this process holds a handle to (a remote peer's job).
    handle: JobHandle | None
    success: Feedback | None
    error: Feedback | None
    #: The node holding the job, or None while it waits here.
    node: str | None = None
    #: The last run whose feedback fired: a report for it again is a duplicate.
    last_run: int = 0
    #: Bytes of the job's JSON form, roughly: what it costs in a RunJobs box.
    size: int = 0
    #: The name of the remote peer that enqueued the job: its reports go back there.
    origin: str | None = None
    #: Every node it was sent to: only their reports and ``held`` lists count for it.
    sent_to: tuple[str, ...] = ()  # a tuple: most jobs go to one node (an empty set is 216 B)
    #: The packed job and size while it waits packed (``job`` and ``size`` are then unset).
    packed: bytes | None = None
    #: The fields few entries set (the properties below), made for the first one set.
    _rare: _Rare | None = None

    def _rare_fields(self) -> _Rare:
        rare = self._rare
        if rare is None:
            rare = self._rare = _Rare()
        return rare

    @property
    def cancel_requested(self) -> bool:
        """The application asked to cancel it while it was on a node."""
        rare = self._rare
        return rare is not None and rare.cancel_requested

    @cancel_requested.setter
    def cancel_requested(self, value: bool) -> None:
        self._rare_fields().cancel_requested = value

    @property
    def seq(self) -> int:
        """Order in which it was first owned (kept in storage; -1 until written)."""
        rare = self._rare
        return -1 if rare is None else rare.seq

    @seq.setter
    def seq(self, value: int) -> None:
        self._rare_fields().seq = value

    @property
    def followers(self) -> tuple[Any, ...]:
        """Later enqueuers of the same ``unique_key`` (see :mod:`.unique`)."""
        rare = self._rare
        return () if rare is None else rare.followers

    @followers.setter
    def followers(self, value: tuple[Any, ...]) -> None:
        self._rare_fields().followers = value

    @property
    def owner(self) -> str | None:
        """The authenticated user that enqueued it (None: this process, or no
        authentication)."""
        rare = self._rare
        return None if rare is None else rare.owner

    @owner.setter
    def owner(self, value: str | None) -> None:
        if value is not None or self._rare is not None:
            self._rare_fields().owner = value

    @property
    def sent_to_unknown(self) -> bool:
        """Reloaded by a restart, which does not know every node it was sent to: any node
        may still report it or keep it through ``held`` (rather than run it twice)."""
        rare = self._rare
        return rare is not None and rare.sent_to_unknown

    @sent_to_unknown.setter
    def sent_to_unknown(self, value: bool) -> None:
        self._rare_fields().sent_to_unknown = value

    def pack(self) -> None:
        """Keep the job as packed text while it waits here: not for a job on a node, nor
        for one with a ``run_at`` or a ``period`` (the dashboard lists those: see
        ``owned_jobs(scheduled=True)``)."""
        if self.packed is None and self.node is None:
            job = self.job
            if job.run_at is not None or job.period is not None:
                return
            packed = pack_job(job, self.size)
            if packed is not None:
                self.packed = packed
                # While packed the job's slot holds its id (the very string that keys
                # _owned: no byte more), and the size is in the text.
                object.__setattr__(self, "job", job.id)
                del self.size
                self.__class__ = _PackedEntry

    def peek(self) -> Job:
        """The job, unpacked for a look without keeping it so (a view of the whole line
        must not unpack every job for good)."""
        return self.job

    def was_sent_to(self, node: str) -> bool:
        return node == self.node or node in self.sent_to or self.sent_to_unknown


class _PackedEntry(_Entry):
    """An entry whose job waits packed (:meth:`_Entry.pack`): its ``job`` slot holds the
    job's id, its ``size`` slot nothing; reading (or setting) ``job`` or ``size`` unpacks it
    into an :class:`_Entry` again. Only packed entries pay for these properties."""

    __slots__ = ()

    def _unpack(self) -> None:
        packed = self.packed
        assert packed is not None
        job, size = unpack_job(packed, _JOB_SLOT.__get__(self, _Entry))
        self.__class__ = _Entry  # type: ignore[assignment]
        self.job, self.size, self.packed = job, size, None

    @property  # type: ignore[override]
    def job(self) -> Job:
        self._unpack()
        return self.job

    @job.setter
    def job(self, value: Job) -> None:
        self._unpack()
        self.job = value

    @property  # type: ignore[override]
    def size(self) -> int:
        self._unpack()
        return self.size

    @size.setter
    def size(self, value: int) -> None:
        self._unpack()
        self.size = value

    def peek(self) -> Job:
        assert self.packed is not None
        return unpack_job(self.packed, _JOB_SLOT.__get__(self, _Entry))[0]


#: The slot ``_Entry.job`` itself (a packed entry's ``job`` is a property over it).
_JOB_SLOT: Any = _Entry.__dict__["job"]


@attrs.frozen
class NodeInfo:
    """A connected node as the distributor sees it."""

    name: str
    slots: int
    #: Jobs sent to the node that it has not yet started waiting on or finished.
    load: int
    #: All unfinished jobs this distributor placed on the node.
    holding: int
    address: str
    #: When the node was last heard from (clock seconds), for the dashboard.
    last_heard: float | None = None


@attrs.define(eq=False)
class _NodeLink:
    name: str
    slots: int
    protocol: DistributorProtocol
    load: set[str] = attrs.Factory(set)
    #: The node said it is stopping: it gets no more jobs.
    leaving: bool = False
    #: When (in jobs routed) it was last chosen: of two equally free nodes, the one
    #: that waited longer gets the next job, so a burst alternates over equal nodes.
    last_chosen: int = 0
    #: The node refused jobs for its own trouble (storage down): rest it a moment.
    resting: bool = False
    #: The job names the node said in Hello it runs; None: it did not say (any name).
    jobs: frozenset[str] | None = None
    #: Most due jobs the node may queue beyond its slots (``node_queue_limit``; 0 once the
    #: node turned out not to know ``GiveBack``).
    queue_limit: int = 0
    #: Due jobs it may hold now beyond its slots: see :meth:`measure`.
    queue_allowance: int = 0
    #: Moving averages (seconds) of its job durations and of a ``RunJobs`` round trip.
    mean_duration: float | None = None
    round_trip: float | None = None
    #: A ``GiveBack`` is under way.
    giving_back: bool = False
    #: The last ``GiveBack`` found nothing unstarted: none again until the load changes.
    gave_nothing: bool = False

    @property
    def room(self) -> int:
        if self.leaving or self.resting:
            return 0
        return self.slots + self.queue_allowance - len(self.load)

    @property
    def idle_slots(self) -> int:
        """Slots that hold nothing sent to the node (a job sent there would start at once)."""
        if self.leaving or self.resting:
            return 0
        return self.slots - len(self.load)

    def measure(self, duration: float | None = None, round_trip: float | None = None) -> None:
        """Size the queue allowance from what the node's jobs cost against the round trip.

        To keep ``slots`` busy while a report travels back and the next job comes, a node
        needs ``slots * round_trip / duration`` jobs queued (Little's law); jobs as long as
        the round trip need none, so long jobs never wait behind one another on one node.
        """
        if duration is not None:
            self.mean_duration = (
                duration
                if self.mean_duration is None
                else 0.9 * self.mean_duration + 0.1 * duration
            )
        if round_trip is not None:
            self.round_trip = (
                round_trip if self.round_trip is None else 0.8 * self.round_trip + 0.2 * round_trip
            )
        if self.mean_duration is None or self.round_trip is None:
            return
        wanted = self.slots * self.round_trip / max(self.mean_duration, 1e-6)
        self.queue_allowance = min(self.queue_limit, int(wanted))


@attrs.define(eq=False)
class _Outbox:
    """Reports for one remote peer, sent together; kept while the peer is away."""

    reports: list[Report] = attrs.Factory(list)
    #: Jobs whose final report was sent and not yet answered: a resend of one of them
    #: (the peer's Enqueue crossed its outcome on the wire) must not run it again.
    sending: set[str] = attrs.Factory(set)
    flush_call: IDelayedCall | None = None
    expiry: IDelayedCall | None = None
    #: Outcomes are being dropped for this absent peer (warned once).
    dropping: bool = False
    #: Bytes of ``reports`` counted against ``max_outcome_bytes_kept`` (0 while connected).
    kept_bytes: int = 0
    #: Seconds before the next offer after the peer answered Outcomes with an error.
    retry_delay: float = 0.0
    #: Job id -> the user that enqueued it: only a connection of that user collects its
    #: reports (None: no authentication). Entries go once their reports were delivered.
    owners: dict[str, str | None] = attrs.Factory(dict)


def _priority(entry: _Entry) -> int:
    return entry.job.priority


def _report_size(report: Report) -> int:
    """Bytes of a report's JSON form, at most: boxes are cut by it, and the receiver closes
    a connection whose box passes ``max_box_bytes``. Texts count 6 bytes a character (the
    worst case of JSON's escapes)."""
    texts = len(report.job_id) + len(report.error or "") + len(report.error_type or "")
    return len(lenient(report.args)) + 400 + 6 * texts


def log_failure(failure: Failure, /, what: str, **fields: Any) -> None:
    """An errback that logs: the distributor never lets a failure pass silently."""
    log.failure("failure " + what, failure, **fields)


def _job_size(job: Job, args_bytes: int | None = None) -> int:
    """Bytes of a job's JSON form, at most: what it costs in memory and in a RunJobs box
    (boxes are cut by it; the node closes a connection whose box passes ``max_box_bytes``).
    Texts count 6 bytes a character, the worst case of JSON's escapes. ``args_bytes``: the
    args' JSON size where it was just measured (not encoded again)."""
    texts = [job.id, job.name, job.node or "", job.distributor or "", *job.not_node]
    texts += [job.last_error or "", job.last_error_type or ""]
    if args_bytes is None:
        args_bytes = len(lenient(job.args))
    return args_bytes + 400 + 6 * sum(map(len, texts))
