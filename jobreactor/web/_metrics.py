"""``/metrics``: the distributor's figures in Prometheus' text format.

A custom collector reads :class:`~jobreactor.stats.ClusterStats` and the distributor's live
state at scrape time, so routing a job updates no Prometheus object at all. Each dashboard has
its own :class:`CollectorRegistry` (never the process-wide default), so two distributors in one
process, or in one test run, do not clash.

The resource renders in the reactor thread. prometheus_client's own Twisted resource runs the
collectors in a thread pool, where reading the distributor's dicts would race the reactor.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString
from twisted.web.resource import Resource
from twisted.web.server import Request

from jobreactor.stats import Histogram

#: Every metric this module exports, with its meaning (docs/dashboard.md lists the same).
METRICS = {
    "jobreactor_jobs_waiting": "Jobs waiting at the distributor for a node (and jobs due later)",
    "jobreactor_jobs_running": "Jobs occupying a node slot (sent and not yet finished or parked)",
    "jobreactor_nodes_connected": "Nodes connected to the distributor",
    "jobreactor_jobs_enqueued_total": "Jobs accepted by the distributor, by job name",
    "jobreactor_jobs_finished_total": "Jobs that reached an outcome, by job name and status "
    "(done, failed, cancelled)",
    "jobreactor_job_retries_total": "Failed attempts followed by a retry, by job name",
    "jobreactor_job_duration_seconds": "Run time of a job's attempts, measured on the node",
    "jobreactor_dispatch_latency_seconds": "Seconds from enqueue (or due time) to the job "
    "being sent to a node",
}


def _buckets(histogram: Histogram) -> list[tuple[str, float]]:
    return [
        ("+Inf" if math.isinf(bound) else floatToGoString(bound), float(count))
        for bound, count in histogram.cumulative()
    ]


class DistributorCollector:
    """A prometheus_client collector over one distributor (call in the reactor thread)."""

    def __init__(self, distributor: Any) -> None:
        self.distributor = distributor

    def collect(self) -> Iterator[Metric]:
        distributor = self.distributor
        stats = distributor.stats
        nodes = distributor.nodes()
        yield GaugeMetricFamily(
            "jobreactor_jobs_waiting", METRICS["jobreactor_jobs_waiting"], distributor.waiting
        )
        yield GaugeMetricFamily(
            "jobreactor_jobs_running",
            METRICS["jobreactor_jobs_running"],
            sum(node.load for node in nodes),
        )
        yield GaugeMetricFamily(
            "jobreactor_nodes_connected", METRICS["jobreactor_nodes_connected"], len(nodes)
        )
        enqueued = CounterMetricFamily(
            "jobreactor_jobs_enqueued", METRICS["jobreactor_jobs_enqueued_total"], labels=["name"]
        )
        for name, count in sorted(stats.enqueued_by_name.items()):
            enqueued.add_metric([name], count)
        yield enqueued
        finished = CounterMetricFamily(
            "jobreactor_jobs_finished",
            METRICS["jobreactor_jobs_finished_total"],
            labels=["name", "status"],
        )
        for (name, status), count in sorted(stats.finished_by_name.items()):
            finished.add_metric([name, status], count)
        yield finished
        retries = CounterMetricFamily(
            "jobreactor_job_retries", METRICS["jobreactor_job_retries_total"], labels=["name"]
        )
        for name, count in sorted(stats.retries_by_name.items()):
            retries.add_metric([name], count)
        yield retries
        durations = HistogramMetricFamily(
            "jobreactor_job_duration_seconds",
            METRICS["jobreactor_job_duration_seconds"],
            labels=["name"],
        )
        for name, histogram in sorted(stats.durations.items()):
            durations.add_metric([name], _buckets(histogram), sum_value=histogram.sum)
        yield durations
        latency = stats.dispatch_latency
        yield HistogramMetricFamily(
            "jobreactor_dispatch_latency_seconds",
            METRICS["jobreactor_dispatch_latency_seconds"],
            buckets=_buckets(latency),
            sum_value=latency.sum,
        )


def registry_for(distributor: Any) -> CollectorRegistry:
    """A registry of its own holding only this distributor's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DistributorCollector(distributor))
    return registry


class MetricsResource(Resource):
    """``GET /metrics``: the registry in Prometheus' text exposition format."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self.registry)
