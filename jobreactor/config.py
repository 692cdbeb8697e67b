"""Settings with the original's names and defaults, checked the moment they are set."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs

from jobreactor.errors import ConfigError
from jobreactor.ratelimit import parse_rate_limit


def _check(
    kind: type | tuple[type, ...],
    *,
    minimum: float | None = None,
    maximum: float | None = None,
) -> Any:
    """A validator that refuses bools where numbers are wanted, NaN and infinities, and values
    outside ``minimum``..``maximum``."""

    def validate(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        wants_number = kind in (int, float) or kind == (int, float)
        if (wants_number and isinstance(value, bool)) or not isinstance(value, kind):
            names = (
                kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            )
            raise ConfigError(
                f"JR.config.{attribute.name} must be {names}, not {type(value).__name__} {value!r}"
            )
        if isinstance(value, float) and not math.isfinite(value):
            # NaN passes every comparison below and would reach callLater.
            raise ConfigError(f"JR.config.{attribute.name} must be a finite number, not {value!r}")
        if minimum is not None and value < minimum:  # type: ignore[operator]
            raise ConfigError(
                f"JR.config.{attribute.name} must be at least {minimum}, not {value!r}"
            )
        if maximum is not None and value > maximum:  # type: ignore[operator]
            raise ConfigError(
                f"JR.config.{attribute.name} must be at most {maximum}, not {value!r}"
            )

    return validate


NUMBER = (int, float)


def _check_rate_limits(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, dict) or not all(isinstance(k, str) and k for k in value):
        raise ConfigError(
            f"JR.config.rate_limits must be a dict of job name to rate limit, not {value!r}"
        )
    for name, limit in value.items():
        try:
            parse_rate_limit(limit)
        except ValueError as error:
            raise ConfigError(f"JR.config.rate_limits[{name!r}]: {error}") from None


@attrs.define
class Config:
    """Every setting of jobreactor; set them before starting a node or distributor.

    Both spellings work, the original's and Python's::

        JR.config["max_attempt"] = 3
        JR.config.max_attempt = 3

    An unknown name or a value of the wrong type raises :class:`ConfigError` at once.
    """

    #: Directory whose ``*.py`` files (recursively) define the jobs a node can run.
    job_directory: str = attrs.field(default="reactor_jobs", validator=_check(str))
    #: Attempts per run before a job is ``failed`` and its error feedback fires.
    max_attempt: int = attrs.field(default=10, validator=_check(int, minimum=1))
    #: A failed attempt ``n`` is retried ``n * retry_multiplier`` seconds later.
    retry_multiplier: float = attrs.field(default=5, validator=_check(NUMBER, minimum=0))
    #: Put ``args["job_itself"]`` (id, name, status, attempt, ...) into jobs and callbacks.
    merge_job_itself_to_args: bool = attrs.field(default=False, validator=_check(bool))
    #: A job's ``node=`` becomes a requirement: the job waits for that node.
    always_use_specified_node: bool = attrs.field(default=False, validator=_check(bool))
    remove_done_jobs: bool = attrs.field(default=True, validator=_check(bool))
    remove_cancelled_jobs: bool = attrs.field(default=True, validator=_check(bool))
    remove_failed_jobs: bool = attrs.field(default=False, validator=_check(bool))
    #: A node with persistent storage runs its unfinished jobs again when it starts.
    retry_jobs_at_start: bool = attrs.field(default=True, validator=_check(bool))
    #: Seconds a node's lease on its storage lasts without renewal (Redis: a killed node's
    #: replacement waits at most this long; SQLite's file lock ends with the process).
    storage_lease_seconds: float = attrs.field(default=10.0, validator=_check(NUMBER, minimum=1))
    redis_host: str = attrs.field(default="localhost", validator=_check(str))
    redis_port: int = attrs.field(default=6379, validator=_check(int, minimum=1, maximum=65535))
    #: Threads for ``defer=True`` jobs (the original's EventMachine pool had 20).
    thread_pool_size: int = attrs.field(default=20, validator=_check(int, minimum=1))
    #: Jobs a node runs at once unless ``start_node(slots=...)`` says otherwise.
    node_slots: int = attrs.field(default=50, validator=_check(int, minimum=1))
    #: Due jobs a distributor may send a node beyond its free slots, at most, so that a
    #: short job is there the moment a slot frees (the real number adapts to the node's
    #: job durations and round trip; a node with an idle slot takes queued jobs back).
    node_queue_limit: int = attrs.field(default=64, validator=_check(int, minimum=0))
    #: Largest JSON form of one job's args, in bytes; larger args are refused at enqueue.
    max_args_bytes: int = attrs.field(
        default=1024 * 1024, validator=_check(int, minimum=1024, maximum=8 * 1024 * 1024)
    )
    #: Bytes of one AMP box, counted as it arrives; a peer that goes past it is disconnected
    #: with one log line. Never below what one job of ``max_args_bytes`` needs.
    max_box_bytes: int = attrs.field(
        default=8 * 1024 * 1024, validator=_check(int, minimum=64 * 1024)
    )
    #: Keys in one AMP box (a long JSON value spans one key per 64 KiB).
    max_box_keys: int = attrs.field(default=1024, validator=_check(int, minimum=16))
    #: Jobs, reports or job ids in one command; more is refused as ``BAD_MESSAGE``.
    max_items_per_command: int = attrs.field(default=1000, validator=_check(int, minimum=1))
    #: How deep job args may nest, checked the same way at enqueue, on the distributor and on
    #: the node, on the raw bytes before they are parsed.
    max_nesting_depth: int = attrs.field(default=64, validator=_check(int, minimum=2, maximum=400))
    #: Characters of a job id, a job name, a node or a client name.
    max_name_length: int = attrs.field(default=256, validator=_check(int, minimum=16))
    #: Characters of an error text in a job or report: longer texts made here are cut,
    #: longer texts from a peer are refused.
    max_error_length: int = attrs.field(default=8192, validator=_check(int, minimum=256))
    #: Smallest ``period`` of a periodic job, in seconds (a period of 0 would spin a node).
    min_period: float = attrs.field(default=0.1, validator=_check(NUMBER, minimum=0.001))
    #: Jobs a distributor keeps waiting for their outcome, from all senders together and
    #: from one sender (a remote client or node, by name); past either, ``Enqueue`` is
    #: answered ``QUEUE_FULL`` and the distributor stops reading from that sender until
    #: its jobs drain. The same caps bound the jobs one client holds unsent.
    max_waiting_jobs: int = attrs.field(default=100_000, validator=_check(int, minimum=1))
    max_waiting_jobs_per_sender: int = attrs.field(default=10_000, validator=_check(int, minimum=1))
    #: The same caps in bytes of the jobs' JSON form.
    max_waiting_bytes: int = attrs.field(
        default=512 * 1024 * 1024, validator=_check(int, minimum=1024 * 1024)
    )
    max_waiting_bytes_per_sender: int = attrs.field(
        default=64 * 1024 * 1024, validator=_check(int, minimum=1024 * 1024)
    )
    #: Outcomes a distributor keeps for one remote peer that is away; past it the oldest
    #: are dropped, with one warning.
    max_outcomes_kept: int = attrs.field(default=10_000, validator=_check(int, minimum=1))
    #: Bytes of the outcomes kept for all absent peers together; past it the mailboxes of the
    #: peers away longest are dropped, with one warning each.
    max_outcome_bytes_kept: int = attrs.field(
        default=16 * 1024 * 1024, validator=_check(int, minimum=1024 * 1024)
    )
    #: Connections a distributor accepts at once, in all and from one address; past either
    #: a new connection is closed at once, with one log line.
    max_connections: int = attrs.field(default=1000, validator=_check(int, minimum=1))
    max_connections_per_address: int = attrs.field(default=200, validator=_check(int, minimum=1))
    #: Seconds a client connection (slots 0) may stay without sending a command and without
    #: a job waiting for its outcome before the distributor closes it; 0 keeps it forever.
    idle_timeout: float = attrs.field(default=3600.0, validator=_check(NUMBER, minimum=0))
    #: Seconds ``JR.enqueue(..., when_full="wait")`` waits for room before it raises
    #: :class:`~jobreactor.errors.QueueFullError`.
    enqueue_wait_timeout: float = attrs.field(default=60.0, validator=_check(NUMBER, minimum=0))
    #: Seconds a distributor keeps a lost node's jobs before giving them to another node.
    node_grace_period: float = attrs.field(default=5.0, validator=_check(NUMBER, minimum=0))
    #: Seconds a new connection may take to say ``Hello`` before the distributor closes it
    #: (a port scanner or a stray client sending garbage does not hold a connection open).
    hello_timeout: float = attrs.field(default=10.0, validator=_check(NUMBER, minimum=0.001))
    #: A connection quiet this long gets a ``Heartbeat``; one silent for ``heartbeat_timeout``
    #: is dropped (a stopped or frozen peer is noticed within timeout + interval seconds).
    heartbeat_interval: float = attrs.field(default=1.0, validator=_check(NUMBER, minimum=0.01))
    heartbeat_timeout: float = attrs.field(default=5.0, validator=_check(NUMBER, minimum=0.02))
    #: Seconds a distributor keeps the outcomes meant for a remote client (or enqueueing
    #: node) that is away, for it to collect when it connects again under the same name.
    outcome_keep_seconds: float = attrs.field(default=3600.0, validator=_check(NUMBER, minimum=0))
    #: Seconds a distributor keeps each final outcome for look-ups (``outcome``, ``jr``) and
    #: its result handlers; expired outcomes are removed by an index, without a scan.
    result_ttl: float = attrs.field(default=86400.0, validator=_check(NUMBER, minimum=0))
    #: Seconds a stopping node lets running jobs finish before handing them back.
    shutdown_grace_period: float = attrs.field(default=10.0, validator=_check(NUMBER, minimum=0))
    #: A ``twistd jr-node`` process that finished this many job attempts drains and exits 0
    #: (``--processes`` starts another); 0: no limit.
    max_jobs: int = attrs.field(default=0, validator=_check(int, minimum=0))
    #: Likewise once its resident memory passes this many MiB; 0: no limit.
    max_memory_mb: float = attrs.field(default=0.0, validator=_check(NUMBER, minimum=0))
    #: Seconds a job waits in the distributor while the connected nodes said which jobs they
    #: run and none runs its name, before it fails (``NoSuchJob``); 0: fails at once.
    no_node_timeout: float = attrs.field(default=0.0, validator=_check(NUMBER, minimum=0))
    #: Global rate limits by job name on the distributor, e.g. ``{"call_api": "50/s"}``;
    #: they override a node's ``@job(rate_limit=)``.
    rate_limits: dict[str, str] = attrs.field(factory=dict, validator=_check_rate_limits)

    def __getitem__(self, name: str) -> Any:
        self._known(name)
        return getattr(self, name)

    def __setitem__(self, name: str, value: Any) -> None:
        self._known(name)
        setattr(self, name, value)

    def update(self, settings: Mapping[str, Any] | None = None, /, **more: Any) -> None:
        """Set several settings (a mapping, keywords or both, as ``dict.update``).

        Nothing changes if any of them is unknown or wrong.
        """
        settings = {**(settings or {}), **more}
        for name in settings:
            self._known(name)
        checked = attrs.evolve(self, **settings)
        for name in settings:
            setattr(self, name, getattr(checked, name))

    def _known(self, name: str) -> None:
        if name not in attrs.fields_dict(type(self)):
            known = ", ".join(attrs.fields_dict(type(self)))
            raise ConfigError(f"unknown setting {name!r}; the settings are: {known}")
