"""The dashboard's views of a distributor as JSON-ready dicts, built on request.

Each function reads the distributor's live state (reactor thread only) and its
:class:`~jobreactor.stats.ClusterStats`; none keeps anything. They are what the pages show, what
``/api/...`` answers and what the live stream pushes, so all three always agree.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

from jobreactor.model import Job
from jobreactor.stats import DONE, ENQUEUED, FAILED, ClusterStats, FinishedJob

#: Seconds over which the summary's jobs per second are averaged.
RATE_WINDOW = 10
#: At most this many rows in a pushed list (failed jobs, delayed jobs); the count is exact.
LIST_LIMIT = 200


class ClusterView(Protocol):
    """What the dashboard needs from a distributor (``jobreactor.Distributor`` has it all)."""

    id: str
    stats: ClusterStats

    @property
    def waiting(self) -> int: ...

    @property
    def pending(self) -> int: ...

    def nodes(self) -> list[Any]: ...

    def waiting_by_priority(self) -> list[tuple[int, int]]: ...

    def owned_jobs(self, *, scheduled: bool = False) -> list[tuple[Job, str | None]]: ...

    def waiting_jobs(self, limit: int) -> list[Job]: ...

    def owned_job(self, job_id: str) -> tuple[Job, str | None] | None: ...

    def cancel_ids(self, job_ids: list[str]) -> list[str]: ...


def can_retry(distributor: Any) -> bool:
    """Retrying failed jobs needs a distributor that keeps them (the durable distributor)."""
    return callable(getattr(distributor, "retry", None))


def _host_port(address: str) -> str:
    """``host:port`` out of Twisted's ``IPv4Address(type='TCP', host='…', port=…)`` text."""
    found = re.search(r"host='([^']*)', port=(\d+)", address)
    if found is None:
        return address
    host, port = found.groups()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def node_rows(distributor: ClusterView, nodes: list[Any] | None = None) -> list[dict[str, Any]]:
    """One row per connected node (``nodes``: :meth:`nodes` if the caller has it already)."""
    return [
        {
            "name": node.name,
            "address": _host_port(node.address),
            "slots": node.slots,
            "load": node.load,
            "held": node.holding,
            "last_heard": getattr(node, "last_heard", None),
        }
        for node in sorted(
            distributor.nodes() if nodes is None else nodes, key=lambda node: node.name
        )
    ]


def summary(distributor: ClusterView, now: float, nodes: list[Any] | None = None) -> dict[str, Any]:
    """The figures every page's header shows, and what ``jr stats`` prints."""
    stats = distributor.stats
    nodes = distributor.nodes() if nodes is None else nodes
    return {
        "distributor": distributor.id,
        "now": now,
        "nodes": len(nodes),
        "slots": sum(node.slots for node in nodes),
        "waiting": distributor.waiting,
        "running": sum(node.load for node in nodes),
        "pending": distributor.pending,
        "totals": stats.totals(),
        "per_second": {
            "enqueued": stats.rates.per_second(ENQUEUED, now, RATE_WINDOW),
            "done": stats.rates.per_second(DONE, now, RATE_WINDOW),
            "failed": stats.rates.per_second(FAILED, now, RATE_WINDOW),
        },
        "can_retry": can_retry(distributor),
    }


#: Rows of the overview's "waiting jobs" and "recently finished" tables.
OVERVIEW_ROWS = 15


def overview(
    distributor: ClusterView, now: float, nodes: list[Any] | None = None
) -> dict[str, Any]:
    waiting_jobs = [
        {"id": job.id, "name": job.name, "priority": job.priority, "enqueued_at": job.enqueued_at}
        for job in distributor.waiting_jobs(OVERVIEW_ROWS)
    ]
    recent = [
        {
            "id": record.job.id,
            "name": record.job.name,
            "status": record.status.value,
            "node": record.node,
            "duration": record.duration,
            "finished_at": record.finished_at,
        }
        for record in distributor.stats.recent_finished(OVERVIEW_ROWS)
    ]
    return {
        "waiting_jobs": waiting_jobs,
        "recent": recent,
        "nodes": node_rows(distributor, nodes),
        "waiting_by_priority": [
            {"priority": priority, "count": count}
            for priority, count in distributor.waiting_by_priority()
        ],
        "rates": distributor.stats.rates.series(now),
    }


def names(distributor: ClusterView) -> dict[str, Any]:
    return {"names": distributor.stats.by_name()}


def _first_line(text: str | None) -> str | None:
    if not text:
        return text
    return text.strip().splitlines()[-1] if "\n" in text.strip() else text.strip()


def failed(distributor: ClusterView, name: str | None = None) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    count = 0
    for record in distributor.stats.failed_jobs():
        if name is not None and record.job.name != name:
            continue
        count += 1
        if len(rows) < LIST_LIMIT:
            rows.append(
                {
                    "id": record.job.id,
                    "name": record.job.name,
                    "node": record.node,
                    "finished_at": record.finished_at,
                    "error_type": record.error_type,
                    "error": _first_line(record.error),
                    "attempt": record.attempt,
                }
            )
    return {"failed": rows, "count": count}


def delayed(distributor: ClusterView, now: float) -> dict[str, Any]:
    """Jobs due later and periodic jobs, soonest first."""
    later = [
        (job, node)
        for job, node in distributor.owned_jobs(scheduled=True)
        if job.period is not None or (job.run_at is not None and job.run_at > now)
    ]
    later.sort(key=lambda pair: pair[0].run_at if pair[0].run_at is not None else now)
    return {
        "delayed": [
            {
                "id": job.id,
                "name": job.name,
                "node": node,
                "run_at": job.run_at,
                "period": job.period,
                "status": job.status.value,
                "attempt": job.attempt,
            }
            for job, node in later[:LIST_LIMIT]
        ],
        "count": len(later),
    }


def job_detail(distributor: ClusterView, job_id: str) -> dict[str, Any] | None:
    """One job: its record while the distributor owns it, else its recorded end."""
    owned = distributor.owned_job(job_id)
    if owned is not None:
        job, node = owned
        return {
            "state": "waiting" if node is None else "on node",
            "node": node,
            "record": job.to_wire(),
            "finished_at": None,
            "duration": None,
            "error": job.last_error,
            "error_type": job.last_error_type,
            "traceback": None,
            "attempt": job.attempt,
        }
    record: FinishedJob | None = distributor.stats.finished_job(job_id)
    if record is None:
        return None
    return {
        "state": record.status.value,
        "node": record.node,
        "record": record.job.to_wire(),
        "finished_at": record.finished_at,
        "duration": record.duration,
        "error": record.error,
        "error_type": record.error_type,
        "traceback": record.traceback,
        "attempt": record.attempt,
    }


#: The dashboard's state names for a stored outcome's status.
_STORED_STATES = {"done": "complete", "failed": "failed", "cancelled": "cancelled"}


def stored_detail(outcome: Any) -> dict[str, Any]:
    """One job's page from the outcome a durable distributor stored (``distributor.outcome``):
    for jobs that finished before this process started, or too long ago to be remembered."""
    record = dict(outcome.job) if outcome.job else {"id": outcome.job_id, "name": outcome.name}
    record["args"] = outcome.args
    return {
        "state": _STORED_STATES.get(outcome.status, outcome.status),
        "node": None,
        "record": record,
        "finished_at": outcome.finished_at,
        "duration": None,
        "error": outcome.error,
        "error_type": outcome.error_type,
        "traceback": None,
        "attempt": record.get("attempt", 0),
    }


def stats_document(distributor: ClusterView, now: float) -> dict[str, Any]:
    """Everything ``jr stats --json`` prints."""
    return {**summary(distributor, now), **names(distributor)}
