"""Storage in Redis through txredisapi: shared by many nodes, persistent as Redis is.

Layout (every key name is made by :class:`RedisKeys`, nowhere else), with ``P`` the prefix:

``P:nodes``
    set of the node names that have at least one job.
``P:node:NODE:jobs``
    hash: job id -> the JSON of :meth:`Job.to_wire` (so reading it back gives the same types).
``P:node:NODE:status:STATUS``
    set of the ids of NODE's jobs in STATUS, one set per :class:`Status`; a job is in exactly
    one of them. This per-node index finds a node's jobs, by status or not, in time
    proportional to that node's jobs: no KEYS, no SCAN over the database.
``P:node:NODE:lease``
    the lease on NODE's jobs: the owner string of the process working them, with an expiry
    (``SET NX PX``), renewed by that process every third of the lease and deleted (only if
    still its own) when it stops. A killed holder's lease ends when it expires.

Every change that touches several keys is one Lua script, so a crash never leaves a job
without its index entry or the other way round. Saves and removes are written in batches
(group commit, :mod:`jobreactor.storage.batching`): all those asked for in one reactor turn,
or while the previous batch was being written, go to Redis in one call of
:data:`WRITE_SCRIPT`, so one round trip serves them all; each caller's Deferred fires once
Redis has answered it.

The pool has one connection: txredisapi sends each command on a pooled connection at random,
so with more than one, two saves of the same job could reach Redis in the wrong order. With
one, commands are pipelined in the order they were issued. Every operation is bounded by
``timeout`` seconds (and a quarter), whether Redis is slow, unreachable or being reconnected
to: a ``save`` that cannot happen fails with :class:`StorageError` instead of waiting forever
(txredisapi's ``replyTimeout`` alone does not cover a command waiting for a connection).
``open()`` fails at once, without waiting for ``timeout``, when its first connection attempt
is refused (nothing listens on the port) or the host name does not resolve.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Collection
from pathlib import Path
from typing import Any, ClassVar

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectError, ConnectionRefusedError, DNSLookupError
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from jobreactor.errors import ConfigError
from jobreactor.jsontext import compact
from jobreactor.limits import printable
from jobreactor.model import Job, Status
from jobreactor.storage.base import IJobStorage, PermanentStorageError, StorageError
from jobreactor.storage.batching import Change, JobChanges, latest

log = Logger()

DEFAULT_PORT = 6379
DEFAULT_PREFIX = "jr"
DEFAULT_TIMEOUT = 5.0
#: Longest wait between two attempts to reconnect to a Redis that went away (txredisapi's
#: own default is 10 s, long for a node that cannot accept jobs meanwhile).
RECONNECT_MAX_DELAY = 2.0
#: Extra seconds the bound on a whole operation waits beyond ``timeout``: a command already
#: sent is then ended by txredisapi's own reply timeout, which also drops the connection (a
#: half-open one would otherwise fail every later command too), not by ours.
TIMEOUT_MARGIN = 0.25
#: The statuses in the order the Lua scripts receive their index keys.
STATUS_ORDER: tuple[Status, ...] = tuple(Status)

#: Query parameters a ``redis://`` or ``rediss://`` URL may carry.
URL_OPTIONS = ("prefix", "timeout")
TLS_URL_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")


@attrs.frozen
class RedisKeys:
    """The names of every Redis key jobreactor uses, all under ``prefix``."""

    prefix: str = DEFAULT_PREFIX

    def nodes(self) -> str:
        return f"{self.prefix}:nodes"

    def jobs(self, node: str) -> str:
        return f"{self.prefix}:node:{node}:jobs"

    def status(self, node: str, status: Status) -> str:
        return f"{self.prefix}:node:{node}:status:{status.value}"

    def lease(self, node: str) -> str:
        return f"{self.prefix}:node:{node}:lease"

    def statuses(self, node: str) -> list[str]:
        """The index keys of ``node``, one per status, in :data:`STATUS_ORDER`."""
        return [self.status(node, status) for status in STATUS_ORDER]


# A batch of saves and removes (at most one per job: see batching.latest), all or none.
# KEYS: the nodes set, then for each node of the batch its jobs hash and its status sets
# in STATUS_ORDER. ARGV: the number of statuses S, the number of nodes N, the N node names
# (in the order of their keys), then one value per change (one, not four: each value costs
# the client as much to encode as the JSON): "NODE STATUS SIZE IDJSON", with NODE the node's
# position (1-based), STATUS the position of the job's status in STATUS_ORDER (0: remove
# it), SIZE the length in bytes of the job id, then the id and the job's JSON (none).
WRITE_SCRIPT = """
local S = tonumber(ARGV[1])
local N = tonumber(ARGV[2])
for i = N + 3, #ARGV do
    local change = ARGV[i]
    local node, wanted, size, start = string.match(change, '^(%d+) (%d+) (%d+) ()')
    local jobs = 2 + (tonumber(node) - 1) * (S + 1)
    local after = start + tonumber(size)
    local id = string.sub(change, start, after - 1)
    wanted = tonumber(wanted)
    if wanted == 0 then
        redis.call('HDEL', KEYS[jobs], id)
    else
        redis.call('HSET', KEYS[jobs], id, string.sub(change, after))
    end
    for s = 1, S do
        if s == wanted then
            redis.call('SADD', KEYS[jobs + s], id)
        else
            redis.call('SREM', KEYS[jobs + s], id)
        end
    end
end
for n = 1, N do
    if redis.call('HLEN', KEYS[2 + (n - 1) * (S + 1)]) == 0 then
        redis.call('SREM', KEYS[1], ARGV[2 + n])
    else
        redis.call('SADD', KEYS[1], ARGV[2 + n])
    end
end
return 1
"""

#: The position of each status in STATUS_ORDER, as WRITE_SCRIPT numbers them (1-based).
_STATUS_POSITION = {status: index + 1 for index, status in enumerate(STATUS_ORDER)}

# KEYS: jobs hash, then the status sets wanted. Returns the JSON of those jobs.
# One HGET per id rather than HMGET with unpack(): Lua's stack limits unpack() to ~8000 values.
JOBS_BY_STATUS_SCRIPT = """
local found = {}
for i = 2, #KEYS do
    for _, id in ipairs(redis.call('SMEMBERS', KEYS[i])) do
        local data = redis.call('HGET', KEYS[1], id)
        if data then
            found[#found + 1] = data
        end
    end
end
return found
"""


# KEYS: the lease key. ARGV: owner, milliseconds. SET NX PX, except that the owner's own
# lease is extended instead (so one script acquires and renews). Returns 1 if owner holds it.
LEASE_SCRIPT = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 1
end
if not holder then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 1
end
return 0
"""

# KEYS: the lease key. ARGV: owner. Deletes the lease only if owner still holds it.
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


def _job_json(job: Job) -> str:
    return compact(job.to_wire())


@implementer(IJobStorage)
@attrs.define
class RedisStorage:
    """Jobs in the Redis at ``host:port``, database ``db``, under the key prefix ``prefix``.

    ``timeout`` (seconds) bounds connecting and every operation. ``tls`` is a client TLS
    connection creator (see :func:`twisted.internet.ssl.optionsForClientTLS`) or None for a
    plain connection. ``reactor`` is the one the timeouts are scheduled on.
    """

    host: str = "localhost"
    port: int = DEFAULT_PORT
    db: int = 0
    password: str | None = attrs.field(default=None, repr=False)
    username: str | None = None
    prefix: str = DEFAULT_PREFIX
    timeout: float = DEFAULT_TIMEOUT
    tls: Any = None
    reactor: IReactorTime | None = None
    keys: RedisKeys = attrs.field(init=False)
    leases_expire: ClassVar[bool] = True
    _redis: Any = attrs.field(default=None, init=False)
    _changes: JobChanges = attrs.field(init=False, eq=False, repr=False)
    #: Why the pool gave up connecting (a refused password, a bad db), for error messages.
    _connect_error: str | None = attrs.field(default=None, init=False)
    #: Why the first connection attempt of ``open()`` failed (nothing listens, unknown host).
    _unreachable: str | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        self.keys = RedisKeys(self.prefix)
        if self.reactor is None:
            from twisted.internet import reactor

            self.reactor = reactor  # type: ignore[assignment]
        assert self.reactor is not None
        self._changes = JobChanges(self._write_changes, self.reactor)

    def __str__(self) -> str:
        scheme = "rediss" if self.tls is not None else "redis"
        return f"{scheme}://{self.host}:{self.port}/{self.db}?prefix={self.prefix}"

    @classmethod
    def from_url(cls, url: str, reactor: IReactorTime | None = None) -> RedisStorage:
        """The storage a ``redis://`` or ``rediss://`` URL describes, or a :class:`ConfigError`.

        ``redis[s]://[[user]:password@]host[:port][/db][?prefix=jr&timeout=5]``; a
        ``rediss://`` URL also takes ``ssl_ca_certs`` (PEM file of the CAs to trust instead
        of the system's), ``ssl_certfile`` and ``ssl_keyfile`` (a client certificate), and
        ``ssl_cert_reqs=none`` (do not check the server's certificate: testing only).
        """
        return cls(reactor=reactor, **_parse_url(url))

    # -- IJobStorage -----------------------------------------------------------------

    def open(self) -> Deferred[None]:
        if self._redis is not None:
            return succeed(None)
        assert self.reactor is not None
        self._connect_error = None
        # Imported here: txredisapi imports the TLS stack (twisted.internet.ssl), which a
        # process that keeps no jobs in Redis need not load (docs/design.md).
        import txredisapi

        self._redis = txredisapi.lazyConnectionPool(
            host=self.host,
            port=self.port,
            dbid=self.db,
            poolsize=1,
            password=self.password,
            username=self.username,
            ssl_context_factory=self.tls if self.tls is not None else False,
            connectTimeout=self.timeout,
            replyTimeout=self.timeout,
            convertNumbers=False,
        )
        # txredisapi offers no setting for these; both are plain attributes of its factory.
        self._redis._factory.maxDelay = RECONNECT_MAX_DELAY
        self._redis._connected.addErrback(self._gave_up)

        def failed(failure: Failure) -> Deferred[None]:
            return self.close().addCallback(lambda _: failure)  # type: ignore[return-value]

        self._unreachable = None
        pinged = self._call("connecting", lambda redis: redis.ping())
        # The pool retries a failed connection attempt silently, so the ping above would wait
        # its whole timeout for a port where nothing listens: the first attempt's failure
        # ends it at once instead. (A node whose open() fails tries again; see Node._start.)
        for slot in getattr(self._redis._factory, "slots", ()):
            first = slot.service.whenConnected(failAfterFailures=1)
            first.addErrback(self._first_attempt_failed, pinged)
        return pinged.addCallbacks(lambda _: None, failed)

    def save(self, node: str, job: Job) -> Deferred[None]:
        if self._redis is None:
            return self._call(f"saving job {job.id} of node {node}", None)  # not open
        return self._changes.save(node, job, _job_json(job))

    def load(self, node: str, job_id: str) -> Deferred[Job | None]:
        loaded = self._after_changes(
            f"loading job {job_id} of node {node}",
            lambda redis: redis.hget(self.keys.jobs(node), job_id),
        )
        return loaded.addCallback(lambda data: None if data is None else self._decode(data, node))

    def remove(self, node: str, job_id: str) -> Deferred[None]:
        if self._redis is None:
            return self._call(f"removing job {job_id} of node {node}", None)  # not open
        return self._changes.remove(node, job_id)

    def _write_changes(self, changes: list[Change]) -> Deferred[None]:
        """One script call for a batch: only the last change of each job is written."""
        keys = [self.keys.nodes()]
        nodes: dict[str, int] = {}
        values: list[bytes] = []
        for change in latest(changes):
            position = nodes.get(change.node)
            if position is None:
                position = nodes[change.node] = len(nodes) + 1
                keys += [self.keys.jobs(change.node), *self.keys.statuses(change.node)]
            job = change.job
            status = 0 if job is None else _STATUS_POSITION[job.status]
            ident = change.job_id.encode()
            data = (change.data or "").encode()
            values.append(b"%d %d %d %s%s" % (position, status, len(ident), ident, data))
        args = [len(STATUS_ORDER), len(nodes), *nodes, *values]
        written = self._call(
            f"writing {len(changes)} job changes in one script call",
            lambda redis: redis.eval(WRITE_SCRIPT, keys, args),
        )
        return written.addCallback(lambda _: None)

    def _after_changes(self, doing: str, command: Any) -> Deferred[Any]:
        """Run ``command`` once the changes asked for before it are written (or failed)."""
        if self._changes.idle:
            return self._call(doing, command)
        settled = self._changes.settled()
        return settled.addCallback(lambda _: self._call(doing, command))

    def jobs_for(
        self, node: str, statuses: Collection[Status] | None = None
    ) -> Deferred[list[Job]]:
        doing = f"listing the jobs of node {node}"
        if statuses is None:
            found = self._after_changes(doing, lambda redis: redis.hvals(self.keys.jobs(node)))
        else:
            wanted = {Status(status) for status in statuses}
            if not wanted:
                return succeed([])
            keys = [
                self.keys.jobs(node),
                *(self.keys.status(node, s) for s in STATUS_ORDER if s in wanted),
            ]
            found = self._after_changes(
                doing, lambda redis: redis.eval(JOBS_BY_STATUS_SCRIPT, keys, [])
            )
        return found.addCallback(lambda values: self._decode_readable(values or [], node))

    def _decode_readable(self, values: list[Any], node: str) -> list[Job]:
        """The jobs of ``values``; an unreadable one is logged and set aside (left stored)."""
        jobs = []
        for value in values:
            try:
                jobs.append(self._decode(value, node))
            except StorageError as error:
                log.warn("{error}; set aside (left stored)", error=printable(error, 500))
        return jobs

    def unreadable(self, node: str) -> Deferred[list[tuple[str, str]]]:
        """``(id, why)`` of the stored jobs of ``node`` that cannot be read (set aside)."""
        found = self._after_changes(
            f"looking for unreadable jobs of node {node}",
            lambda redis: redis.hgetall(self.keys.jobs(node)),
        )

        def check(values: dict[Any, Any]) -> list[tuple[str, str]]:
            bad = []
            for job_id, data in (values or {}).items():
                try:
                    self._decode(data, node)
                except StorageError as error:
                    bad.append((_text(job_id), str(error)))
            return sorted(bad)

        return found.addCallback(check)

    def nodes(self) -> Deferred[list[str]]:
        found = self._after_changes(
            "listing the nodes", lambda redis: redis.smembers(self.keys.nodes())
        )
        return found.addCallback(lambda names: sorted(_text(name) for name in names or ()))

    def acquire_lease(self, node: str, owner: str, seconds: float) -> Deferred[bool]:
        return self._lease(f"taking the lease of node {node}", node, owner, seconds)

    def renew_lease(self, node: str, owner: str, seconds: float) -> Deferred[bool]:
        return self._lease(f"renewing the lease of node {node}", node, owner, seconds)

    def release_lease(self, node: str, owner: str) -> Deferred[None]:
        keys = [self.keys.lease(node)]
        # Behind every change already asked for: the next holder reads them all.
        released = self._after_changes(
            f"releasing the lease of node {node}",
            lambda redis: redis.eval(RELEASE_SCRIPT, keys, [owner]),
        )
        return released.addCallback(lambda _: None)

    def _lease(self, doing: str, node: str, owner: str, seconds: float) -> Deferred[bool]:
        keys, milliseconds = [self.keys.lease(node)], max(1, round(seconds * 1000))
        held = self._call(
            doing, lambda redis: redis.eval(LEASE_SCRIPT, keys, [owner, milliseconds])
        )
        return held.addCallback(lambda answer: int(answer) == 1)

    def close(self) -> Deferred[None]:
        # The changes asked for so far are written (or have failed) first: none is lost.
        if not self._changes.idle:
            return self._changes.settled().addCallback(lambda _: self.close())
        redis, self._redis = self._redis, None
        if redis is None:
            return succeed(None)
        assert self.reactor is not None
        closing: Deferred[Any] = redis.disconnect()
        closing.addTimeout(self.timeout, self.reactor)
        return closing.addBoth(lambda _: None)  # closing is best effort: nothing to report

    # -- helpers -----------------------------------------------------------------------

    def _gave_up(self, failure: Failure) -> None:
        self._connect_error = failure.getErrorMessage()

    def _first_attempt_failed(self, failure: Failure, pinged: Deferred[Any]) -> None:
        # A connect timeout is reported as such by the ping's own timeout; CancelledError
        # means the pool was closed.
        if not failure.check(ConnectError, DNSLookupError) or failure.check(ConnectTimeoutError):
            return
        if failure.check(ConnectionRefusedError):
            reason = "connection refused"
        else:
            reason = failure.getErrorMessage()

        def give_up() -> None:
            if not pinged.called:
                self._unreachable = reason
                pinged.cancel()

        # Not at once: this runs inside a state change of the pool's ClientService, which
        # closing the pool (what a failed open() does) would re-enter.
        assert self.reactor is not None
        self.reactor.callLater(0, give_up)

    def _call(self, doing: str, command: Any) -> Deferred[Any]:
        """Run ``command(pool)`` within ``timeout``, turning every failure into StorageError."""
        if self._redis is None:
            return defer.fail(StorageError(f"{self}: {doing}: the storage is not open"))
        assert self.reactor is not None
        try:
            running: Deferred[Any] = command(self._redis)
        except Exception as error:  # txredisapi raises some errors before its Deferred exists
            running = defer.fail(error)
        running.addTimeout(self.timeout + TIMEOUT_MARGIN, self.reactor)
        return running.addErrback(self._explain, doing)

    def _explain(self, failure: Failure, doing: str) -> Failure:
        import txredisapi  # imported by open() already

        if failure.check(StorageError):
            return failure
        if failure.check(defer.CancelledError) and self._unreachable is not None:
            reason = self._unreachable
        elif failure.check(defer.TimeoutError, txredisapi.TimeoutError):
            reason = f"no answer within {self.timeout:g} s"
        else:
            reason = failure.getErrorMessage() or type(failure.value).__name__
        if self._connect_error is not None:
            reason = f"{reason} ({self._connect_error})"
        if any(word in reason.upper() for word in ("NOAUTH", "WRONGPASS", "INVALID PASSWORD")):
            raise PermanentStorageError(
                f"{self}: {doing}: {reason} (the password in the URL is wrong or missing)"
            ) from failure.value
        raise StorageError(f"{self}: {doing}: {reason}") from failure.value

    def _decode(self, data: str | bytes, node: str) -> Job:
        try:
            return Job.from_wire(json.loads(data))
        except ValueError as error:  # bad JSON, or InvalidJobError
            raise StorageError(
                f"{self}: a stored job of node {node} is unreadable: {error}"
            ) from None


def _text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _parse_url(url: str) -> dict[str, Any]:
    """The RedisStorage arguments of ``url``; a ConfigError names the first thing wrong."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise ConfigError(f"redis storage URL {_safe(url)!r} does not parse: {error}") from None
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigError(f"redis storage URL {_safe(url)!r} must start with redis:// or rediss://")
    if parts.fragment:
        raise ConfigError(f"redis storage URL {_safe(url)!r} must not have a #fragment")
    options: dict[str, Any] = {
        "host": parts.hostname or "localhost",
        "port": DEFAULT_PORT if port is None else port,
    }
    if parts.password is not None:
        options["password"] = urllib.parse.unquote(parts.password)
    if parts.username:
        options["username"] = urllib.parse.unquote(parts.username)
    path = parts.path.strip("/")
    if path:
        if not path.isdigit():
            raise ConfigError(
                f"redis storage URL {_safe(url)!r}: the database must be a number, not {path!r}"
            )
        options["db"] = int(path)
    try:
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
    except ValueError as error:
        raise ConfigError(f"redis storage URL {_safe(url)!r}: bad query: {error}") from None
    known = URL_OPTIONS + (TLS_URL_OPTIONS if parts.scheme == "rediss" else ())
    unknown = sorted(set(query) - set(known))
    if unknown:
        hint = " (TLS options need rediss://)" if set(unknown) & set(TLS_URL_OPTIONS) else ""
        raise ConfigError(
            f"redis storage URL {_safe(url)!r}: unknown option(s) {', '.join(unknown)}{hint}; "
            f"known: {', '.join(known)}"
        )
    value: dict[str, str] = {}
    for name, values in query.items():
        if len(values) != 1:
            raise ConfigError(f"redis storage URL {_safe(url)!r}: option {name} is given twice")
        value[name] = values[0]
    if "prefix" in value:
        if not value["prefix"]:
            raise ConfigError(f"redis storage URL {_safe(url)!r}: prefix must not be empty")
        options["prefix"] = value["prefix"]
    if "timeout" in value:
        try:
            timeout = float(value["timeout"])
        except ValueError:
            timeout = -1.0
        if not 0 < timeout < float("inf"):
            raise ConfigError(
                f"redis storage URL {_safe(url)!r}: timeout must be a positive number of "
                f"seconds, not {value['timeout']!r}"
            )
        options["timeout"] = timeout
    if parts.scheme == "rediss":
        options["tls"] = _tls_options(url, options["host"], value)
    return options


def _tls_options(url: str, host: str, value: dict[str, str]) -> Any:
    try:
        from twisted.internet import ssl  # needs pyOpenSSL: Twisted's "tls" extra
    except ImportError as error:
        raise ConfigError(
            f"redis storage URL {_safe(url)!r}: rediss:// needs TLS support, which is missing "
            f"({error}); install twisted[tls]"
        ) from None

    def read(name: str) -> str:
        try:
            return Path(value[name]).read_text()
        except OSError as error:
            raise ConfigError(
                f"redis storage URL {_safe(url)!r}: cannot read {name} {value[name]!r}: "
                f"{error.strerror}"
            ) from None

    reqs = value.get("ssl_cert_reqs", "required")
    if reqs not in ("required", "none"):
        raise ConfigError(
            f"redis storage URL {_safe(url)!r}: ssl_cert_reqs must be required or none, "
            f"not {reqs!r}"
        )
    if ("ssl_certfile" in value) != ("ssl_keyfile" in value):
        raise ConfigError(
            f"redis storage URL {_safe(url)!r}: ssl_certfile and ssl_keyfile go together"
        )
    try:
        client = None
        if "ssl_certfile" in value:
            client = ssl.PrivateCertificate.loadPEM(read("ssl_certfile") + read("ssl_keyfile"))
        if reqs == "none":
            extra: dict[str, Any] = {}
            if client is not None:
                extra = {"privateKey": client.privateKey.original, "certificate": client.original}
            return ssl.CertificateOptions(verify=False, **extra)
        trust = (
            ssl.trustRootFromCertificates(
                [ssl.Certificate.loadPEM(pem.encode()) for pem in _pem_blocks(read("ssl_ca_certs"))]
            )
            if "ssl_ca_certs" in value
            else ssl.platformTrust()
        )
        return ssl.optionsForClientTLS(host, trustRoot=trust, clientCertificate=client)
    except ConfigError:
        raise
    except Exception as error:  # pyOpenSSL's errors for a malformed PEM file
        raise ConfigError(
            f"redis storage URL {_safe(url)!r}: bad TLS certificate or key: {error}"
        ) from None


def _pem_blocks(text: str) -> list[str]:
    end = "-----END CERTIFICATE-----"
    blocks = [block + end for block in text.split(end) if "-----BEGIN CERTIFICATE-----" in block]
    if not blocks:
        raise ValueError("no certificate in ssl_ca_certs")
    return blocks


def _safe(url: str) -> str:
    """``url`` without its password, fit for an error message."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = parts.username or ""
        return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
    except ValueError:
        return "<a redis URL>"
