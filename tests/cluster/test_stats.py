"""What the distributor counts (jobreactor.stats) as jobs run through an in-memory cluster."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import deferLater

from jobreactor import JobRegistry, job
from jobreactor.definitions import registering_into
from jobreactor.stats import Histogram, RateWindow
from jobreactor.testing import LocalCluster
from jobreactor.web import registry_for


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    registry = JobRegistry()
    holder: dict[str, LocalCluster] = {}
    with registering_into(registry):

        @job("quick")
        def quick(args: dict[str, Any]) -> None:
            args["done"] = True

        @job("slow")
        def slow(args: dict[str, Any]) -> Any:
            return deferLater(holder["cluster"].clock, args["seconds"], lambda: None)

        @job("flaky", max_attempt=3, retry_delay=1.0)
        def flaky(args: dict[str, Any]) -> None:
            raise ValueError(f"cannot do {args['what']}")

    cluster = LocalCluster(registry)
    holder["cluster"] = cluster
    yield cluster
    cluster.stop()


def test_counts_by_name_and_outcome_with_retries_and_durations(cluster: LocalCluster) -> None:
    distributor = cluster.distributor
    waiting = distributor.enqueue("quick", {})
    waiting.deferred.addErrback(lambda failure: None)
    distributor.cancel(waiting)
    cluster.add_node("worker_1")
    for _ in range(3):
        distributor.enqueue("quick", {})
    distributor.enqueue("slow", {"seconds": 2.0})
    failing = distributor.enqueue("flaky", {"what": "the dishes"})
    failing.deferred.addErrback(lambda failure: None)
    cluster.run()
    cluster.advance(5, step=0.5)

    stats = distributor.stats
    assert stats.totals() == {
        "enqueued": 6,
        "done": 4,
        "failed": 1,
        "cancelled": 1,
        "retries": 2,
    }
    rows = {row["name"]: row for row in stats.by_name()}
    assert rows["quick"]["done"] == 3 and rows["quick"]["cancelled"] == 1
    assert rows["flaky"]["failure_rate"] == 1.0 and rows["flaky"]["retries"] == 2
    # The slow job ran 2 s on the node's clock: its median lies in the (1, 2.5] bucket.
    assert 1.0 < rows["slow"]["duration_p50"] <= 2.5
    assert stats.durations["flaky"].count == 3  # every attempt is measured
    record = stats.finished_job(failing.id)
    assert record is not None and record.node == "worker_1"
    assert record.error == "cannot do the dishes"
    assert record.traceback is not None and "ValueError: cannot do the dishes" in record.traceback
    assert [r.job.id for r in stats.failed_jobs()] == [failing.id]


def test_dispatch_latency_counts_the_wait_for_a_node(cluster: LocalCluster) -> None:
    cluster.distributor.enqueue("quick", {})
    cluster.advance(4)
    cluster.add_node("worker_1")
    cluster.run()
    latency = cluster.distributor.stats.dispatch_latency
    assert latency.count == 1
    assert 4.0 <= latency.sum < 4.5


def test_delayed_jobs_are_not_counted_as_waiting_for_a_slot(cluster: LocalCluster) -> None:
    cluster.add_node("worker_1")
    cluster.distributor.enqueue("quick", {}, run_at=cluster.clock.seconds() + 60)
    cluster.run()
    assert cluster.distributor.stats.dispatch_latency.count == 0  # sent early to wait there
    owned = cluster.distributor.owned_jobs()
    assert [(job.name, node) for job, node in owned] == [("quick", "worker_1")]


def test_metrics_add_up_to_the_jobs_run(cluster: LocalCluster) -> None:
    cluster.add_node("worker_1", slots=2)
    for _ in range(5):
        cluster.distributor.enqueue("quick", {})
    cluster.distributor.enqueue("flaky", {"what": "x"}).deferred.addErrback(lambda f: None)
    cluster.run()
    cluster.advance(3, step=0.5)
    text = generate_latest(registry_for(cluster.distributor)).decode()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert samples[("jobreactor_jobs_enqueued_total", (("name", "quick"),))] == 5
    assert samples[("jobreactor_jobs_finished_total", (("name", "quick"), ("status", "done")))] == 5
    flaky_failed = (("name", "flaky"), ("status", "failed"))
    assert samples[("jobreactor_jobs_finished_total", flaky_failed)] == 1
    assert samples[("jobreactor_job_retries_total", (("name", "flaky"),))] == 2
    assert samples[("jobreactor_job_duration_seconds_count", (("name", "quick"),))] == 5
    # Retries run on the node that has the job: each job is sent once.
    assert samples[("jobreactor_dispatch_latency_seconds_count", ())] == 6
    assert samples[("jobreactor_nodes_connected", ())] == 1
    assert samples[("jobreactor_jobs_waiting", ())] == 0
    assert samples[("jobreactor_jobs_running", ())] == 0


def test_two_registries_do_not_clash(cluster: LocalCluster) -> None:
    first = generate_latest(registry_for(cluster.distributor))
    second = generate_latest(registry_for(cluster.distributor))
    assert first == second


def test_histogram_quantiles_interpolate_inside_buckets() -> None:
    histogram = Histogram((1.0, 2.0, float("inf")))
    assert histogram.quantile(0.5) is None
    for value in (0.5, 1.5, 1.5, 1.5, 50.0):
        histogram.observe(value)
    assert histogram.cumulative() == [(1.0, 1), (2.0, 4), (float("inf"), 5)]
    assert histogram.quantile(0.5) == pytest.approx(1.0 + (2.5 - 1) / 3)
    assert histogram.quantile(1.0) == 2.0  # in +Inf: the last finite bound


def test_rate_window_counts_per_second_and_forgets_old_seconds() -> None:
    rates = RateWindow(("a",), seconds=10)
    for _ in range(3):
        rates.add(0, 100.2)
    rates.add(0, 101.9)
    series = rates.series(102.5)
    assert series["end"] == 102 and series["a"][-3:] == [3, 1, 0]
    assert rates.per_second(0, 102.5, window=5) == pytest.approx(4 / 5)
    assert sum(rates.series(200.0)["a"]) == 0
