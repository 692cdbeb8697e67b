"""The durable distributor on a Clock: group commit, reload order, outcomes, retry, result
handlers and their backoff, and outcome expiry.

The distributor runs in process with nodes joined in memory (:class:`LocalCluster`); its
storage is a real SQLite file (written by the real reactor's thread pool, so the tests let the
reactor turn between clock steps) and, where the behaviour does not depend on the storage,
memory too.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock, deferLater
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from zope.interface import implementer

from jobreactor import Client, Config, JobRegistry, job
from jobreactor.definitions import registering_into
from jobreactor.distributor import dispatch
from jobreactor.distributor.ledger import RETRY_FIRST, GroupCommit
from jobreactor.results import HandlerRegistry, Outcome, on_result, registering_handlers_into
from jobreactor.storage import RedisStorage, SQLiteStorage
from jobreactor.storage.ledger import Operation
from jobreactor.storage.ledger_redis import RedisLedger
from jobreactor.storage.ledger_sqlite import SQLiteLedger
from jobreactor.testing import LocalCluster
from tests.storage.conftest import RedisServer

# -- group commit, on a fake storage --------------------------------------------------------


@attrs.define
class RecordingStorage:
    """A durable storage whose writes the test completes (or fails) by hand."""

    durable: bool = True
    batches: list[list[Operation]] = attrs.Factory(list)
    pending: list[Deferred[None]] = attrs.Factory(list)

    def write(self, operations: list[Operation]) -> Deferred[None]:
        self.batches.append(list(operations))
        written: Deferred[None] = Deferred()
        self.pending.append(written)
        return written


def fired(deferred: Deferred[Any]) -> bool:
    seen: list[Any] = []

    def note(result: Any) -> Any:
        seen.append(result)
        return result

    deferred.addBoth(note)
    return bool(seen)


def test_group_commit_writes_what_a_turn_added_in_one_batch() -> None:
    clock, storage = Clock(), RecordingStorage()
    commit = GroupCommit(storage, clock)
    for n in range(3):
        commit.add(("drop", f"job-{n}"))
    first = commit.written()
    assert storage.batches == [], "nothing is written during the turn that adds"
    clock.advance(0)
    assert storage.batches == [[("drop", "job-0"), ("drop", "job-1"), ("drop", "job-2")]]
    commit.add(("drop", "job-3"))  # while the first batch is being written
    commit.add(("drop", "job-4"))
    second = commit.written()
    clock.advance(0)
    assert len(storage.batches) == 1, "one write at a time: the next batch gathers"
    storage.pending[0].callback(None)
    assert fired(first) and not fired(second)
    clock.advance(0)
    assert storage.batches[1] == [("drop", "job-3"), ("drop", "job-4")]
    storage.pending[1].callback(None)
    assert fired(second) and commit.idle


def test_group_commit_holds_a_failed_batch_and_its_waiters_until_a_retry_writes_it() -> None:
    clock, storage = Clock(), RecordingStorage()
    commit = GroupCommit(storage, clock)
    commit.add(("drop", "a"))
    waiting = commit.written()
    clock.advance(0)
    storage.pending[0].errback(ConnectionError("storage is down"))
    assert not fired(waiting), "no acknowledgement for a change that was not written"
    commit.add(("drop", "b"))
    clock.advance(RETRY_FIRST / 2)
    assert len(storage.batches) == 1, "the retry waits for its backoff"
    clock.advance(RETRY_FIRST / 2)
    assert storage.batches[1] == [("drop", "a"), ("drop", "b")], "the failed batch goes first"
    storage.pending[1].errback(ConnectionError("still down"))
    clock.advance(RETRY_FIRST)
    assert len(storage.batches) == 2, "the backoff doubled"
    clock.advance(RETRY_FIRST)
    assert storage.batches[2] == [("drop", "a"), ("drop", "b")]
    storage.pending[2].callback(None)
    assert fired(waiting) and commit.idle


def test_group_commit_on_memory_applies_at_once() -> None:
    written: list[list[Operation]] = []

    @attrs.define
    class Memory:
        durable: bool = False

        def write(self, operations: list[Operation]) -> Deferred[None]:
            written.append(operations)
            return succeed(None)

    commit = GroupCommit(Memory(), Clock())
    commit.add(("drop", "a"))
    assert written == [[("drop", "a")]]
    assert fired(commit.written())


# -- a distributor with storage, nodes in memory -----------------------------------------------

ran: list[tuple[str, int]] = []
handler_calls: list[tuple[str, int, float]] = []


@pytest.fixture
def registry() -> JobRegistry:
    ran.clear()
    registry = JobRegistry()
    with registering_into(registry):

        @job("work")
        def work(args: dict[str, Any]) -> None:
            ran.append(("work", args["n"]))
            args["done"] = True

        @job("flaky", max_attempt=1)
        def flaky(args: dict[str, Any]) -> None:
            ran.append(("flaky", args["n"]))
            if sum(1 for name, _ in ran if name == "flaky") == 1:
                raise ValueError("first run fails")

    return registry


@pytest.fixture
def handlers() -> HandlerRegistry:
    """``work`` outcomes go to a handler that always raises (3 attempts); ``async_ok`` to
    an ``async def`` handler that succeeds."""
    handler_calls.clear()
    registry = HandlerRegistry()
    with registering_handlers_into(registry):

        @on_result("work", max_attempt=3)
        def broken(outcome: Outcome) -> None:
            handler_calls.append((outcome.job_id, outcome.run, clock_of[0].seconds()))
            raise RuntimeError("handler is broken")

        @on_result("flaky")
        async def noted(outcome: Outcome) -> None:
            handler_calls.append((outcome.job_id, outcome.run, clock_of[0].seconds()))

    return registry


#: The clock of the cluster under test (handlers read it for their call times).
clock_of: list[Clock] = [Clock()]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One redis-server for this module; each test takes a prefix of its own."""
    server = RedisServer(tmp_path_factory.mktemp("redis-durability"), appendonly=False)
    server.start()
    yield server.url
    server.stop()


@pytest.fixture(params=["sqlite", "redis", "memory"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _storage_url(request, tmp_path)


@pytest.fixture(params=["sqlite", "redis"])
def durable_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _storage_url(request, tmp_path)


def _storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'distributor.db'}"
    if request.param == "redis":
        url: str = request.getfixturevalue("redis_url")
        return f"{url}?prefix={uuid.uuid4().hex[:8]}&timeout=2"
    return "memory"


async def settle(cluster: LocalCluster, done: Callable[[], bool] | None = None) -> None:
    """Run the cluster until ``done()`` (by default: until its storage has nothing left to
    write), letting the real reactor turn for the SQLite thread's results."""
    ledger = cluster.distributor._ledger
    for _ in range(2000):
        cluster.run()
        if done() if done is not None else ledger.idle:
            return
        await deferLater(reactor, 0.002, lambda: None)
    raise AssertionError("the cluster did not settle within a few seconds")


async def result_of(cluster: LocalCluster, deferred: Deferred[Any]) -> Any:
    seen: list[Any] = []
    deferred.addBoth(seen.append)
    await settle(cluster, lambda: bool(seen))
    if not seen:
        raise AssertionError(f"{deferred} did not fire")
    if hasattr(seen[0], "raiseException"):
        seen[0].raiseException()
    return seen[0]


async def started(
    registry: JobRegistry,
    storage: str | Any,
    handlers: HandlerRegistry | None = None,
    config: Config | None = None,
) -> LocalCluster:
    cluster = LocalCluster(registry, config=config, storage=storage, handlers=handlers)
    clock_of[0] = cluster.clock
    await result_of(cluster, cluster.distributor.when_listening())  # reloaded
    return cluster


async def stopped(cluster: LocalCluster) -> None:
    """Stop the cluster; time moves on, for a distributor that waits for a frozen node."""
    seen: list[Any] = []
    cluster.stop().addBoth(seen.append)
    for _ in range(200):
        cluster.run()
        if seen:
            return
        await deferLater(reactor, 0.002, lambda: None)
        cluster.clock.advance(0.1)
    raise AssertionError("the cluster did not stop")


@pytest_twisted.ensureDeferred
async def test_waiting_jobs_are_reloaded_in_priority_then_fifo_order(
    registry: JobRegistry, tmp_path: Path
) -> None:
    storage = f"sqlite:{tmp_path / 'distributor.db'}"
    first = await started(registry, storage)
    priorities = [0, 5, 0, 5, -1, 0, 9]
    handles = [
        first.distributor.enqueue("work", {"n": n}, priority=priority)
        for n, priority in enumerate(priorities)
    ]
    for handle in handles:
        assert await result_of(first, handle.accepted) == handle.id
    identity = first.distributor.id
    await stopped(first)  # no node ever came: all seven wait

    second = await started(registry, storage)
    assert second.distributor.id == identity, "a restarted distributor is the same one"
    assert second.distributor.waiting == len(priorities)
    second.add_node("worker", slots=1)  # one at a time: the order they run in is the order
    await settle(second, lambda: len(ran) == len(priorities))
    assert ran == [("work", n) for n in (6, 1, 3, 0, 2, 5, 4)]
    await stopped(second)


@pytest_twisted.ensureDeferred
async def test_reloaded_jobs_deep_in_the_line_wait_packed_and_keep_order_and_keys(
    registry: JobRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dispatch, "PACK_BEYOND", 2)
    storage = f"sqlite:{tmp_path / 'distributor.db'}"
    first = await started(registry, storage)
    priorities = [0, 5, 0, 5, -1, 0, 9]
    handles = [
        first.distributor.enqueue("work", {"n": n}, priority=priority, unique_key=f"k{n}")
        for n, priority in enumerate(priorities)
    ]
    for handle in handles:
        assert await result_of(first, handle.accepted) == handle.id
    await stopped(first)

    second = await started(registry, storage)
    owned = second.distributor._owned
    assert sum(owned[h.id].packed is not None for h in handles) == len(priorities) - 2
    # The keys were taken again at the reload (which read every job), and the jobs
    # packed after it: a second enqueue with a key gets the packed job.
    again = second.distributor.enqueue("work", {"n": 99}, unique_key="k4")
    assert again.id == handles[4].id
    assert owned[handles[4].id].job == attrs.evolve(
        owned[handles[4].id].job, args={"n": 4}, priority=-1, unique_key="k4"
    )
    second.add_node("worker", slots=1)
    await settle(second, lambda: len(ran) == len(priorities))
    assert ran == [("work", n) for n in (6, 1, 3, 0, 2, 5, 4)]
    await stopped(second)


@pytest_twisted.ensureDeferred
async def test_outcome_is_stored_and_retry_runs_the_same_job_again(
    registry: JobRegistry, storage_url: str
) -> None:
    cluster = await started(registry, storage_url)
    cluster.add_node("worker")
    failing = cluster.distributor.enqueue("flaky", {"n": 7})
    with pytest.raises(Exception, match="first run fails"):
        await result_of(cluster, failing.deferred)
    outcome = await result_of(cluster, cluster.distributor.outcome(failing.id))
    assert (outcome.job_id, outcome.name, outcome.status) == (failing.id, "flaky", "failed")
    assert (outcome.error, outcome.error_type, outcome.run) == ("first run fails", "ValueError", 1)
    assert outcome.args["n"] == 7
    listed = await result_of(cluster, cluster.distributor.outcomes("failed"))
    assert [o.job_id for o in listed] == [failing.id]

    assert await result_of(cluster, cluster.distributor.retry(failing.id)) == failing.id
    await settle(cluster, lambda: len(ran) == 2)
    again = await result_of(cluster, cluster.distributor.outcome(failing.id))
    assert ran == [("flaky", 7), ("flaky", 7)], "same id, same args"
    assert (again.status, again.run, again.error) == ("done", 2, None)

    with pytest.raises(KeyError, match="no stored outcome"):
        await result_of(cluster, cluster.distributor.retry("no-such-job"))
    waiting = cluster.distributor.enqueue("work", {"n": 1}, after=60)
    with pytest.raises(ValueError, match="not finished"):
        await result_of(cluster, cluster.distributor.retry(waiting.id))
    assert await result_of(cluster, cluster.distributor.outcome(waiting.id)) is None
    waiting.cancel()
    await stopped(cluster)


@pytest_twisted.ensureDeferred
async def test_a_raising_handler_is_retried_with_backoff_then_left_unhandled(
    registry: JobRegistry, handlers: HandlerRegistry, storage_url: str
) -> None:
    cluster = await started(registry, storage_url, handlers)
    cluster.add_node("worker")
    handle = cluster.distributor.enqueue("work", {"n": 1})
    await result_of(cluster, handle.deferred)
    await settle(cluster, lambda: len(handler_calls) == 1)
    stored = await result_of(cluster, cluster.distributor.outcome(handle.id))
    assert stored.handled == "pending"
    start = handler_calls[0][2]
    for _ in range(10):
        cluster.advance(1)
        await settle(cluster)
    assert [(job_id, run) for job_id, run, _ in handler_calls] == [(handle.id, 1)] * 3
    assert [at - start for _, _, at in handler_calls] == [0, 1, 3], "1 s, then 2 s"
    stored = await result_of(cluster, cluster.distributor.outcome(handle.id))
    assert stored.handled == "unhandled"
    unhandled = await result_of(cluster, cluster.distributor.outcomes("unhandled"))
    assert [o.job_id for o in unhandled] == [handle.id]

    other = cluster.distributor.enqueue("flaky", {"n": 2})  # async handler that succeeds
    with pytest.raises(Exception, match="first run fails"):
        await result_of(cluster, other.deferred)
    await settle(cluster, lambda: len(handler_calls) == 4)
    await settle(cluster)
    assert (await result_of(cluster, cluster.distributor.outcome(other.id))).handled == "handled"
    assert await result_of(cluster, cluster.distributor.outcomes("pending")) == []
    await stopped(cluster)


@pytest_twisted.ensureDeferred
async def test_outcomes_expire_after_result_ttl(registry: JobRegistry, storage_url: str) -> None:
    cluster = await started(registry, storage_url, config=Config(result_ttl=20))
    cluster.add_node("worker")
    handle = cluster.distributor.enqueue("work", {"n": 1})
    await result_of(cluster, handle.deferred)
    assert (await result_of(cluster, cluster.distributor.outcome(handle.id))) is not None
    cluster.advance(15)
    await settle(cluster)
    assert (await result_of(cluster, cluster.distributor.outcome(handle.id))) is not None
    cluster.advance(10)
    await settle(cluster)
    assert await result_of(cluster, cluster.distributor.outcome(handle.id)) is None
    assert await result_of(cluster, cluster.distributor.outcomes("all")) == []
    await stopped(cluster)


@pytest_twisted.ensureDeferred
async def test_expiry_in_redis_goes_on_past_one_batch(
    registry: JobRegistry, redis_url: str
) -> None:
    """Redis removes a batch of expired outcomes per call; the sweep repeats until none is
    left, instead of leaving the rest for the next mark (or for ever)."""
    ledger = RedisLedger(RedisStorage.from_url(f"{redis_url}?prefix={uuid.uuid4().hex[:8]}"))
    ledger.expire_batch = 3
    cluster = await started(registry, ledger, config=Config(result_ttl=20))
    cluster.add_node("worker")
    handles = [cluster.distributor.enqueue("work", {"n": n}) for n in range(7)]
    for handle in handles:
        await result_of(cluster, handle.deferred)
    assert len(await result_of(cluster, cluster.distributor.outcomes("all"))) == 7
    cluster.advance(30)
    left: list[Outcome] = []
    for _ in range(100):  # each sweep is a round trip to Redis, then one more sweep is due
        await deferLater(reactor, 0.01, lambda: None)
        cluster.advance(0)
        left = await result_of(cluster, cluster.distributor.outcomes("all"))
        if not left:
            break
    assert left == []
    await stopped(cluster)


def test_retry_of_an_unfinished_job_fails_its_deferred(registry: JobRegistry) -> None:
    cluster = LocalCluster(registry)
    waiting = cluster.distributor.enqueue("work", {"n": 1})
    errors: list[Any] = []
    cluster.distributor.retry(waiting.id).addErrback(errors.append)
    assert errors and errors[0].check(ValueError), "a failed Deferred, as documented"


def test_a_resend_that_crosses_its_outcome_does_not_run_the_job_again(
    registry: JobRegistry,
) -> None:
    cluster = LocalCluster(registry)
    cluster.add_node("worker")
    client = cluster.add_client("app")
    successes: list[dict[str, Any]] = []
    handle = client.enqueue("work", {"n": 1}, success=successes.append)
    client.submitter._send()  # the Enqueue box is written now ...
    cluster._pumps["app"].pump()  # ... and reaches the distributor
    cluster.freeze("app")
    cluster.run()  # the job runs; its outcome waits on the wire to the client
    assert ran == [("work", 1)] and not handle.done
    protocol = client.submitter.protocol
    assert protocol is not None
    client.submitter.connected(protocol)  # as after a reconnect: resend all
    cluster.thaw("app")  # the resend reaches the distributor before the outcome's answer
    cluster.run()
    assert ran == [("work", 1)], "the resend was taken as the job it already had"
    assert len(successes) == 1 and handle.done
    cluster.stop()


@pytest_twisted.ensureDeferred
async def test_jobs_of_a_node_that_never_comes_back_are_rerouted_after_a_restart(
    registry: JobRegistry, tmp_path: Path
) -> None:
    storage = f"sqlite:{tmp_path / 'distributor.db'}"
    config = Config(node_grace_period=10)
    first = await started(registry, storage, config=config)
    first.add_node("lost", slots=1)
    first.freeze("lost")  # it takes the job, then is never heard of again
    handle = first.distributor.enqueue("work", {"n": 1})
    await result_of(first, handle.accepted)
    await settle(first)
    assert [info.holding for info in first.distributor.nodes()] == [1]
    await stopped(first)

    second = await started(registry, storage, config=config)
    second.add_node("other")
    await settle(second)
    assert ran == [], "it stays the lost node's for the grace period"
    second.advance(11)
    await settle(second, lambda: bool(ran))
    assert ran == [("work", 1)]
    await stopped(second)


@pytest_twisted.ensureDeferred
async def test_an_outcome_for_an_absent_client_survives_a_restart(
    registry: JobRegistry, durable_url: str
) -> None:
    storage_url = durable_url
    first = await started(registry, storage_url)
    client = first.add_client("app")
    handle = client.enqueue("work", {"n": 1})
    await result_of(first, handle.accepted)
    first.disconnect("app")
    first.add_node("worker")  # the job runs while its client is away
    await settle(first, lambda: bool(ran))
    await settle(first)
    await stopped(first)

    second = await started(registry, storage_url)
    collected: list[dict[str, Any]] = []
    second.clients["app"] = Client(
        "memory:", name="app", clock=second.clock, on_unknown_outcome=collected.append
    )
    second.connect_client("app")
    await settle(second, lambda: bool(collected))
    assert [(report["job_id"], report["args"]["done"]) for report in collected] == [
        (handle.id, True)
    ]
    stored = await result_of(second, second.distributor.outcomes("undelivered"))
    assert stored == [], "delivered now"
    second.disconnect("app")
    await stopped(second)


@pytest_twisted.ensureDeferred
async def test_a_turn_of_enqueues_is_one_write_to_sqlite(
    registry: JobRegistry, tmp_path: Path
) -> None:
    batches: list[list[str]] = []

    class CountingLedger(SQLiteLedger):
        def write(self, operations: list[Operation]) -> Deferred[None]:
            batches.append([operation[0] for operation in operations])
            return super().write(operations)

    ledger = CountingLedger(SQLiteStorage(str(tmp_path / "distributor.db")))
    cluster = await started(registry, ledger)
    handles = [cluster.distributor.enqueue("work", {"n": n}) for n in range(100)]
    assert not any(fired(handle.accepted) for handle in handles), "not before the write"
    await settle(cluster)
    assert batches == [["job"] * 100], "one transaction for the turn's 100 jobs"
    assert all(fired(handle.accepted) for handle in handles)
    await stopped(cluster)


@pytest_twisted.ensureDeferred
async def test_a_handler_that_finished_does_not_run_again_after_a_clean_restart(
    registry: JobRegistry, handlers: HandlerRegistry, durable_url: str
) -> None:
    first = await started(registry, durable_url, handlers)
    first.add_node("worker")
    handle = first.distributor.enqueue("flaky", {"n": 1})  # its handler succeeds
    with pytest.raises(Exception, match="first run fails"):
        await result_of(first, handle.deferred)
    await settle(first, lambda: len(handler_calls) == 1)
    await stopped(first)

    second = await started(registry, durable_url, handlers)
    await settle(second)
    assert len(handler_calls) == 1, "exactly once when nothing crashes"
    stored = await result_of(second, second.distributor.outcome(handle.id))
    assert stored.handled == "handled"
    await stopped(second)


@pytest_twisted.ensureDeferred
async def test_a_delayed_job_runs_at_its_time_after_a_restart(
    registry: JobRegistry, durable_url: str
) -> None:
    first = await started(registry, durable_url)
    handle = first.distributor.enqueue("work", {"n": 1}, after=30)
    await result_of(first, handle.accepted)
    await stopped(first)

    second = await started(registry, durable_url)
    second.add_node("worker")
    second.advance(29)
    await settle(second)
    assert ran == [], "not before its time"
    second.advance(2)
    await settle(second, lambda: bool(ran))
    assert ran == [("work", 1)]
    await stopped(second)


@pytest_twisted.ensureDeferred
async def test_a_stopped_distributor_retries_no_handler_and_the_next_start_does(
    registry: JobRegistry, handlers: HandlerRegistry, tmp_path: Path
) -> None:
    storage = f"sqlite:{tmp_path / 'distributor.db'}"
    first = await started(registry, storage, handlers)
    first.add_node("worker")
    handle = first.distributor.enqueue("work", {"n": 1})  # its handler raises: retry in 1 s
    await result_of(first, handle.deferred)
    await settle(first, lambda: len(handler_calls) == 1)
    await stopped(first)
    first.clock.advance(60)
    await settle(first)
    assert len(handler_calls) == 1, "no handler runs in a stopped distributor"

    second = await started(registry, storage, handlers)
    await settle(second, lambda: len(handler_calls) == 2)
    assert (await result_of(second, second.distributor.outcome(handle.id))).handled == "pending"
    await stopped(second)


@pytest_twisted.ensureDeferred
async def test_a_stop_waits_for_an_expiry_sweep_under_way(
    registry: JobRegistry, redis_url: str
) -> None:
    failures: list[Any] = []

    @implementer(ILogObserver)
    def observe(event: LogEvent) -> None:
        if "log_failure" in event:
            failures.append(event["log_failure"])

    url = f"{redis_url}?prefix={uuid.uuid4().hex[:8]}"
    cluster = await started(registry, url, config=Config(result_ttl=20))
    cluster.add_node("worker")
    await result_of(cluster, cluster.distributor.enqueue("work", {"n": 1}).deferred)
    globalLogPublisher.addObserver(observe)
    try:
        cluster.advance(30)  # a sweep starts: a round trip to Redis
        assert cluster.distributor._sweeping is not None
        await stopped(cluster)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert failures == [], "the storage was closed after the sweep, not under it"


def test_each_run_of_a_periodic_job_gets_its_handler_call() -> None:
    """A periodic job never ends by itself: its handlers run for every successful run."""
    jobs = JobRegistry()
    with registering_into(jobs):

        @job("tick")
        def tick(args: dict[str, Any]) -> dict[str, Any]:
            return {"count": args.get("count", 0) + 1}

    seen: list[tuple[int, str, int]] = []
    results = HandlerRegistry()
    with registering_handlers_into(results):

        @on_result("tick")
        def record(outcome: Outcome) -> None:
            seen.append((outcome.run, outcome.status, outcome.args["count"]))

    cluster = LocalCluster(jobs, handlers=results)
    cluster.add_node("worker")
    cluster.distributor.enqueue("tick", {}, period=10)
    cluster.run()
    cluster.advance(25)
    assert seen == [(1, "done", 1), (2, "done", 2), (3, "done", 3)]
