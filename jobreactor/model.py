"""The job record that travels from the distributor to a node and lives in storage.

A :class:`Job` is frozen: every change of state makes a new record with
:func:`attrs.evolve`, so a record handed to storage or to the wire never changes under
the code that holds it.
"""

from __future__ import annotations

import enum
import json
import math
import operator
from typing import Any

import attrs

from jobreactor.errors import ArgsTooLargeError, InvalidJobError
from jobreactor.jsontext import compact
from jobreactor.limits import (
    DEFAULT_LIMITS,
    Limits,
    check_error_text,
    check_name,
    has_lone_surrogate,
)


class Status(enum.StrEnum):
    """Where a job is in its life; the values are the original's status strings."""

    #: Created by ``enqueue``, not yet on a node.
    NEW = "new"
    #: Accepted by a node and waiting for its time (``after``, ``run_at``, a period).
    QUEUED = "queued"
    #: Its chain is running now.
    IN_PROGRESS = "in progress"
    #: Finished with success; a periodic job never gets here unless cancelled.
    COMPLETE = "complete"
    #: An attempt failed and another one is scheduled.
    ERROR = "error"
    #: The last attempt failed: no retry is left.
    FAILED = "failed"
    #: Ended by ``CancelJob`` or by the application through its handle.
    CANCELLED = "cancelled"


#: Statuses after which nothing more happens to a job.
#: Priorities run from -MAX_PRIORITY to MAX_PRIORITY; 0 is the default.
MAX_PRIORITY = 1000

FINAL_STATUSES = frozenset({Status.COMPLETE, Status.FAILED, Status.CANCELLED})


def _optional_number(value: Any, field: str) -> float | None:
    if value is None:
        return None
    try:
        # float() of an int too large for a float (valid JSON) raises OverflowError.
        number = None if isinstance(value, bool) else float(value)
    except (TypeError, ValueError, OverflowError):
        number = None
    if number is None or not isinstance(value, (int, float)) or not math.isfinite(number):
        raise InvalidJobError(f"{field} must be a finite number of seconds, not {value!r:.40}")
    return number


def _at_least(value: float | None, minimum: float, field: str, setting: str = "") -> None:
    if value is not None and value < minimum:
        where = f" ({setting})" if setting else ""
        raise InvalidJobError(f"{field} must be at least {minimum}{where}, not {value!r}")


def _a(noun: str) -> str:
    return f"an {noun}" if noun[:1] in "aeiou" else f"a {noun}"


#: The values besides dicts, lists and tuples that json.dumps writes as they are.
_JSON_SCALARS = (str, int, float, type(None))


def _check_structure(args: dict[str, Any], max_depth: int = DEFAULT_LIMITS.max_depth) -> None:
    """Refuse a key that is not a string and a NaN or infinite float, at any depth.

    ``json.dumps`` would silently turn ``1``, ``True`` or ``None`` keys into strings (so the
    job would see other keys than the caller gave), fail with a bare ``TypeError`` on other
    keys and say only "Out of range float values" for NaN; the message names the path, for a
    value JSON cannot carry (a ``datetime``, a set) as well.
    """
    pending: list[tuple[str, Any, int]] = [("args", args, 1)]
    seen: set[int] = set()
    while pending:
        path, value, depth = pending.pop()
        if isinstance(value, (dict, list, tuple)) and depth > max_depth:
            raise InvalidJobError(
                f"job args are nested too deeply: more than {max_depth} levels at "
                f"{path[:80]}{'...' if len(path) > 80 else ''} (JR.config.max_nesting_depth)"
            )
        if isinstance(value, dict):
            if id(value) in seen:
                continue  # a circular reference: json.dumps reports it
            seen.add(id(value))
            for key, item in value.items():
                if not isinstance(key, str):
                    raise InvalidJobError(
                        f"job args keys must be strings; {path} has the "
                        f"{type(key).__name__} key {key!r}"
                    )
                pending.append((f"{path}[{key!r}]", item, depth + 1))
        elif isinstance(value, (list, tuple)):
            if id(value) in seen:
                continue
            seen.add(id(value))
            pending.extend(
                (f"{path}[{index}]", item, depth + 1) for index, item in enumerate(value)
            )
        elif isinstance(value, float) and not math.isfinite(value):
            raise InvalidJobError(
                f"job args must be JSON-serializable; {path} is {value!r} "
                "(JSON has no NaN or Infinity)"
            )
        elif not isinstance(value, _JSON_SCALARS):
            raise InvalidJobError(
                f"job args must be JSON-serializable; {path} is {_a(type(value).__name__)} "
                f"({value!r:.80}), which JSON cannot carry (pass a str or a number instead)"
            )


#: Beyond this, an int may be too long for ``json.dumps`` (``sys.set_int_max_str_digits``).
_SAFE_INT = 10**18


def flat_json(args: dict[Any, Any]) -> bool:
    """Whether ``args`` surely travels as JSON, without encoding it: string keys and plain
    values (strings, booleans, None, finite numbers), the usual args. False only means
    "encode to know"; nothing is nested, so no depth limit can be passed either."""
    for key, value in args.items():
        kind = type(value)
        if type(key) is not str:
            return False
        if kind is str or kind is bool or value is None:
            continue
        if kind is int:
            if -_SAFE_INT < value < _SAFE_INT:
                continue
        elif kind is float and math.isfinite(value):
            continue
        return False
    return True


def encode_args(
    args: Any, limit: int, max_depth: int = DEFAULT_LIMITS.max_depth, *, parsed: bool = False
) -> str:
    """Return the JSON text of ``args`` or raise :class:`InvalidJobError` saying why not.

    Runs in the caller's thread at ``enqueue`` so that a bad value is reported where it was
    made, before anything is sent; the distributor and the node run it again on what a peer
    sent, with the same limits. ``parsed``: ``args`` came out of JSON (its keys are strings);
    then, and for flat args (:func:`flat_json`), the common case needs one encoding, no walk.
    """
    if not isinstance(args, dict):
        raise InvalidJobError(f"job args must be a dict, not {type(args).__name__}")
    try:
        if not parsed and not flat_json(args):
            raise TypeError("keys may not be strings: walk")
        # The common case in one C-level pass: JSON-able, finite, and too few brackets to
        # be nested past the limit (depth <= brackets). Anything else takes the walk below,
        # which names the offending key path.
        text = compact(args)
    except (TypeError, ValueError, RecursionError):
        pass
    else:
        if text.count("{") + text.count("[") <= max_depth and "\\ud" not in text:
            if len(text) > limit:  # ASCII: ensure_ascii is on, so characters are bytes
                raise ArgsTooLargeError(
                    f"job args are {len(text)} bytes as JSON, above the limit of {limit} "
                    f"bytes (JR.config.max_args_bytes); keep large data elsewhere and pass "
                    f"a reference"
                )
            return text
    _check_structure(args, max_depth)

    def refuse(value: Any) -> Any:
        raise InvalidJobError(
            f"job args must be JSON-serializable; {type(value).__name__} value {value!r:.80} is not"
        )

    try:
        text = json.dumps(args, default=refuse, allow_nan=False, separators=(",", ":"))
    except ValueError as error:  # NaN/Infinity, or a circular reference
        if isinstance(error, InvalidJobError):
            raise
        raise InvalidJobError(f"job args must be JSON-serializable: {error}") from None
    except RecursionError:
        raise InvalidJobError("job args are nested too deeply to be sent as JSON") from None
    if "\\ud" in text and has_lone_surrogate(args):
        raise InvalidJobError("job args hold a string with a lone surrogate: not valid Unicode")
    size = len(text.encode("utf-8"))
    if size > limit:
        raise ArgsTooLargeError(
            f"job args are {size} bytes as JSON, above the limit of {limit} bytes "
            f"(JR.config.max_args_bytes); keep large data elsewhere and pass a reference"
        )
    return text


#: Job fields of docs/workflows.md, omitted from the wire form while unset.
WORKFLOW_FIELDS = (
    "unique_key",
    "unique_for",
    "cron",
    "timezone",
    "missed",
    "depends_on",
    "on_dependency_failure",
)
MISSED_POLICIES = ("skip", "run_once")
DEPENDENCY_FAILURE_POLICIES = ("fail", "run")


def check_workflow_fields(values: dict[str, Any]) -> None:
    """Check (and normalize in ``values``) the workflow fields of a job's wire form."""
    for field in ("unique_key", "cron", "timezone"):
        value = values.get(field)
        if value is not None and (not isinstance(value, str) or not value):
            raise InvalidJobError(f"job field {field!r} must be a non-empty string")
    values["unique_for"] = _optional_number(values.get("unique_for"), "job field 'unique_for'")
    if values.get("missed") not in (None, *MISSED_POLICIES):
        raise InvalidJobError('job field \'missed\' must be "skip" or "run_once"')
    if values.get("on_dependency_failure") not in (None, *DEPENDENCY_FAILURE_POLICIES):
        raise InvalidJobError('job field \'on_dependency_failure\' must be "fail" or "run"')
    depends_on = values.get("depends_on", [])
    if not isinstance(depends_on, (list, tuple)) or not all(
        isinstance(i, str) and i for i in depends_on
    ):
        raise InvalidJobError("job field 'depends_on' must be a list of job ids")
    values["depends_on"] = tuple(depends_on)
    if values.get("cron") is not None:
        from jobreactor.cron import check_schedule  # cron imports this module

        try:
            check_schedule(values["cron"], values.get("timezone"))
        except ValueError as error:
            raise InvalidJobError(f"job field 'cron': {error}") from None


@attrs.frozen
class Job:
    """One job: what to run, with which args, when, where, and how it went so far.

    Times are POSIX seconds (``clock.seconds()``); ``run_at`` is absolute so that a node
    computes its own wait and a restart keeps the due time.
    """

    id: str
    name: str
    args: dict[str, Any]
    status: Status = Status.NEW
    #: Attempts made in the current run (reset to 0 after each successful periodic run).
    attempt: int = 0
    #: Runs started so far; a report names its run so the distributor can drop duplicates.
    run: int = 0
    run_at: float | None = None
    period: float | None = None
    defer: bool = False
    node: str | None = None
    not_node: tuple[str, ...] = ()
    max_attempt: int | None = None
    retry_delay: float | None = None
    timeout: float | None = None
    failed_at: float | None = None
    last_error: str | None = None
    last_error_type: str | None = None
    #: Seconds from the last save to the next start, as the original stored it.
    make_after: float | None = None
    #: Endpoint of the distributor that sent the job; its outcome goes back there.
    distributor: str | None = None
    enqueued_at: float | None = None
    #: Higher goes first among jobs waiting for a node; FIFO within one priority.
    priority: int = 0
    #: While a job with this key is owned (and ``unique_for`` s after it ended), another
    #: enqueue with the key gets this job instead of a new one (see docs/workflows.md).
    unique_key: str | None = None
    unique_for: float | None = None
    #: A five-field cron expression: the job runs at each of its times in ``timezone``.
    cron: str | None = None
    timezone: str | None = None
    #: ``skip`` or ``run_once``: what a cron job does about times it missed.
    missed: str | None = None
    #: Ids of jobs that must succeed before this one runs, and ``fail`` or ``run`` if not.
    depends_on: tuple[str, ...] = ()
    on_dependency_failure: str | None = None

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready form used on the wire and in storage.

        The workflow fields (unique, cron, dependencies) are left out while unset, so a
        peer from before them still accepts every job that does not use them.
        """
        # Written out field by field: this runs for every job on every hop, and
        # attrs.asdict's generic walk cost more than the rest of the hop.
        data = {
            "id": self.id,
            "name": self.name,
            "args": self.args,
            "status": self.status.value,
            "attempt": self.attempt,
            "run": self.run,
            "run_at": self.run_at,
            "period": self.period,
            "defer": self.defer,
            "node": self.node,
            "not_node": list(self.not_node),
            "max_attempt": self.max_attempt,
            "retry_delay": self.retry_delay,
            "timeout": self.timeout,
            "failed_at": self.failed_at,
            "last_error": self.last_error,
            "last_error_type": self.last_error_type,
            "make_after": self.make_after,
            "distributor": self.distributor,
            "enqueued_at": self.enqueued_at,
            "priority": self.priority,
        }
        if self.unique_key is not None:
            data["unique_key"] = self.unique_key
        if self.unique_for is not None:
            data["unique_for"] = self.unique_for
        if self.cron is not None:
            data["cron"] = self.cron
        if self.timezone is not None:
            data["timezone"] = self.timezone
        if self.missed is not None:
            data["missed"] = self.missed
        if self.depends_on:
            data["depends_on"] = list(self.depends_on)
        if self.on_dependency_failure is not None:
            data["on_dependency_failure"] = self.on_dependency_failure
        return data

    @classmethod
    def from_wire(
        cls,
        data: Any,
        limits: Limits = DEFAULT_LIMITS,
        *,
        status: Status | None = None,
        distributor: str | None = None,
    ) -> Job:
        """Build a job from its wire form, naming the first field that is wrong.

        Every field is checked against ``limits``, the args too (depth, size, Unicode), so
        a job this accepts is one every node with the same settings can start. ``status``
        and ``distributor``, if given, replace the checked values: the receiver's own (a
        node's "queued" and its link), one record built rather than a second by ``evolve``.
        """
        return cls.from_wire_sized(data, limits, status=status, distributor=distributor)[0]

    @classmethod
    def from_wire_sized(
        cls,
        data: Any,
        limits: Limits = DEFAULT_LIMITS,
        *,
        status: Status | None = None,
        distributor: str | None = None,
    ) -> tuple[Job, int]:
        """:meth:`from_wire`, and the bytes of the job's args as JSON (measured by the check,
        so a receiver that keeps count of sizes does not encode them again)."""
        if not isinstance(data, dict):
            raise InvalidJobError(f"a job must be a JSON object, not {type(data).__name__}")
        if not _JOB_FIELDS.issuperset(data):
            unknown = sorted(set(data) - _JOB_FIELDS)
            raise InvalidJobError(f"unknown job field(s): {', '.join(unknown)}")
        for required in ("id", "name", "args"):
            if required not in data:
                raise InvalidJobError(f"job field {required!r} is missing")
        check_name(data["id"], "job field 'id'", limits)
        check_name(data["name"], "job field 'name'", limits)
        if not isinstance(data["args"], dict):
            raise InvalidJobError("job field 'args' must be an object")
        args_bytes = len(
            encode_args(data["args"], limits.max_args_bytes, limits.max_depth, parsed=True)
        )
        values = dict(data)
        try:
            values["status"] = Status(data.get("status", Status.NEW.value))
        except ValueError:
            raise InvalidJobError(
                f"job field 'status' is not a status: {data['status']!r}"
            ) from None
        for field in ("attempt", "run"):
            count = values.get(field, 0)
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise InvalidJobError(f"job field {field!r} must be a non-negative integer")
        for field in _NUMBER_FIELDS:
            value = values.get(field)
            if value is not None:  # (the message is only built for a value to check)
                values[field] = _optional_number(value, f"job field {field!r}")
        _at_least(values.get("timeout"), 0, "job field 'timeout'")
        _at_least(values.get("retry_delay"), 0, "job field 'retry_delay'")
        _at_least(
            values.get("period"), limits.min_period, "job field 'period'", "JR.config.min_period"
        )
        max_attempt = values.get("max_attempt")
        if max_attempt is not None and (
            not isinstance(max_attempt, int) or isinstance(max_attempt, bool) or max_attempt < 1
        ):
            raise InvalidJobError("job field 'max_attempt' must be a positive integer")
        for field in ("node", "distributor", "last_error_type"):
            if values.get(field) is not None:
                check_name(values[field], f"job field {field!r}", limits)
        check_error_text(values.get("last_error"), "job field 'last_error'", limits)
        if "not_node" in values:  # absent: the default, none
            not_node = values["not_node"]
            if not isinstance(not_node, list) or len(not_node) > limits.max_items:
                raise InvalidJobError("job field 'not_node' must be a list of node names")
            for name in not_node:
                check_name(name, "a name in job field 'not_node'", limits)
            values["not_node"] = tuple(not_node)
        priority = values.get("priority", 0)
        if (
            not isinstance(priority, int)
            or isinstance(priority, bool)
            or abs(priority) > MAX_PRIORITY
        ):
            raise InvalidJobError(
                f"job field 'priority' must be an integer from -{MAX_PRIORITY} to {MAX_PRIORITY}"
            )
        check_workflow_fields(values)
        if not isinstance(values.get("defer", False), bool):
            # bool("false") is True: a lenient reading would run the job in a thread.
            raise InvalidJobError("job field 'defer' must be true or false")
        if status is not None:
            values["status"] = status
        if distributor is not None:
            values["distributor"] = distributor
        return cls(**values), args_bytes

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    def allows(self, node_name: str) -> bool:
        """Whether routing may send this job to ``node_name`` at all."""
        return node_name not in self.not_node


#: The fields a job's wire form may have.
_JOB_FIELDS = frozenset(attrs.fields_dict(Job))
#: Its fields that are a number of seconds or null.
_NUMBER_FIELDS = (
    "run_at",
    "period",
    "retry_delay",
    "timeout",
    "failed_at",
    "make_after",
    "enqueued_at",
)


@attrs.frozen
class Report:
    """What a node tells the distributor about one job.

    ``feedback`` is ``"success"``, ``"error"`` or ``None`` (nothing for the application, e.g.
    an attempt failed and a retry is scheduled, or the job is waiting for its time: the
    report then only frees the slot it held). ``final`` says the job is over.
    """

    job_id: str
    run: int
    status: Status
    feedback: str | None
    final: bool
    args: dict[str, Any] = attrs.field(factory=dict)
    error: str | None = None
    error_type: str | None = None
    #: For a job that goes on (retry or next periodic run): when it is due next and the
    #: attempts used so far, so a distributor that re-routes it keeps its schedule.
    run_at: float | None = None
    attempt: int = 0
    #: The node is stopping and gives the job back unstarted: route it to another node.
    handed_back: bool = False
    #: Seconds the attempt reported on ran, measured by the node (None: it did not run).
    #: Older nodes leave it out; the distributor's statistics then have no duration.
    duration: float | None = None
    #: The traceback text of a failed attempt (the end of it), for people to read.
    traceback: str | None = None

    def to_wire(self) -> dict[str, Any]:
        # Field by field, as Job.to_wire: every report of every job goes through it.
        return {
            "job_id": self.job_id,
            "run": self.run,
            "status": self.status.value,
            "feedback": self.feedback,
            "final": self.final,
            "args": self.args,
            "error": self.error,
            "error_type": self.error_type,
            "run_at": self.run_at,
            "attempt": self.attempt,
            "handed_back": self.handed_back,
            "duration": self.duration,
            "traceback": self.traceback,
        }

    @classmethod
    def from_wire(cls, data: Any, limits: Limits = DEFAULT_LIMITS) -> Report:
        """Build a report from its wire form, naming the first field that is wrong."""
        report = _plain_report(data, limits)
        return report if report is not None else _checked_report(data, limits)


_STATUSES = {status.value: status for status in Status}
_FEEDBACKS = (None, "success", "error")


def _plain_report(data: Any, limits: Limits) -> Report | None:
    """The usual report (no error texts, plain args of a bounded size) read without
    encoding its args: what this accepts, :func:`_checked_report` would accept the same;
    None sends the rest there, which names what is wrong. Every report of every job is
    read once by the distributor and once by a remote client."""
    if type(data) is not dict:
        return None
    job_id = data.get("job_id")
    run = data.get("run")
    status = _STATUSES.get(data.get("status"))  # type: ignore[arg-type]
    final = data.get("final")
    feedback = data.get("feedback")
    args = data.get("args")
    run_at = data.get("run_at")
    attempt = data.get("attempt", 0)
    handed_back = data.get("handed_back", False)
    duration = data.get("duration")
    if (
        type(job_id) is not str
        or not 0 < len(job_id) <= limits.max_name_length
        or not job_id.isascii()  # no lone surrogate
        or type(run) is not int
        or run < 0
        or status is None
        or type(final) is not bool
        or feedback not in _FEEDBACKS
        or type(attempt) is not int
        or attempt < 0
        or type(handed_back) is not bool
        or not (run_at is None or (type(run_at) is float and math.isfinite(run_at)))
        or not (duration is None or (type(duration) is float and 0 <= duration < math.inf))
        or data.get("error") is not None
        or data.get("error_type") is not None
        or data.get("traceback") is not None
    ):
        return None
    if args is None:
        args = {}
    elif type(args) is not dict or not _small_plain(args, limits.max_args_bytes):
        return None
    return Report(
        job_id, run, status, feedback, final, args, None, None, run_at, attempt, handed_back,
        duration,
    )  # fmt: skip


def _small_plain(args: dict[str, Any], max_args_bytes: int) -> bool:
    """Whether ``args`` surely passes ``encode_args``: plain (``flat_json``), no lone
    surrogate in a text and surely within ``max_args_bytes`` as JSON (a bound on its text:
    each character escaped)."""
    if not flat_json(args):
        return False
    bound = 2
    for key, value in args.items():
        if has_lone_surrogate(key):
            return False
        if type(value) is str:
            if has_lone_surrogate(value):
                return False
            bound += 6 * len(value)
        bound += 6 * len(key) + 32
    return bound <= max_args_bytes


def _checked_report(data: Any, limits: Limits) -> Report:
    """Every rule of a report, one by one, naming the first one broken."""
    if not isinstance(data, dict):
        raise InvalidJobError(f"a report must be a JSON object, not {type(data).__name__}")
    for required in ("job_id", "run", "status", "final"):
        if required not in data:
            raise InvalidJobError(f"report field {required!r} is missing")
    job_id = check_name(data["job_id"], "report field 'job_id'", limits)
    run = data["run"]
    if not isinstance(run, int) or isinstance(run, bool) or run < 0:
        raise InvalidJobError(f"report field 'run' of job {job_id} must be an integer")
    try:
        status = Status(data["status"])
    except ValueError:
        raise InvalidJobError(
            f"report field 'status' of job {job_id} is not a status: {data['status']!r}"
        ) from None
    if not isinstance(data["final"], bool):
        raise InvalidJobError(f"report field 'final' of job {job_id} must be true or false")
    feedback = data.get("feedback")
    if feedback not in (None, "success", "error"):
        raise InvalidJobError(
            f'report field \'feedback\' of job {job_id} must be "success", "error" '
            f"or null, not {feedback!r}"
        )
    args = data.get("args")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise InvalidJobError(f"report field 'args' of job {job_id} must be an object")
    try:
        encode_args(args, limits.max_args_bytes, limits.max_depth, parsed=True)
    except InvalidJobError as error:
        raise InvalidJobError(f"report of job {job_id}: {error}") from None
    # Each message is built only for a value to check: most fields are null.
    if data.get("error") is not None:
        check_error_text(data["error"], f"report field 'error' of job {job_id}", limits)
    if data.get("error_type") is not None:
        check_name(data["error_type"], f"report field 'error_type' of job {job_id}", limits)
    if data.get("traceback") is not None:
        check_error_text(data["traceback"], f"report field 'traceback' of job {job_id}", limits)
    run_at = data.get("run_at")
    if run_at is not None:
        run_at = _optional_number(run_at, f"report field 'run_at' of job {job_id}")
    attempt = data.get("attempt", 0)
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 0:
        raise InvalidJobError(
            f"report field 'attempt' of job {job_id} must be a non-negative integer"
        )
    handed_back = data.get("handed_back", False)
    if not isinstance(handed_back, bool):
        raise InvalidJobError(f"report field 'handed_back' of job {job_id} must be true or false")
    duration = data.get("duration")
    if duration is not None:
        duration = _optional_number(duration, f"report field 'duration' of job {job_id}")
    if duration is not None and duration < 0:
        raise InvalidJobError(f"report field 'duration' of job {job_id} must not be negative")
    return Report(
        job_id=job_id,
        run=run,
        status=status,
        feedback=feedback,
        final=data["final"],
        args=args,
        error=data.get("error"),
        error_type=data.get("error_type"),
        run_at=run_at,
        attempt=attempt,
        handed_back=handed_back,
        duration=duration,
        traceback=data.get("traceback"),
    )


# -- the packed form: a waiting job as one short JSON text ----------------------------------

#: The order of a job's fields in its packed form (all but the id, which the holder keeps),
#: those most often set first: the unset ones at the end are left out (a plain job packs to
#: its name, args and enqueue time).
_PACK_ORDER = (
    "name",
    "args",
    "enqueued_at",
    "priority",
    "run_at",
    "max_attempt",
    "retry_delay",
    "timeout",
    "defer",
    "node",
    "not_node",
    "period",
    "unique_key",
    "unique_for",
    "depends_on",
    "on_dependency_failure",
    "cron",
    "timezone",
    "missed",
    "status",
    "attempt",
    "run",
    "distributor",
    "failed_at",
    "last_error",
    "last_error_type",
    "make_after",
)
assert {"id", *_PACK_ORDER} == _JOB_FIELDS and len(_PACK_ORDER) == len(_JOB_FIELDS) - 1
_PACK_ARGS = _PACK_ORDER.index("args")
_PACK_DEFAULTS = tuple(attrs.fields_dict(Job)[name].default for name in _PACK_ORDER)
#: The types a field (other than args, status and the tuples) keeps exactly through JSON.
_PLAIN = frozenset({str, int, float, bool, type(None)})
_PACK_GET = operator.attrgetter(*_PACK_ORDER)
_PACK_STATUS = _PACK_ORDER.index("status")
_PACK_TUPLES = frozenset({_PACK_ORDER.index("not_node"), _PACK_ORDER.index("depends_on")})


def _exact_json(value: Any) -> bool:
    """Whether JSON gives ``value`` back equal and of the same types (dicts with string keys,
    lists, strings, numbers, booleans, None: not a tuple, not a subclass, at any depth)."""
    kind = type(value)
    if kind in _PLAIN:
        return True
    if kind is dict:
        return all(type(key) is str and _exact_json(item) for key, item in value.items())
    if kind is list:
        return all(_exact_json(item) for item in value)
    return False


def pack_job(job: Job, extra: int) -> bytes | None:
    """The job but its id, and one integer beside it (``extra``), as compact JSON text, to
    keep instead of the :class:`Job` while it waits (a third of the memory; the holder keeps
    the id, which it has anyway). :func:`unpack_job` with that id gives back an equal job,
    every field of the same type. None if some field would not come back exactly so (a
    tuple or a subclass in the args, a NaN): such a job stays a Job."""
    values = _PACK_GET(job)
    last = len(values)
    defaults = _PACK_DEFAULTS
    # Unset fields are their defaults themselves (None, 0, False, (), Status.NEW): an
    # identical value is one JSON would give back as it is, so it is left out.
    while values[last - 1] is defaults[last - 1]:
        last -= 1  # (stops at args at the latest: name and args have no default)
    packed: list[Any] = [extra, *values[:last]]
    args = values[_PACK_ARGS]
    try:
        if type(args) is not dict or not (flat_json(args) or _exact_json(args)):
            return None
    except RecursionError:  # nested past any sane depth, or circular
        return None
    for index in range(last):
        value = values[index]
        kind = type(value)
        if index == _PACK_STATUS:
            if kind is not Status:
                return None
            packed[index + 1] = value.value
        elif index in _PACK_TUPLES:
            if kind is not tuple or not all(type(item) is str for item in value):
                return None
            packed[index + 1] = list(value)
        elif kind not in _PLAIN and index != _PACK_ARGS:  # (args: checked above)
            return None
    try:
        return compact(packed).encode("ascii")
    except (ValueError, TypeError, RecursionError):  # NaN, an int past JSON's digits
        return None


def unpack_job(data: bytes, job_id: str) -> tuple[Job, int]:
    """The job ``job_id`` and the integer of :func:`pack_job`. Trusted: the text was made
    by ``pack_job`` from a job already checked, so nothing is checked again."""
    values = json.loads(data)
    fields = dict(zip(_PACK_ORDER[: len(values) - 1], values[1:], strict=True))
    fields["id"] = job_id
    if "status" in fields:
        fields["status"] = Status(fields["status"])
    if "not_node" in fields:
        fields["not_node"] = tuple(fields["not_node"])
    if "depends_on" in fields:
        fields["depends_on"] = tuple(fields["depends_on"])
    return Job(**fields), values[0]
