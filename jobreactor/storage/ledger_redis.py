"""The distributor's ledger in Redis: one Lua script call per batch (atomic group commit).

Keys, with ``P`` the URL's prefix (made here, and only here, by :class:`LedgerKeys`):

``P:dist:meta``          hash: ``id``.
``P:dist:jobs``          hash: job id -> entry JSON (``seq`` inside keeps the order).
``P:dist:nodes``         hash: job id -> the node holding it.
``P:dist:outcomes``      hash: job id -> outcome JSON.
``P:dist:expiry``        sorted set: job id scored by when its outcome expires.
``P:dist:pending``       set: outcomes whose handlers have to run.
``P:dist:unhandled``     set: outcomes whose handlers gave up.
``P:dist:undelivered``   set: outcomes not yet delivered to their remote origin.
``P:dist:status:S``      sorted set per outcome status (done, failed, cancelled): job id
                         scored by when it finished, so a listing reads only what it shows.

Two distributors must not share a prefix (``?prefix=`` in the URL).
"""

from __future__ import annotations

import json
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from zope.interface import implementer

from jobreactor.results import HANDLER_DONE, HANDLER_PENDING, Outcome
from jobreactor.storage.ledger import IDistributorStorage, Operation, outcome_from_row
from jobreactor.storage.redis import RedisStorage

#: Outcomes one ``expire`` call removes at most (it runs again soon if there are more).
EXPIRE_BATCH = 1000


@attrs.frozen
class LedgerKeys:
    prefix: str

    def all(self) -> list[str]:
        return [
            f"{self.prefix}:dist:{name}"
            for name in (
                "meta",
                "jobs",
                "nodes",
                "outcomes",
                "expiry",
                "pending",
                "unhandled",
                "undelivered",
                "status:done",
                "status:failed",
                "status:cancelled",
            )
        ]


# KEYS: LedgerKeys.all(). ARGV[1]: the operations as a JSON list.
WRITE_SCRIPT = """
local STATUS_KEYS = {done = 9, failed = 10, cancelled = 11}
local ops = cjson.decode(ARGV[1])
for _, op in ipairs(ops) do
    local kind, id = op[1], op[2]
    if kind == 'job' then
        redis.call('HSET', KEYS[2], id, op[3])
    elseif kind == 'assign' then
        if op[3] == cjson.null then
            redis.call('HDEL', KEYS[3], id)
        else
            redis.call('HSET', KEYS[3], id, op[3])
        end
    elseif kind == 'drop' then
        redis.call('HDEL', KEYS[2], id)
        redis.call('HDEL', KEYS[3], id)
    elseif kind == 'outcome' then
        redis.call('HSET', KEYS[4], id, op[3])
        redis.call('ZADD', KEYS[5], op[4], id)
        local by_status = STATUS_KEYS[op[9]]
        if by_status then redis.call('ZADD', KEYS[by_status], op[10], id) end
        if op[7] == 'pending' then redis.call('SADD', KEYS[6], id) end
        if op[7] == 'unhandled' then redis.call('SADD', KEYS[7], id) end
        if op[6] == 0 then redis.call('SADD', KEYS[8], id) end
    elseif kind == 'delivered' then
        redis.call('SREM', KEYS[8], id)
    elseif kind == 'handled' then
        redis.call('SREM', KEYS[6], id)
        if op[3] == 'unhandled' then
            redis.call('SADD', KEYS[7], id)
        else
            redis.call('SREM', KEYS[7], id)
        end
    end
end
return #ops
"""

# KEYS: LedgerKeys.all(). ARGV: now, batch size. Returns how many outcomes were removed.
EXPIRE_SCRIPT = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
    redis.call('HDEL', KEYS[4], id)
    redis.call('ZREM', KEYS[5], id)
    redis.call('SREM', KEYS[6], id)
    redis.call('SREM', KEYS[7], id)
    redis.call('SREM', KEYS[8], id)
    redis.call('ZREM', KEYS[9], id)
    redis.call('ZREM', KEYS[10], id)
    redis.call('ZREM', KEYS[11], id)
end
return #ids
"""

# KEYS: LedgerKeys.all(). Returns a flat list: entry JSON, node (or '') for every owned job.
JOBS_SCRIPT = """
local found = {}
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
    found[#found + 1] = all[i + 1]
    found[#found + 1] = redis.call('HGET', KEYS[3], all[i]) or ''
end
return found
"""

# KEYS: LedgerKeys.all(). ARGV: which key (index into KEYS), whether it is a sorted set
# (1: newest first, at most ARGV[3]) or a set (0: all its members).
# Returns flat: data, handled state, delivered (1/0) per outcome.
OUTCOMES_SCRIPT = """
local ids
local which = tonumber(ARGV[1])
if ARGV[2] == '1' then
    ids = redis.call('ZREVRANGE', KEYS[which], 0, tonumber(ARGV[3]) - 1)
else
    ids = redis.call('SMEMBERS', KEYS[which])
end
local found = {}
for _, id in ipairs(ids) do
    local data = redis.call('HGET', KEYS[4], id)
    if data then
        local state = 'handled'
        if redis.call('SISMEMBER', KEYS[6], id) == 1 then state = 'pending' end
        if redis.call('SISMEMBER', KEYS[7], id) == 1 then state = 'unhandled' end
        found[#found + 1] = data
        found[#found + 1] = state
        found[#found + 1] = 1 - redis.call('SISMEMBER', KEYS[8], id)
    end
end
return found
"""

#: Where each selection of ``outcomes()`` reads: (key index, sorted by time).
_SELECTIONS = {
    "all": (5, True),
    "pending": (6, False),
    "unhandled": (7, False),
    "undelivered": (8, False),
    "done": (9, True),
    "failed": (10, True),
    "cancelled": (11, True),
}


@implementer(IDistributorStorage)
@attrs.define
class RedisLedger:
    """A distributor's ledger in the Redis of ``server`` (its connection, its timeouts)."""

    server: RedisStorage
    #: Outcomes one ``expire`` call removes at most: the distributor sweeps again at once
    #: when a call removed this many (one Lua call must not hold Redis for long).
    expire_batch: int = EXPIRE_BATCH
    durable: bool = attrs.field(default=True, init=False)
    keys: list[str] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.keys = LedgerKeys(self.server.prefix).all()

    def __str__(self) -> str:
        return str(self.server)

    def open(self) -> Deferred[None]:
        return self.server.open()

    def identity(self, new_id: str) -> Deferred[str]:
        meta = self.keys[0]

        def ask(redis: Any) -> Deferred[Any]:
            done: Deferred[Any] = redis.hsetnx(meta, "id", new_id)
            got: Deferred[Any] = done.addCallback(lambda _: redis.hget(meta, "id"))
            return got

        found = self.server._call("reading the distributor's id", ask)
        return found.addCallback(lambda value: _text(value))

    def write(self, operations: list[Operation]) -> Deferred[None]:
        data = json.dumps(operations, separators=(",", ":"))
        done = self.server._call(
            f"writing {len(operations)} changes",
            lambda redis: redis.eval(WRITE_SCRIPT, self.keys, [data]),
        )
        return done.addCallback(lambda _: None)

    def jobs(self) -> Deferred[list[dict[str, Any]]]:
        found = self.server._call(
            "loading the distributor's jobs", lambda redis: redis.eval(JOBS_SCRIPT, self.keys, [])
        )

        def decode(flat: list[Any]) -> list[dict[str, Any]]:
            records = []
            for index in range(0, len(flat or []), 2):
                record = json.loads(flat[index])
                record["node"] = _text(flat[index + 1]) or None
                records.append(record)
            records.sort(key=lambda record: record["seq"])
            return records

        return found.addCallback(decode)

    def outcome(self, job_id: str) -> Deferred[Outcome | None]:
        def ask(redis: Any) -> Any:
            return redis.eval(
                "local d = redis.call('HGET', KEYS[4], ARGV[1]) if not d then return nil end "
                "local s = 'handled' "
                "if redis.call('SISMEMBER', KEYS[6], ARGV[1]) == 1 then s = 'pending' end "
                "if redis.call('SISMEMBER', KEYS[7], ARGV[1]) == 1 then s = 'unhandled' end "
                "return {d, s}",
                self.keys,
                [job_id],
            )

        found = self.server._call(f"loading the outcome of job {job_id}", ask)
        return found.addCallback(
            lambda pair: None if not pair else outcome_from_row(pair[0], _text(pair[1]), None)
        )

    def outcomes(self, which: str, limit: int) -> Deferred[list[Outcome]]:
        index, ordered = _SELECTIONS[which]
        found = self.server._call(
            f"listing {which} outcomes",
            lambda redis: redis.eval(
                OUTCOMES_SCRIPT, self.keys, [index, int(ordered), max(limit, 1)]
            ),
        )

        def decode(flat: list[Any]) -> list[Outcome]:
            outcomes = [
                outcome_from_row(flat[i], _text(flat[i + 1]), flat[i + 2])
                for i in range(0, len(flat or []), 3)
            ]
            oldest_first = which in ("pending", "undelivered")
            outcomes.sort(key=lambda outcome: outcome.finished_at, reverse=not oldest_first)
            return outcomes[:limit]

        return found.addCallback(decode)

    def expire(self, now: float) -> Deferred[int]:
        done = self.server._call(
            "removing expired outcomes",
            lambda redis: redis.eval(EXPIRE_SCRIPT, self.keys, [repr(now), self.expire_batch]),
        )
        return done.addCallback(lambda count: int(count or 0))

    def close(self) -> Deferred[None]:
        return self.server.close()


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


__all__ = ["HANDLER_DONE", "HANDLER_PENDING", "LedgerKeys", "RedisLedger"]
