"""The dashboard over real TCP: JSON API, /metrics, actions, basic auth, jr nodes / jr stats."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.web.client import Agent
from twisted.web.http_headers import Headers

from jobreactor import Distributor, JobCancelled, JobFailed
from jobreactor.cli_live import read_body
from jobreactor.web import Dashboard

from .conftest import NodeProcesses, bounded, node_env, port_of


def start_dashboard(distributor: Distributor, **options: Any) -> defer.Deferred[Dashboard]:
    dashboard = Dashboard(distributor, "tcp:0:interface=127.0.0.1", reactor=reactor, **options)
    dashboard.startService()
    return bounded(dashboard.when_listening(), 5)  # type: ignore[no-any-return]


@pytest.fixture
def dashboard(distributor: Distributor) -> Iterator[Dashboard]:
    dashboard = pytest_twisted.blockon(start_dashboard(distributor))
    yield dashboard
    pytest_twisted.blockon(dashboard.stopService())


async def fetch(
    url: str, method: bytes = b"GET", headers: dict[bytes, bytes] | None = None
) -> tuple[int, bytes]:
    raw = Headers({name: [value] for name, value in (headers or {}).items()})
    response = await bounded(Agent(reactor).request(method, url.encode(), raw), 10)
    body = await bounded(read_body(response), 10)
    return response.code, body


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def jr(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobreactor.cli", *arguments],
        capture_output=True,
        text=True,
        timeout=30,
        env=node_env(),
    )


@pytest_twisted.ensureDeferred
async def test_nodes_metrics_and_failed_job_of_a_real_cluster(
    distributor: Distributor, nodes: NodeProcesses, dashboard: Dashboard
) -> None:
    nodes.start("worker_1", port_of(distributor), slots=3)
    nodes.start("worker_2", port_of(distributor), slots=3)
    await bounded(distributor.when_nodes(names=["worker_1", "worker_2"]))
    url = dashboard.url
    assert url is not None

    code, body = await fetch(url + "api/nodes")
    assert code == 200
    listed = json.loads(body)["nodes"]
    assert [(n["name"], n["slots"]) for n in listed] == [("worker_1", 3), ("worker_2", 3)]
    assert all(n["address"].startswith("127.0.0.1:") for n in listed)

    handles = [distributor.enqueue("my_job", {"n": n}) for n in range(8)]
    failing = distributor.enqueue("failing", {"n": 1})  # max_attempt=2: one retry
    await bounded(defer.gatherResults([h.deferred for h in handles]))
    with pytest.raises(JobFailed):
        await bounded(failing.deferred)

    code, body = await fetch(url + "metrics")
    assert code == 200
    samples = metric_samples(body.decode())
    assert samples[("jobreactor_jobs_enqueued_total", (("name", "my_job"),))] == 8
    finished = "jobreactor_jobs_finished_total"
    assert samples[(finished, (("name", "my_job"), ("status", "done")))] == 8
    assert samples[(finished, (("name", "failing"), ("status", "failed")))] == 1
    assert samples[("jobreactor_job_retries_total", (("name", "failing"),))] == 1
    # Durations come from the nodes: one per attempt.
    assert samples[("jobreactor_job_duration_seconds_count", (("name", "my_job"),))] == 8
    assert samples[("jobreactor_job_duration_seconds_count", (("name", "failing"),))] == 2
    assert samples[("jobreactor_nodes_connected", ())] == 2

    code, body = await fetch(url + f"api/jobs/{failing.id}")
    detail = json.loads(body)
    assert code == 200 and detail["state"] == "failed"
    assert detail["error"] == "broken 1" and detail["error_type"] == "ValueError"
    assert 'raise ValueError("broken " + str(args.get("n")))' in detail["traceback"]
    code, body = await fetch(url + "api/failed")
    assert [row["id"] for row in json.loads(body)["failed"]] == [failing.id]

    stats = await deferToThread(jr, "stats", "--json", "--web", url)
    assert stats.returncode == 0, stats.stderr
    document = json.loads(stats.stdout)
    assert document["totals"]["done"] == 8 and document["totals"]["failed"] == 1
    assert {row["name"] for row in document["names"]} == {"my_job", "failing"}
    table = await deferToThread(jr, "nodes", "--web", url)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["NAME", "ADDRESS", "SLOTS", "LOAD", "HELD"]
    assert [line.split()[0] for line in lines[1:]] == ["worker_1", "worker_2"]


@pytest_twisted.ensureDeferred
async def test_cancel_needs_the_action_header_and_cancels_a_waiting_job(
    distributor: Distributor, dashboard: Dashboard
) -> None:
    handle = distributor.enqueue("my_job", {})  # no node: it waits
    cancel_url = f"{dashboard.url}api/jobs/{handle.id}/cancel"
    code, body = await fetch(cancel_url, b"POST")
    assert code == 403 and b"X-JR-Action" in body
    assert distributor.pending == 1
    code, body = await fetch(cancel_url, b"POST", {b"X-JR-Action": b"1"})
    assert code == 200, body
    with pytest.raises(JobCancelled):
        await bounded(handle.deferred)
    code, body = await fetch(cancel_url, b"POST", {b"X-JR-Action": b"1"})
    assert code == 404 and b"not pending" in body
    code, body = await fetch(f"{dashboard.url}api/jobs/{handle.id}")
    assert json.loads(body)["state"] == "cancelled"
    # Forgotten by the dashboard's memory (a restart, or long ago): read from storage.
    distributor.stats._finished.clear()
    code, body = await fetch(f"{dashboard.url}api/jobs/{handle.id}")
    assert code == 200 and json.loads(body)["state"] == "cancelled"
    assert json.loads(body)["record"]["name"] == "my_job"
    code, body = await fetch(f"{dashboard.url}api/jobs/no-such-job")
    assert code == 404 and b"no job no-such-job here" in body


@pytest_twisted.ensureDeferred
async def test_retry_runs_a_failed_job_again_through_the_distributors_retry(
    distributor: Distributor, nodes: NodeProcesses, dashboard: Dashboard
) -> None:
    nodes.start("worker_1", port_of(distributor), slots=2)
    await bounded(distributor.when_nodes(names=["worker_1"]))
    action = {b"X-JR-Action": b"1"}
    code, body = await fetch(f"{dashboard.url}api/jobs/no-such-job/retry", b"POST", action)
    assert code == 409 and "no stored outcome" in json.loads(body)["error"]
    failing = distributor.enqueue("failing", {"n": 3})
    with pytest.raises(JobFailed):
        await bounded(failing.deferred)
    code, body = await fetch(f"{dashboard.url}api/names/failing/retry-failed", b"POST", action)
    assert code == 200 and json.loads(body) == {"retried": [failing.id], "errors": {}}
    code, body = await fetch(f"{dashboard.url}api/jobs/{failing.id}")
    assert json.loads(body)["state"] in ("waiting", "on node", "failed")
    for _ in range(100):  # it runs (and fails) again: two more attempts
        if distributor.stats.finished_by_name.get(("failing", "failed")) == 2:
            break
        await bounded(_tick())
    assert distributor.stats.finished_by_name[("failing", "failed")] == 2
    assert distributor.stats.enqueued_by_name["failing"] == 2


@pytest_twisted.ensureDeferred
async def test_retry_is_refused_when_the_distributor_cannot_retry(
    distributor: Distributor, dashboard: Dashboard
) -> None:
    distributor.retry = None  # type: ignore[assignment,method-assign]
    action = {b"X-JR-Action": b"1"}
    code, body = await fetch(f"{dashboard.url}api/jobs/some-id/retry", b"POST", action)
    assert code == 501 and b"cannot retry" in body
    code, body = await fetch(f"{dashboard.url}api/stats")
    assert json.loads(body)["can_retry"] is False


@pytest_twisted.ensureDeferred
async def test_basic_auth_guards_pages_and_actions_and_metrics_may_stay_open(
    distributor: Distributor,
) -> None:
    checker = InMemoryUsernamePasswordDatabaseDontUse(admin=b"s3cret")
    guarded = await start_dashboard(distributor, checkers=[checker], metrics_open=True)
    closed = await start_dashboard(distributor, checkers=[checker])
    try:
        good = {b"Authorization": b"Basic " + base64.b64encode(b"admin:s3cret")}
        bad = {b"Authorization": b"Basic " + base64.b64encode(b"admin:wrong")}
        assert (await fetch(f"{guarded.url}"))[0] == 401
        assert (await fetch(f"{guarded.url}api/stats", headers=bad))[0] == 401
        code, body = await fetch(f"{guarded.url}", headers=good)
        assert code == 200 and b"jobreactor dashboard" in body
        assert (await fetch(f"{guarded.url}api/jobs/x/cancel", b"POST"))[0] == 401
        assert (await fetch(f"{guarded.url}metrics"))[0] == 200
        assert (await fetch(f"{closed.url}metrics"))[0] == 401
        assert (await fetch(f"{closed.url}metrics", headers=good))[0] == 200

        url_with_login = closed.url.replace("http://", "http://admin:s3cret@")  # type: ignore[union-attr]
        stats = await deferToThread(jr, "stats", "--web", url_with_login)
        assert stats.returncode == 0, stats.stderr
        assert stats.stdout.startswith("nodes 0 (slots 0)")
        refused = await deferToThread(jr, "stats", "--web", closed.url)  # type: ignore[arg-type]
        assert refused.returncode == 1 and "wants credentials" in refused.stderr
    finally:
        await guarded.stopService()
        await closed.stopService()


@pytest_twisted.ensureDeferred
async def test_live_stream_pushes_snapshots_and_stops_its_timer_when_closed(
    distributor: Distributor, dashboard: Dashboard
) -> None:
    from twisted.internet.protocol import Protocol

    received: list[bytes] = []
    two_events: defer.Deferred[None] = defer.Deferred()

    class Collect(Protocol):
        def dataReceived(self, data: bytes) -> None:
            received.append(data)
            if b"".join(received).count(b"data: ") >= 2 and not two_events.called:
                two_events.callback(None)

    response = await bounded(
        Agent(reactor).request(b"GET", f"{dashboard.url}events?view=names".encode())
    )
    assert response.headers.getRawHeaders(b"content-type") == [b"text/event-stream; charset=utf-8"]
    collector = Collect()
    response.deliverBody(collector)
    await bounded(two_events, 5)
    first = b"".join(received).split(b"data: ")[1].split(b"\n\n")[0]
    document = json.loads(first)
    assert document["view"] == "names" and document["summary"]["nodes"] == 0
    assert dashboard.live.subscribers == 1
    collector.transport.stopProducing()  # type: ignore[union-attr]
    for _ in range(50):
        if dashboard.live.subscribers == 0:
            break
        await bounded(_tick())
    assert dashboard.live.subscribers == 0
    assert dashboard.live._timer is None


def _tick() -> defer.Deferred[None]:
    from twisted.internet.task import deferLater

    return deferLater(reactor, 0.02, lambda: None)


def test_jr_stats_says_when_no_distributor_answers() -> None:
    result = jr("stats", "--web", "http://127.0.0.1:9")
    assert result.returncode == 1
    assert result.stderr.startswith(
        "jr: error: cannot reach the distributor at http://127.0.0.1:9/"
    )
    assert len(result.stderr.strip().splitlines()) == 1
    result = jr("nodes")
    assert result.returncode == 2 and "--web URL" in result.stderr


def test_jr_start_distributor_with_web_serves_the_dashboard() -> None:
    app = Path(__file__).with_name("apps") / "web_app.py"
    finished = subprocess.run(
        [sys.executable, str(app)], env=node_env(), capture_output=True, text=True, timeout=60
    )
    assert finished.returncode == 0, finished.stderr
    stats = json.loads(finished.stdout.strip().splitlines()[-1])
    assert stats["nodes"] == 0
    assert stats["totals"]["enqueued"] == 1 and stats["totals"]["cancelled"] == 1
    assert [row["name"] for row in stats["names"]] == ["nobody_runs_this"]


@pytest_twisted.ensureDeferred
async def test_the_dashboard_asks_the_distributors_own_users(
    distributor: Distributor, tmp_path: Path
) -> None:
    """With ``--auth file:PATH`` the dashboard takes the same users (plain and stored keys)."""
    from jobreactor import scram
    from jobreactor.credentials import WebLogins, authority_from_string

    keys = scram.StoredKeys.from_password("k3y-pass", scram.new_nonce().encode()[:16])
    users = tmp_path / "users"
    users.write_text(f"ops:plain-pass\nkeyed:{keys.format()}\nmachine:!\n")
    authority = authority_from_string(f"file:{users}")
    dashboard = await start_dashboard(distributor, checkers=[WebLogins(authority)])
    try:

        def login(user: str, password: str) -> dict[bytes, bytes]:
            pair = f"{user}:{password}".encode()
            return {b"Authorization": b"Basic " + base64.b64encode(pair)}

        assert (await fetch(f"{dashboard.url}api/stats"))[0] == 401
        assert (await fetch(f"{dashboard.url}api/stats", headers=login("ops", "plain-pass")))[
            0
        ] == 200
        assert (await fetch(f"{dashboard.url}api/stats", headers=login("keyed", "k3y-pass")))[
            0
        ] == 200
        for user, password in (("ops", "wrong"), ("keyed", "wrong"), ("machine", "!"), ("x", "y")):
            code, _ = await fetch(f"{dashboard.url}api/stats", headers=login(user, password))
            assert code == 401, (user, password)
    finally:
        await dashboard.stopService()
