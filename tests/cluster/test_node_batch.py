"""The node's fast path for jobs due now: one timer per box, no Deferred for a job that ends
at once, and still every guarantee (saved as started before it runs, args copied)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from jobreactor import Config, JobRegistry, Status, job
from jobreactor.definitions import registering_into
from jobreactor.model import Job
from jobreactor.storage import MemoryStorage
from jobreactor.testing import LocalCluster


class RecordingStorage(MemoryStorage):
    """Memory storage that notes each save, so a test can see what was written when."""

    def __init__(self, events: list[tuple[str, Any, Any]]) -> None:
        super().__init__()
        self.events = events

    def save(self, node: str, job: Job) -> Any:
        self.events.append(("save", job.id, job.status))
        return super().save(node, job)


def test_a_box_of_jobs_due_now_starts_on_one_timer_each_saved_as_started_first() -> None:
    events: list[tuple[str, Any, Any]] = []
    registry = JobRegistry()
    with registering_into(registry):

        @job("note")
        def note(args: dict[str, Any]) -> None:
            events.append(("run", args["n"], None))

    cluster = LocalCluster(registry, config=Config())
    try:
        cluster.add_node("worker", slots=50, storage=RecordingStorage(events))
        cluster.run()
        starting_timers = []
        real_call_later = cluster.clock.callLater

        def counting(delay: float, function: Any, *args: Any, **kw: Any) -> Any:
            if getattr(function, "__name__", "") in ("_due", "_start_due"):
                starting_timers.append(delay)
            return real_call_later(delay, function, *args, **kw)

        cluster.clock.callLater = counting  # type: ignore[method-assign,assignment]
        done: list[dict[str, Any]] = []
        handles = [
            cluster.distributor.enqueue("note", {"n": n}, success=done.append) for n in range(20)
        ]
        cluster.run()
        assert sorted(args["n"] for args in done) == list(range(20))
        assert starting_timers == [0], "20 jobs due now: one timer, not one each"
        for n, handle in enumerate(handles):
            started = events.index(("save", handle.id, Status.IN_PROGRESS))
            assert started < events.index(("run", n, None)), "saved as started before it ran"
    finally:
        cluster.stop()


@pytest.mark.parametrize(
    "given", [{"x": "original"}, {"x": "original", "nested": {"n": 1}}], ids=["flat", "nested"]
)
def test_a_job_that_changes_its_args_in_place_leaves_its_record_and_retry_alone(
    given: dict[str, Any],
) -> None:
    """The attempt works on a copy: what a failed attempt wrote into its args is neither in
    the stored record nor in the retry's args, flat args (copied flat) or nested ones."""
    seen: list[dict[str, Any]] = []
    stored: list[dict[str, Any]] = []
    registry = JobRegistry()
    cluster = LocalCluster(registry, config=Config(retry_multiplier=0))
    with registering_into(registry):

        @job("scribble", max_attempt=2)
        def scribble(args: dict[str, Any]) -> None:
            seen.append(copy.deepcopy(args))
            args["x"] = "changed"
            if "nested" in args:
                args["nested"]["n"] = 2
            node = cluster.nodes["worker"]
            records: list[Job | None] = []
            node.storage.load("worker", handle.id).addCallback(records.append)
            assert records and records[0] is not None  # memory storage answers at once
            stored.append(records[0].args)
            if len(seen) == 1:
                raise ValueError("first attempt fails")

    try:
        cluster.add_node("worker")
        done: list[dict[str, Any]] = []
        handle = cluster.distributor.enqueue("scribble", given, success=done.append)
        cluster.advance(1)
        assert len(seen) == 2
        assert seen[1] == given, "the retry starts from the job's own args"
        assert stored == [given, given], "the stored record never saw the changes"
        assert done and done[0]["x"] == "changed"
    finally:
        cluster.stop()


def test_args_a_report_cannot_carry_become_an_error_and_sink_no_other_report() -> None:
    """Each report is encoded once and sent as that text: one whose args grew too large or
    too deep carries an error in their place, and the reports beside it arrive unchanged."""
    registry = JobRegistry()
    with registering_into(registry):

        @job("grow")
        def grow(args: dict[str, Any]) -> None:
            args["big"] = "x" * 5000

        @job("deep")
        def deep(args: dict[str, Any]) -> None:
            nested: Any = 1
            for _ in range(80):
                nested = [nested]
            args["deep"] = nested

        @job("fine")
        def fine(args: dict[str, Any]) -> None:
            args["ok"] = "é"

    cluster = LocalCluster(registry, config=Config(max_args_bytes=2048, max_attempt=1))
    try:
        cluster.add_node("a")
        handles = [cluster.distributor.enqueue(name, {}) for name in ("fine", "grow", "deep")]
        cluster.advance(1)
        results: list[Any] = []
        for handle in handles:
            handle.deferred.addBoth(results.append)
        assert results[0] == {"ok": "é"}
        assert results[1]["error"].startswith("the job's args could not be sent: job args are")
        assert "above the limit of 2048 bytes" in results[1]["error"]
        assert "nested too deeply" in results[2]["error"]
    finally:
        cluster.stop()
