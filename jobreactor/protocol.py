"""The AMP commands between nodes, distributors and clients; ``docs/protocol.md`` describes them.

Every value that is not a plain name or number travels as JSON text (never pickle). AMP caps
one value at 65,535 bytes, so :class:`JSON` splits a long text across the keys ``name``,
``name.2``, ``name.3``, ... and joins them on the other side; a message carries lists of jobs
or reports, so a busy distributor sends many jobs in one box.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from twisted.application.internet import backoffPolicy
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from jobreactor.errors import JobReactorError
from jobreactor.jsontext import compact
from jobreactor.limits import DEFAULT_LIMITS, Limits, TooManyItems, loads_bounded, printable

_log = Logger()

#: Bumped when a change would confuse a peer of the previous version (2: ``Challenge`` and
#: credentials in ``Hello``).
PROTOCOL_VERSION = 2

#: AMP's limit for one value, in bytes.
AMP_VALUE_LIMIT = 0xFFFF
#: Most keys one JSON value may span: 16 MiB, above the largest ``max_args_bytes`` (8 MiB).
MAX_JSON_CHUNKS = 256

#: Refused commands of one connection logged in full; after that, one in this many.
REFUSALS_LOGGED = 20
REFUSALS_LOGGED_EVERY = 100

T = TypeVar("T")


def in_boxes(
    items: Sequence[T], size_of: Callable[[T], int], limits: Limits = DEFAULT_LIMITS
) -> list[list[T]]:
    """Cut ``items`` into consecutive batches within the box budget (at least one item each)."""
    batches: list[list[T]] = []
    batch: list[T] = []
    used = 0
    budget = limits.bytes_per_box
    most = limits.items_per_box
    for item in items:
        size = size_of(item)
        if batch and (used + size > budget or len(batch) >= most):
            batches.append(batch)
            batch, used = [], 0
        batch.append(item)
        used += size
    if batch:
        batches.append(batch)
    return batches


class ProtocolError(JobReactorError):
    """The peer sent something this side cannot accept; the description says what."""


class HelloFirst(ProtocolError):
    """A command came before ``Hello``: a connection must say who it is first."""


class DuplicateNodeName(ProtocolError):
    """A node with this name is already connected to the distributor."""


class UnsupportedVersion(ProtocolError):
    """The peer speaks a protocol version this side does not."""


class QueueFull(ProtocolError):
    """The distributor holds as many of this sender's (or everyone's) waiting jobs as its
    caps allow: hold further jobs and send them again later."""


class Unauthorized(ProtocolError):
    """The credentials were wrong or missing, or they do not allow this name, role or command."""


class AuthNotEnabled(ProtocolError):
    """``Challenge`` sent to a distributor that asks for no credentials."""


class BadMessage(ProtocolError):
    """A value in the command is malformed (not the JSON shape the command documents)."""


class NotEncodable(ProtocolError):
    """A command this side was about to send could not be encoded (too large for AMP, or a
    value JSON cannot carry); nothing was sent."""


class Encoded(str):
    """JSON text already written as ``compact`` writes it: ``JSON`` sends it as it is, so a
    sender that keeps its items encoded (the client's held jobs) does not encode them again.
    The receiver reads the same bytes as for the value itself."""

    __slots__ = ()


class JSON(amp.Argument):
    """A JSON value, split across several keys when its text is above AMP's value limit.

    The value may be :class:`Encoded` text instead (sent unchanged). A top-level list holds
    at most ``max_items_per_command`` items, unless ``many``: a list of job ids that is as
    long as what a node holds (``Hello``'s ``held``, thousands of parked jobs, say), bounded
    by the box size instead.
    """

    def __init__(self, optional: bool = False, *, many: bool = False) -> None:
        super().__init__(optional)
        self.many = many

    def toBox(
        self, name: bytes, strings: dict[bytes, bytes], objects: dict[str, Any], proto: Any
    ) -> None:
        value = self.retrieve(objects, name.decode("ascii"), proto)
        if self.optional and value is None:
            return
        try:
            data = (value if type(value) is Encoded else compact(value)).encode("utf-8")
        except (TypeError, ValueError, RecursionError) as error:
            raise BadMessage(f"argument {name.decode()!r} is not JSON: {error}") from None
        chunks = [data[i : i + AMP_VALUE_LIMIT] for i in range(0, len(data), AMP_VALUE_LIMIT)]
        if len(chunks) > MAX_JSON_CHUNKS:
            raise BadMessage(
                f"{name.decode()} is {len(data)} bytes as JSON, above the 16 MiB limit"
            )
        strings[name] = chunks[0]
        for index, chunk in enumerate(chunks[1:], start=2):
            strings[name + b"." + str(index).encode("ascii")] = chunk

    def fromBox(
        self, name: bytes, strings: dict[bytes, bytes], objects: dict[str, Any], proto: Any
    ) -> None:
        key = name.decode("ascii")
        first = strings.pop(name, None)
        if first is None:
            _refuse_stray_pieces(key, strings, found=0)
            if not self.optional:
                raise BadMessage(f"argument {key!r} is missing")
            objects[key] = None
            return
        parts = [first]
        index = 2
        while (part := strings.pop(name + b"." + str(index).encode("ascii"), None)) is not None:
            parts.append(part)
            index += 1
            if index > MAX_JSON_CHUNKS + 1:
                raise BadMessage(f"argument {key!r} spans more than {MAX_JSON_CHUNKS} keys")
        _refuse_stray_pieces(key, strings, found=index - 1)
        limits = getattr(proto, "limits", DEFAULT_LIMITS)
        try:
            # A guard against deep recursion, loose enough that a job nested a little too
            # deep is refused on its own (exactly, by the model) rather than its whole box.
            max_items = sys.maxsize if self.many else limits.max_items
            value = loads_bounded(b"".join(parts), 2 * limits.max_depth + 4, max_items)
        except TooManyItems:
            raise BadMessage(
                f"argument {key!r} has more than {limits.max_items} items "
                "(JR.config.max_items_per_command)"
            ) from None
        except (ValueError, RecursionError) as error:
            raise BadMessage(f"argument {key!r} is not valid JSON: {error}") from None
        objects[key] = value


def _refuse_stray_pieces(key: str, strings: dict[bytes, bytes], found: int) -> None:
    """Refuse a piece ``key.N`` left over after joining the consecutive ones.

    Joining stops at the first missing piece, so ``jobs.3`` without ``jobs.2`` would silently
    cut the value short (docs/protocol.md §2.5).
    """
    prefix = key.encode("ascii") + b"."
    for stray in strings:
        if stray.startswith(prefix) and stray[len(prefix) :].isdigit():
            missing = key if found == 0 else f"{key}.{found + 1}"
            raise BadMessage(
                f"argument {key!r} has the piece {stray.decode('ascii')!r} "
                f"but not {missing!r}: the pieces of a value must be consecutive"
            )


_COMMON_ERRORS: dict[type[Exception], bytes] = {
    HelloFirst: b"HELLO_FIRST",
    Unauthorized: b"UNAUTHORIZED",
    BadMessage: b"BAD_MESSAGE",
}


class Heartbeat(amp.Command):
    """Either side, when it has heard nothing for ``heartbeat_interval``: are you there?

    Any traffic counts as a sign of life; a peer silent for ``heartbeat_timeout`` is taken
    for dead and its connection aborted (a stopped process keeps its TCP connection open).
    """

    arguments = []  # type: ignore[var-annotated]
    response = []  # type: ignore[var-annotated]
    errors = dict(_COMMON_ERRORS)


def retry_policy(refusals: Callable[[], int]) -> Callable[[int], float]:
    """ClientService backoff (0.2 s doubling to 5 s) that also grows with refused Hellos.

    A refused Hello is handled as a connection that worked and then closed (ClientService
    has no transition for a refused connection closing later, and would log an error), so
    ClientService's own failure count restarts at 0; ``refusals`` keeps the backoff going.
    """
    policy = backoffPolicy(initialDelay=0.2, maxDelay=5.0)
    return lambda failed: policy(max(failed, refusals()))


def close_after_refusal(protocol: amp.AMP, clock: IReactorTime) -> None:
    """Close a connection whose Hello was refused, once ClientService has taken it."""

    def close() -> None:
        if protocol.transport is not None:
            protocol.transport.loseConnection()

    clock.callLater(0, close)


class JobReactorAMP(amp.AMP):
    """AMP that answers a malformed argument with ``BadMessage`` and keeps the connection,
    and that notices a silent peer.

    Plain AMP parses arguments before calling the responder and treats a parse error as
    unknown, which closes the connection; a peer with one bad message should only lose it.
    """

    _heartbeat_clock: IReactorTime | None = None
    _heartbeat_call: IDelayedCall | None = None
    _last_heard = 0.0
    #: The bounds this connection enforces; the distributor and node set theirs from config.
    limits: Limits = DEFAULT_LIMITS
    #: The peer's name once it said Hello (for log lines), else None.
    peer_name: str | None = None
    _box_bytes = 0
    _box_keys = 0
    _refused = False
    _refusals_logged = 0

    _reading_paused = False

    def pause_reading(self) -> None:
        """Stop reading from the peer (back-pressure): its bytes wait in the kernel, not here.
        The heartbeat does not count the silence this causes."""
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            if self._heartbeat_clock is not None:
                self._last_heard = self._heartbeat_clock.seconds()
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def describe_peer(self) -> str:
        """The peer for a log line: its name if known, and its address."""
        address = self.transport.getPeer() if self.transport is not None else None
        if self.peer_name is None:
            return str(address)
        return f"{printable(self.peer_name, 80)} ({address})"

    # -- bytes and keys of a box, counted as they arrive ----------------------------------

    def proto_init(self, string: bytes) -> str:
        self._box_bytes = 0
        self._box_keys = 0
        return super().proto_init(string)  # type: ignore[no-any-return]

    def proto_key(self, string: bytes) -> str:
        if string:
            self._box_keys += 1
            self._box_bytes += len(string) + 2
            if self._box_keys > self.limits.max_box_keys:
                return self._refuse_box(f"more than {self.limits.max_box_keys} keys")
        return super().proto_key(string)  # type: ignore[no-any-return]

    def proto_value(self, string: bytes) -> str:
        self._box_bytes += len(string) + 2
        if self._box_bytes > self.limits.box_bytes:
            return self._refuse_box(f"more than {self.limits.box_bytes} bytes")
        return super().proto_value(string)  # type: ignore[no-any-return]

    def proto_refused(self, string: bytes) -> str:
        return "refused"

    def _refuse_box(self, what: str) -> str:
        """A box past the limits: drop what came of it and the connection, in one log line."""
        self._currentBox = None
        if not self._refused:
            self._refused = True
            _log.warn(
                "closing connection from {peer}: a box with {what} "
                "(JR.config.max_box_bytes / max_box_keys)",
                peer=self.describe_peer(),
                what=what,
            )
            if self.transport is not None:
                self.transport.abortConnection()  # type: ignore[attr-defined]
        return "refused"

    # -- answering commands: errors are the peer's, one warning line each --------------------

    def _commandReceived(self, box: amp.AmpBox) -> None:
        """As AMP's, except that an error answered to the peer is one warning line (its
        description cut, never a traceback of the peer's bytes), a command sent without
        ``_ask`` that fails is logged the same way instead of dropping the connection, and
        an answer that cannot be encoded becomes an error answer."""
        command = printable(box.get(amp.COMMAND, b"?").decode("ascii", "replace"), 60)
        deferred: Deferred[Any] = self.dispatchCommand(box)
        deferred.addErrback(self._peer_error, command)
        if amp.ASK not in box:
            deferred.addErrback(lambda failure: None)
            return
        ask = box[amp.ASK]

        def answer(result: amp.AmpBox) -> amp.AmpBox:
            result[amp.ANSWER] = ask
            return result

        def error_box(failure: Failure) -> amp.AmpBox:
            error: Any = failure.value
            reply: amp.AmpBox = amp.AmpBox()
            reply[amp.ERROR] = ask
            reply[amp.ERROR_CODE] = error.errorCode
            description = error.description
            if isinstance(description, str):
                description = description.encode("utf-8", "backslashreplace")
            reply[amp.ERROR_DESCRIPTION] = description
            return reply

        def emit(reply: amp.AmpBox) -> None:
            try:
                reply._sendTo(self.boxSender)
            except (amp.ProtocolSwitched, ConnectionLost):
                pass
            except Exception as error:  # an answer too large for AMP, say
                _log.warn(
                    "could not answer {command} from {peer}: {error}",
                    command=command,
                    peer=self.describe_peer(),
                    error=printable(error),
                )
                fallback = amp.AmpBox()
                fallback[amp.ERROR] = ask
                fallback[amp.ERROR_CODE] = b"BAD_MESSAGE"
                fallback[amp.ERROR_DESCRIPTION] = b"the answer could not be encoded"
                with contextlib.suppress(Exception):
                    fallback._sendTo(self.boxSender)

        deferred.addCallbacks(answer, error_box)
        deferred.addCallback(emit)
        deferred.addErrback(self._log_bug, command)

    def _peer_error(self, failure: Failure, command: str) -> Failure:
        """Log an error to be answered to the peer and make it a short ``RemoteAmpError``."""
        if failure.check(amp.RemoteAmpError):
            error: Any = failure.value
            code = error.errorCode
            description = error.description
            if isinstance(description, bytes):
                description = description.decode("utf-8", "replace")
            short = printable(description, 500)
            self._refusals_logged += 1
            if self._refusals_logged <= REFUSALS_LOGGED or (
                self._refusals_logged % REFUSALS_LOGGED_EVERY == 0
            ):
                # A peer that sends nothing but errors gets a bounded share of the log.
                skipped = max(0, self._refusals_logged - REFUSALS_LOGGED)
                _log.warn(
                    "{command} from {peer} refused ({code}): {description}{skipped}",
                    command=command,
                    peer=self.describe_peer(),
                    code=printable(code.decode("ascii", "replace"), 40),
                    description=short,
                    skipped=f" ({skipped} refusals so far not logged)" if skipped else "",
                )
            return Failure(amp.RemoteAmpError(code, short))
        # Not the peer's fault: a bug on this side. The traceback is ours, not its bytes.
        _log.failure(
            "answering {command} from {peer} failed",
            failure,
            command=command,
            peer=self.describe_peer(),
        )
        return Failure(amp.RemoteAmpError(b"UNKNOWN", "internal error on the receiving side"))

    def _log_bug(self, failure: Failure, command: str) -> None:
        _log.failure(
            "answering {command} from {peer} failed",
            failure,
            command=command,
            peer=self.describe_peer(),
        )

    def connectionMade(self) -> None:
        super().connectionMade()
        # One small box each way per job: without this, Nagle's algorithm and delayed ACKs
        # add ~40 ms to every round trip.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            with contextlib.suppress(Exception):
                set_no_delay(True)

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        if self._heartbeat_clock is not None:
            self._last_heard = self._heartbeat_clock.seconds()
        try:
            super().dataReceived(data)
        except Exception as error:
            # Bytes that are no AMP (a port scanner, a stray client): one line, not a traceback.
            self._refused = True
            _log.warn(
                "closing connection from {peer}: not the jobreactor protocol ({error})",
                peer=self.describe_peer(),
                error=printable(repr(error)),
            )
            if self.transport is not None:
                self.transport.abortConnection()  # type: ignore[attr-defined]

    @Heartbeat.responder
    def _answer_heartbeat(self) -> dict[str, Any]:
        return {}

    def start_heartbeat(self, clock: IReactorTime, interval: float, timeout: float) -> None:
        """Ask the peer for a sign of life when it is quiet; drop it after ``timeout``."""
        self._heartbeat_clock = clock
        self._last_heard = clock.seconds()

        due = [clock.seconds() + interval]

        def beat() -> None:
            now = clock.seconds()
            if now - due[0] > interval:
                # This process was frozen (a long callback, a stopped process, a swapped-out
                # machine): the peer's bytes may be waiting unread. Count from now.
                self._last_heard = max(self._last_heard, now)
            due[0] = now + interval
            if self._reading_paused:
                # This side chose not to read: no sign of silence. Keep sending heartbeats so
                # the peer, whose own heartbeats wait unread, still hears from this side.
                self._last_heard = now
                with contextlib.suppress(Exception):
                    self.callRemote(Heartbeat).addErrback(lambda failure: None)
                self._heartbeat_call = clock.callLater(interval, beat)
                return
            silent = now - self._last_heard
            if silent >= timeout:
                self._heartbeat_call = None
                _log.warn(
                    "peer {peer} silent for {seconds:.1f} s: dropping the connection",
                    peer=self.describe_peer(),
                    seconds=silent,
                )
                if self.transport is not None:
                    self.transport.abortConnection()  # type: ignore[attr-defined]
                return
            if silent >= interval:
                # a closing connection raises here; connectionLost cleans up
                with contextlib.suppress(Exception):
                    self.callRemote(Heartbeat).addErrback(lambda failure: None)
            self._heartbeat_call = clock.callLater(interval, beat)

        self._heartbeat_call = clock.callLater(interval, beat)

    def stop_heartbeat(self) -> None:
        if self._heartbeat_call is not None and self._heartbeat_call.active():
            self._heartbeat_call.cancel()
        self._heartbeat_call = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.stop_heartbeat()
        super().connectionLost(reason)

    def locateResponder(self, name: bytes) -> Any:
        if name == b"StartTLS":
            # AMP's own StartTLS would let a peer switch the connection to TLS settings of
            # its choosing (or none): jobreactor sets TLS up in the endpoint, never mid-stream.
            return None
        responder = super().locateResponder(name)
        if responder is None:
            # AMP's own answer says "Unhandled Command: b'...'"; say it in the protocol's terms.
            description = f"unknown command '{printable(name.decode('utf-8', 'replace'), 100)}'"
            return lambda box: fail(amp.RemoteAmpError(amp.UNHANDLED_ERROR_CODE, description))
        command = self._commandDispatch[name][0]  # type: ignore[attr-defined]

        def guarded(box: amp.AmpBox) -> Deferred[Any]:
            # Only parsing the arguments raises here: AMP calls the responder itself inside
            # a Deferred. Any parse error (bad JSON, a non-integer Integer, a missing
            # argument) is the peer's malformed message, answered as BAD_MESSAGE.
            try:
                result: Deferred[Any] = responder(box)
            except BadMessage as error:
                self.bad_arguments(command)
                return fail(amp.RemoteAmpError(b"BAD_MESSAGE", printable(str(error), 500)))
            except Exception:
                description = describe_bad_arguments(command, box, self)
                self.bad_arguments(command)
                return fail(amp.RemoteAmpError(b"BAD_MESSAGE", printable(description, 500)))
            return result

        return guarded

    def bad_arguments(self, command: type[amp.Command]) -> None:
        """Called when the arguments of ``command`` could not be read (it is then answered
        BAD_MESSAGE); a side that must do more, such as close the connection, overrides it."""


def describe_bad_arguments(command: type[amp.Command], box: amp.AmpBox, proto: Any) -> str:
    """Name the first argument of ``box`` that ``command`` cannot read, in the protocol's
    terms (docs/protocol.md §7.2): a peer in another language has no use for a Python repr."""
    for key, argument in command.arguments:
        text = key.decode("ascii")
        if key not in box and not getattr(argument, "optional", False):
            if isinstance(argument, JSON):
                continue  # JSON.fromBox names it itself; it would have said BadMessage
            return f"argument {text!r} is missing"
        try:
            argument.fromBox(key, dict(box), {}, proto)
        except BadMessage as error:
            return str(error)
        except Exception:
            value = box.get(key, b"").decode("utf-8", "replace")
            if isinstance(argument, amp.Integer):
                return f"argument {text!r} must be an integer in decimal digits, not {value!r:.60}"
            if isinstance(argument, amp.Unicode):
                return f"argument {text!r} is not valid UTF-8"
            return f"argument {text!r} is malformed: {value!r:.60}"
    return f"the arguments of {command.commandName.decode('ascii')} are malformed"


class Challenge(amp.Command):
    """Peer to distributor, before ``Hello`` when it has credentials: give me a nonce.

    The answer holds a fresh ``nonce``, and the ``salt`` (base64) and ``iterations`` the
    user's key is derived with (``mechanism`` is ``SCRAM-SHA-256``); the peer then proves in
    ``Hello`` that it knows the password without sending it (see :mod:`jobreactor.scram`).
    A distributor that asks for no credentials answers ``AUTH_NOT_ENABLED``.
    """

    arguments = [(b"user", amp.Unicode())]
    response = [
        (b"mechanism", amp.Unicode()),
        (b"nonce", amp.Unicode()),
        (b"salt", amp.Unicode()),
        (b"iterations", amp.Integer()),
    ]
    errors = {AuthNotEnabled: b"AUTH_NOT_ENABLED", **_COMMON_ERRORS}


class Hello(amp.Command):
    """Node to distributor, first on every connection: who the node is and what it can take.

    ``held`` lists the ids of jobs from this distributor that the node already holds (after a
    reconnect or restart), so the distributor does not send them elsewhere.
    ``credentials`` answers the ``Challenge``: ``{"user", "client_nonce", "proof"}``; the
    answer's ``server_signature`` then proves the distributor holds the user's keys too.
    The answer's ``drop`` lists the held jobs the node must forget without running: they were
    given to another node meanwhile.
    ``jobs`` (optional) maps each job name the node runs to ``{"rate_limit": "50/s" or
    null}``: the distributor routes jobs only to nodes that run their name.
    """

    arguments = [
        (b"name", amp.Unicode()),
        (b"slots", amp.Integer()),
        (b"version", amp.Integer()),
        (b"held", JSON(many=True)),
        (b"credentials", JSON(optional=True)),
        (b"jobs", JSON(optional=True)),
    ]
    response = [
        (b"distributor_id", amp.Unicode()),
        (b"version", amp.Integer()),
        (b"drop", JSON(many=True)),
        (b"server_signature", amp.Unicode(optional=True)),
    ]
    errors = {
        DuplicateNodeName: b"DUPLICATE_NODE_NAME",
        UnsupportedVersion: b"UNSUPPORTED_VERSION",
        **_COMMON_ERRORS,
    }


class RunJobs(amp.Command):
    """Distributor to node: take these jobs (a list of job objects).

    The node stores each job before it answers. ``accepted`` lists the ids it now holds,
    ``parked`` those among them waiting for a later time (they hold no slot), ``rejected``
    objects ``{"id", "error", "retry"}`` for the jobs it refused: with ``retry`` true the
    refusal was this node's trouble (its storage is down, it is stopping) and the job goes
    to another node; otherwise the job itself is malformed and fails.
    """

    arguments = [(b"jobs", JSON())]
    response = [(b"accepted", JSON()), (b"parked", JSON()), (b"rejected", JSON())]
    errors = dict(_COMMON_ERRORS)


class JobsDone(amp.Command):
    """Node to distributor: what happened to these jobs (a list of report objects)."""

    arguments = [(b"reports", JSON())]
    response = []  # type: ignore[var-annotated]
    errors = dict(_COMMON_ERRORS)


class Leaving(amp.Command):
    """Node to distributor: send me no more jobs (the node is stopping).

    Jobs it had not started come back in ``JobsDone`` as reports with ``handed_back`` true.
    """

    arguments = []  # type: ignore[var-annotated]
    response = []  # type: ignore[var-annotated]
    errors = dict(_COMMON_ERRORS)


class CancelJobs(amp.Command):
    """Distributor to node: stop these jobs; ``cancelled`` lists the ids the node held."""

    arguments = [(b"job_ids", JSON())]
    response = [(b"cancelled", JSON())]
    errors = dict(_COMMON_ERRORS)


class GiveBack(amp.Command):
    """Distributor to node: give back up to ``count`` of these jobs that have not started.

    A node may hold a few due jobs beyond its slots, so that a short job is there the moment
    a slot frees; when another node has an idle slot, the distributor takes queued jobs back
    to run them there. The node hands back (in ``JobsDone``, ``handed_back`` true) only jobs
    it holds unstarted, in the order listed; ``given_back`` lists their ids. Optional: a
    node that does not know the command simply gets no jobs beyond its slots.
    """

    arguments = [(b"job_ids", JSON()), (b"count", amp.Integer())]
    response = [(b"given_back", JSON())]
    errors = dict(_COMMON_ERRORS)


class Enqueue(amp.Command):
    """Any peer that said ``Hello`` (a client with ``slots`` 0, or a node) to distributor:
    own these jobs (a list of job objects, ids made by the sender).

    ``accepted`` lists the ids the distributor now owns (a job id it already owns counts as
    accepted, so a sender may resend after a reconnect); ``rejected`` objects
    ``{"id", "error"}`` for jobs that are malformed. Their reports come back to the sender,
    by its name, in ``Outcomes``. ``merged`` (optional, absent when empty) maps a sent id to
    the id of the job it became: a job with the ``unique_key`` of a job the distributor
    already has (or had within ``unique_for``) is not a new job; the reports of the existing
    job come to the sender under the existing id.
    """

    arguments = [(b"jobs", JSON())]
    response = [(b"accepted", JSON()), (b"rejected", JSON()), (b"merged", JSON(optional=True))]
    errors = {QueueFull: b"QUEUE_FULL", **_COMMON_ERRORS}


class Outcomes(amp.Command):
    """Distributor to the peer that enqueued the jobs: reports (as in ``JobsDone``) that
    carry a feedback or end a job. Reports for a peer that is away are kept for
    ``outcome_keep_seconds`` and sent when a peer of the same name says ``Hello`` again."""

    arguments = [(b"reports", JSON())]
    response = []  # type: ignore[var-annotated]
    errors = dict(_COMMON_ERRORS)


class GetOutcome(amp.Command):
    """Any peer that said ``Hello`` to distributor: the stored final outcome of a job.

    ``outcome`` is the outcome object (``job_id``, ``name``, ``status``, ``args``, ``error``,
    ``error_type``, ``run``, ``finished_at``, ``handled``) or null when the distributor has
    none (unknown id, not finished, or older than ``result_ttl``).
    """

    arguments = [(b"job_id", amp.Unicode())]
    response = [(b"outcome", JSON(optional=True))]
    errors = dict(_COMMON_ERRORS)


class RetryJobs(amp.Command):
    """Any peer that said ``Hello`` to distributor: run these finished jobs again (same id,
    same args as enqueued, a new run); needs the job's stored outcome. ``rejected`` objects
    ``{"id", "error"}`` for jobs that cannot be retried (unknown, not finished)."""

    arguments = [(b"job_ids", JSON())]
    response = [(b"retried", JSON()), (b"rejected", JSON())]
    errors = dict(_COMMON_ERRORS)
