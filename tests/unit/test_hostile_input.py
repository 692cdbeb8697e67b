"""Hostile and broken input (issue 12): each numbered case of the issue reproduced against a
distributor with a node and a legitimate client attached, now with a bounded outcome.

Everything runs in memory (``LocalCluster``: iosim connections on a clock); the processes
and real sockets are exercised by ``benchmarks/fuzz.py`` and the integration tests.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any, cast

import pytest
from twisted.internet.defer import Deferred
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test.iosim import IOPump

from jobreactor import Config, InvalidJobError, JobRegistry, job
from jobreactor.definitions import registering_into
from jobreactor.limits import Limits, printable
from jobreactor.model import Job, Report, Status
from jobreactor.protocol import PROTOCOL_VERSION, Enqueue, Hello, JobReactorAMP, Outcomes
from jobreactor.testing import LocalCluster

# Small limits keep the byte streams of these tests small; the defaults are the same code.
SETTINGS: dict[str, Any] = {
    "max_attempt": 1,
    "max_args_bytes": 4096,
    "max_box_bytes": 256 * 1024,
    "max_error_length": 1024,
}


def amp_string(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []
    observer = cast(ILogObserver, seen.append)
    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    registry = JobRegistry()
    with registering_into(registry):

        @job("double")
        def double(args: dict[str, Any]) -> dict[str, Any]:
            return {"result": args["x"] * 2}

    cluster = LocalCluster(registry, config=Config(**SETTINGS))
    cluster.add_node("worker")
    cluster.add_client("legit")
    yield cluster
    cluster.stop()


def legit_job_works(cluster: LocalCluster) -> None:
    """The legitimate client still gets its result: other connections are unaffected."""
    results: list[dict[str, Any]] = []
    cluster.clients["legit"].enqueue("double", {"x": 21}, success=results.append)
    cluster.run()
    assert results == [{"x": 21, "result": 42}]


def answer(deferred: Deferred[Any], cluster: LocalCluster) -> Any:
    results: list[Any] = []
    deferred.addBoth(results.append)
    cluster.run()
    assert results, "no answer arrived"
    return results[0]


class Peer(JobReactorAMP):
    """A hand-driven peer that takes the outcomes of what it enqueued."""

    @Outcomes.responder
    def outcomes(self, reports: Any) -> dict[str, Any]:
        return {}


def hostile(cluster: LocalCluster, *, hello: bool) -> tuple[JobReactorAMP, IOPump]:
    peer = Peer()
    pump = cluster.connect_raw("hostile", peer)
    if hello:
        said = peer.callRemote(
            Hello, name="hostile", slots=0, version=PROTOCOL_VERSION, held=[], credentials=None
        )
        assert not isinstance(answer(said, cluster), Failure)
    return peer, pump


def warnings_and_worse(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("log_level", LogLevel.info) >= LogLevel.warn]


def no_tracebacks(events: list[dict[str, Any]]) -> None:
    bad = [e for e in events if "log_failure" in e or e.get("log_level") == LogLevel.critical]
    assert not bad, [formatEvent(e)[:300] for e in bad]


@pytest.mark.parametrize("hello", [False, True], ids=["before-hello", "after-hello"])
def test_1_a_box_that_never_ends_closes_that_connection_with_one_line(
    cluster: LocalCluster, events: list[dict[str, Any]], hello: bool
) -> None:
    peer, pump = hostile(cluster, hello=hello)
    limit = Limits.from_config(cluster.config).box_bytes
    sent = 0
    key = 0
    while not pump.serverIO.disconnected and sent < 3 * limit:
        key += 1
        data = amp_string(b"k%d" % key) + amp_string(b"v" * 65535)
        assert peer.transport is not None
        peer.transport.write(data)
        sent += len(data)
        cluster.run()
    assert pump.serverIO.disconnected, "the distributor kept reading a box without end"
    assert sent <= limit + 2 * 65540  # closed within one value of the limit
    lines = [formatEvent(e) for e in warnings_and_worse(events) if "box with" in formatEvent(e)]
    assert len(lines) == 1 and "max_box_bytes" in lines[0]
    no_tracebacks(events)
    legit_job_works(cluster)


def test_1_a_box_with_too_many_keys_closes_that_connection(
    cluster: LocalCluster, events: list[dict[str, Any]]
) -> None:
    peer, pump = hostile(cluster, hello=True)
    assert peer.transport is not None
    peer.transport.write(b"".join(amp_string(b"k%d" % i) + amp_string(b"") for i in range(2000)))
    cluster.run()
    assert pump.serverIO.disconnected
    assert any("more than 1024 keys" in formatEvent(e) for e in events)
    legit_job_works(cluster)


def enqueue_chunks(jobs: bytes) -> dict[str, bytes]:
    keys = [jobs[i : i + 65535] for i in range(0, len(jobs), 65535)]
    return {"jobs": keys[0]} | {f"jobs.{i}": key for i, key in enumerate(keys[1:], start=2)}


def test_2_an_enqueue_of_millions_of_tiny_items_is_refused_quickly(
    cluster: LocalCluster, events: list[dict[str, Any]]
) -> None:
    peer, pump = hostile(cluster, hello=True)
    # Within the box limit: refused at item 1001, before any per-item work.
    jobs = b"[" + b",".join([b"{}"] * 20_000) + b"]"
    refused = answer(peer.callRemoteString(b"Enqueue", **enqueue_chunks(jobs)), cluster)
    assert isinstance(refused, Failure) and refused.check(amp.RemoteAmpError)
    assert "more than 1000 items" in refused.getErrorMessage()
    assert "max_items_per_command" in refused.getErrorMessage()
    assert not pump.serverIO.disconnected  # only the message is refused
    # 4,000,000 of them (12 MB): past the box limit, the connection is closed as it arrives.
    jobs = b"[" + b",".join([b"{}"] * 4_000_000) + b"]"
    lost = answer(peer.callRemoteString(b"Enqueue", **enqueue_chunks(jobs)), cluster)
    assert isinstance(lost, Failure) and pump.serverIO.disconnected
    assert all(len(formatEvent(e)) < 1000 for e in events)
    no_tracebacks(events)
    legit_job_works(cluster)


def test_4_bad_timeout_and_deep_args_are_refused_by_the_distributor_one_item_each(
    cluster: LocalCluster, events: list[dict[str, Any]]
) -> None:
    peer, _ = hostile(cluster, hello=True)
    deep: Any = 1
    for _ in range(70):  # past the limit of 64, not so far that the whole box is refused
        deep = [deep]
    jobs = [
        {"id": "t", "name": "double", "args": {"x": 1}, "timeout": -1},
        {"id": "r", "name": "double", "args": {"x": 1}, "retry_delay": -5},
        {"id": "d", "name": "double", "args": {"deep": deep}},
        {"id": "ok", "name": "double", "args": {"x": 2}},
    ]
    got = answer(peer.callRemote(Enqueue, jobs=jobs), cluster)
    assert got["accepted"] == ["ok"]
    errors = {item["id"]: item["error"] for item in got["rejected"]}
    assert "timeout" in errors["t"] and "at least 0" in errors["t"]
    assert "retry_delay" in errors["r"]
    assert "max_nesting_depth" in errors["d"]
    # Far deeper: refused on the bytes before json.loads recurses, the connection kept.
    very_deep = b'[{"id":"x","name":"double","args":{"a":' + b"[" * 900 + b"]" * 900 + b"}}]"
    refused = answer(peer.callRemoteString(b"Enqueue", jobs=very_deep), cluster)
    assert isinstance(refused, Failure) and "levels deep" in refused.getErrorMessage()
    no_tracebacks(events)
    legit_job_works(cluster)


def test_4_the_node_and_the_distributor_share_one_depth_limit() -> None:
    limits = Limits(max_depth=10)
    ok: Any = {}
    for _ in range(9):
        ok = {"a": ok}
    deep = {"a": ok}
    job = {"id": "j", "name": "n", "args": ok}
    assert Job.from_wire(job, limits).args == ok
    with pytest.raises(InvalidJobError, match="max_nesting_depth"):
        Job.from_wire({**job, "args": deep}, limits)
    with pytest.raises(InvalidJobError, match="max_nesting_depth"):
        Report.from_wire(
            {"job_id": "j", "run": 1, "status": "complete", "final": True, "args": deep}, limits
        )


def test_5_a_period_below_min_period_is_refused_at_enqueue_and_from_a_peer(
    cluster: LocalCluster,
) -> None:
    with pytest.raises(InvalidJobError, match="min_period"):
        cluster.clients["legit"].enqueue("double", {"x": 1}, period=0.0001)
    peer, _ = hostile(cluster, hello=True)
    got = answer(
        peer.callRemote(Enqueue, jobs=[{"id": "p", "name": "double", "args": {}, "period": 0}]),
        cluster,
    )
    assert got["accepted"] == []
    assert "min_period" in got["rejected"][0]["error"]


def test_6_a_huge_last_error_or_nan_fails_only_its_item_or_message(
    cluster: LocalCluster, events: list[dict[str, Any]]
) -> None:
    peer, pump = hostile(cluster, hello=True)
    got = answer(
        peer.callRemote(
            Enqueue,
            jobs=[
                {"id": "e", "name": "double", "args": {}, "last_error": "x" * 200_000},
                {"id": "fine", "name": "double", "args": {"x": 3}},
            ],
        ),
        cluster,
    )
    assert got["accepted"] == ["fine"]
    assert "max_error_length" in got["rejected"][0]["error"]
    report = b'[{"job_id":"fine","run":1,"status":"complete","final":true,"args":{"x":NaN}}]'
    refused = answer(peer.callRemoteString(b"JobsDone", reports=report), cluster)
    assert isinstance(refused, Failure) and "NaN" in refused.getErrorMessage()
    assert not pump.serverIO.disconnected
    no_tracebacks(events)
    legit_job_works(cluster)


def test_7_a_lone_surrogate_in_an_id_is_refused_and_logged_escaped(
    cluster: LocalCluster, events: list[dict[str, Any]]
) -> None:
    peer, _ = hostile(cluster, hello=True)
    jobs = b'[{"id":"a\\ud800b","name":"double","args":{}}]'
    refused = answer(peer.callRemoteString(b"Enqueue", jobs=jobs), cluster)
    assert isinstance(refused, Failure) and "lone surrogate" in refused.getErrorMessage()
    lines = [formatEvent(e) for e in warnings_and_worse(events)]
    assert any("lone surrogate" in line for line in lines)
    for line in lines:
        line.encode("utf-8")  # every line can be written to a UTF-8 log file
    assert printable("a\ud800b\x1b[31m") == "a\\ud800b\\x1b[31m"
    legit_job_works(cluster)


def test_8_failing_commands_without_ask_and_long_errors_log_one_short_warning(
    cluster: LocalCluster, events: list[dict[str, Any]]
) -> None:
    peer, pump = hostile(cluster, hello=False)
    assert peer.transport is not None
    # Commands sent without _ask (no answer wanted) that fail: before Hello, malformed JSON.
    for command, value in [(b"Enqueue", b"[]"), (b"JobsDone", b"{not json")]:
        box = amp.AmpBox(_command=command, jobs=value, reports=value)
        peer.transport.write(box.serialize())
    # An unknown command whose name is 65,000 bytes long: the error text is built from it.
    long_name = b"X" * 65_000
    unknown = answer(peer.callRemoteString(long_name), cluster)
    assert isinstance(unknown, Failure)
    assert len(unknown.getErrorMessage()) < 1000
    # An id AMP cannot echo back (NaN) is refused as a bad message, not an UNKNOWN error
    # (from a peer that said Hello: before it, all but the login is HELLO_FIRST, unparsed).
    greeted, _ = hostile(cluster, hello=True)
    nan_id = answer(greeted.callRemoteString(b"Enqueue", jobs=b'[{"id":NaN}]'), cluster)
    assert isinstance(nan_id, Failure) and "NaN" in nan_id.getErrorMessage()
    cluster.run()
    assert not pump.serverIO.disconnected
    no_tracebacks(events)
    warned = warnings_and_worse(events)
    assert len(warned) >= 3
    assert all(len(formatEvent(e)) < 1000 and "\n" not in formatEvent(e) for e in warned)
    legit_job_works(cluster)


def test_2_a_frozen_distributor_does_not_drop_its_peers_as_silent(
    cluster: LocalCluster,
) -> None:
    cluster.advance(3)  # heartbeats run as usual
    # The distributor's process freezes for 30 s (a long callback, SIGSTOP): its timers
    # fire late, all at once, before it reads what its peers sent meanwhile.
    cluster.clock.advance(30)
    cluster.run()
    assert [node.name for node in cluster.distributor.nodes()] == ["worker"]
    legit_job_works(cluster)
    # A peer that really is silent is still dropped.
    cluster.freeze("worker")
    cluster.advance(10, step=0.5)
    assert cluster.distributor.nodes() == []


def test_4_a_job_that_cannot_start_fails_and_frees_its_slot(
    monkeypatch: pytest.MonkeyPatch, events: list[dict[str, Any]]
) -> None:
    """Whatever slips past the checks and breaks a job's start (here: the attempt itself
    raises, as deep args once did in ``copy.deepcopy``) is a failed attempt: it frees its
    slot, so 50 such jobs cannot stop a node."""
    import jobreactor.node.running as running

    real = getattr(running, "run_attempt")  # noqa: B009

    def fragile(definition: Any, args: dict[str, Any], **kw: Any) -> Any:
        if args.get("poison") == "sync":
            raise RecursionError("maximum recursion depth exceeded")
        if args.get("poison") == "async":
            return Deferred.fromCoroutine(_raise())  # fails later, inside the chain
        return real(definition, args, **kw)

    async def _raise() -> None:
        raise RecursionError("maximum recursion depth exceeded while copying")

    monkeypatch.setattr(running, "run_attempt", fragile)
    registry = JobRegistry()
    with registering_into(registry):

        @job("double")
        def double(args: dict[str, Any]) -> dict[str, Any]:
            return {"result": args["x"] * 2}

    cluster = LocalCluster(registry, config=Config(**SETTINGS))
    try:
        cluster.add_node("worker", slots=1)
        failed: list[dict[str, Any]] = []
        for index in range(50):
            kind = "sync" if index % 2 else "async"
            cluster.distributor.enqueue("double", {"poison": kind}, error=failed.append)
        done: list[dict[str, Any]] = []
        cluster.distributor.enqueue("double", {"x": 1}, success=done.append)
        cluster.run()
        assert len(failed) == 50 and done == [{"x": 1, "result": 2}]
        assert failed[0]["error_type"] == "RecursionError"
        assert "could not run" in failed[0]["error"]
        no_tracebacks(events)
    finally:
        cluster.stop()


def test_6_a_box_that_cannot_be_encoded_is_resent_item_by_item(
    cluster: LocalCluster, events: list[dict[str, Any]]
) -> None:
    """One job or outcome AMP cannot carry fails only itself, not the others of its box."""
    failed: list[dict[str, Any]] = []
    done: list[dict[str, Any]] = []
    for x in range(5):
        cluster.distributor.submit(
            Job(id=f"good-{x}", name="double", args={"x": x}), success=done.append
        )
    # Made without enqueue's checks: JSON (and so AMP) cannot carry NaN.
    cluster.distributor.submit(
        Job(id="bad", name="double", args={"x": float("nan")}), error=failed.append
    )
    cluster.run()
    assert sorted(result["result"] for result in done) == [0, 2, 4, 6, 8]
    assert len(failed) == 1

    # Outcomes to a remote client: one that cannot be sent loses only itself.
    client = cluster.clients["legit"]
    got: list[dict[str, Any]] = []
    handles = [client.enqueue("double", {"x": x}, success=got.append) for x in range(3)]
    cluster.disconnect("worker")
    cluster.run()
    owned = cluster.distributor._owned
    for index, handle in enumerate(handles):
        args = {"x": float("nan")} if index == 1 else {"result": index}
        report = Report(handle.id, 1, Status.COMPLETE, "success", True, args)
        cluster.distributor._finish_with_report(owned[handle.id], report)
    cluster.run()
    assert got == [{"result": 0}, {"result": 2}]
    no_tracebacks(events)
