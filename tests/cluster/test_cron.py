"""Cron schedules under a Clock: wall-clock times across DST changes, missed runs."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from jobreactor import Config, InvalidJobError, JobRegistry, job
from jobreactor.definitions import registering_into
from jobreactor.testing import LocalCluster

BERLIN = ZoneInfo("Europe/Berlin")


def berlin(year: int, month: int, day: int, hour: int, minute: int) -> float:
    return datetime.datetime(year, month, day, hour, minute, tzinfo=BERLIN).timestamp()


def local_times(stamps: list[float]) -> list[str]:
    return [datetime.datetime.fromtimestamp(s, BERLIN).strftime("%m-%d %H:%M %Z") for s in stamps]


class Runs:
    def __init__(self) -> None:
        self.registry = JobRegistry()
        self.at: list[float] = []
        self.cluster: LocalCluster | None = None
        with registering_into(self.registry):

            @job("report")
            def report(args: dict[str, Any]) -> dict[str, Any]:
                assert self.cluster is not None
                self.at.append(self.cluster.clock.seconds())
                return {"runs": args.get("runs", 0) + 1}


@pytest.fixture
def runs() -> Iterator[Runs]:
    runs = Runs()
    yield runs
    if runs.cluster is not None:
        runs.cluster.stop()


def start(runs: Runs, at: float) -> LocalCluster:
    # Days of simulated time: heartbeats every few minutes, not every second.
    cluster = LocalCluster(
        runs.registry, config=Config(heartbeat_interval=300, heartbeat_timeout=900)
    )
    cluster.clock.advance(at)
    runs.cluster = cluster
    return cluster


def test_daily_run_keeps_local_time_over_spring_and_autumn_changes(runs: Runs) -> None:
    cluster = start(runs, berlin(2026, 3, 27, 12, 0))
    cluster.add_node("n1")
    seen: list[dict[str, Any]] = []
    cluster.distributor.enqueue(
        "report", {}, cron="0 9 * * *", timezone="Europe/Berlin", success=seen.append
    )
    cluster.advance(4 * 86400)
    # 09:00 local before and after the night of 29 March, when clocks jump an hour ahead.
    assert local_times(runs.at) == [
        "03-28 09:00 CET",
        "03-29 09:00 CEST",
        "03-30 09:00 CEST",
        "03-31 09:00 CEST",
    ]
    assert runs.at[1] - runs.at[0] == 23 * 3600  # that day is 23 hours long
    assert [s["runs"] for s in seen] == [1, 2, 3, 4]  # a feedback per run, args carried on


def test_a_time_skipped_by_the_spring_change_runs_once_after_the_jump(runs: Runs) -> None:
    cluster = start(runs, berlin(2026, 3, 28, 12, 0))
    cluster.add_node("n1")
    cluster.distributor.enqueue("report", {}, cron="30 2 * * *", timezone="Europe/Berlin")
    cluster.advance(2 * 86400)
    assert local_times(runs.at) == ["03-29 03:00 CEST", "03-30 02:30 CEST"]


def test_a_time_repeated_by_the_autumn_change_runs_once(runs: Runs) -> None:
    cluster = start(runs, berlin(2026, 10, 24, 12, 0))
    cluster.add_node("n1")
    cluster.distributor.enqueue("report", {}, cron="30 2 * * *", timezone="Europe/Berlin")
    cluster.advance(2 * 86400)
    assert local_times(runs.at) == ["10-25 02:30 CEST", "10-26 02:30 CET"]


def test_working_hours_schedule(runs: Runs) -> None:
    cluster = start(runs, berlin(2026, 3, 27, 16, 50))  # a Friday
    cluster.add_node("n1")
    cluster.distributor.enqueue(
        "report", {}, cron="*/15 9-17 * * mon-fri", timezone="Europe/Berlin"
    )
    cluster.advance(3 * 86400 + 1800)
    times = local_times(runs.at)
    assert times[:5] == [
        "03-27 17:00 CET",
        "03-27 17:15 CET",
        "03-27 17:30 CET",
        "03-27 17:45 CET",
        "03-30 09:00 CEST",  # nothing over the weekend
    ]


@pytest.mark.parametrize("missed, expected", [("skip", 0), ("run_once", 1)])
def test_runs_missed_while_no_node_could_run_them(runs: Runs, missed: str, expected: int) -> None:
    cluster = start(runs, berlin(2026, 6, 1, 8, 0))
    cluster.distributor.enqueue("report", {}, cron="0 * * * *", missed=missed)
    cluster.advance(3 * 3600 + 600)  # 09:00, 10:00 and 11:00 pass with no node
    assert runs.at == []
    cluster.add_node("n1")
    cluster.run()
    assert len(runs.at) == expected  # three missed runs become none or one
    cluster.advance(3600)
    assert local_times(runs.at)[-1] == "06-01 12:00 CEST"  # then on schedule again


def test_bad_cron_options_are_refused_by_name(runs: Runs) -> None:
    cluster = start(runs, 0.0)
    enqueue = cluster.distributor.enqueue
    with pytest.raises(InvalidJobError, match="five-field"):
        enqueue("report", {}, cron="* * *")
    with pytest.raises(InvalidJobError, match="not a valid cron expression"):
        enqueue("report", {}, cron="61 * * * *")
    with pytest.raises(InvalidJobError, match="unknown time zone 'Mars/Olympus'"):
        enqueue("report", {}, cron="0 * * * *", timezone="Mars/Olympus")
    with pytest.raises(InvalidJobError, match="missed must be"):
        enqueue("report", {}, cron="0 * * * *", missed="later")
    with pytest.raises(InvalidJobError, match="give cron= too"):
        enqueue("report", {}, timezone="UTC")
    with pytest.raises(InvalidJobError, match="not both"):
        enqueue("report", {}, cron="0 * * * *", period=60)


def test_a_schedule_is_rerouted_with_its_job_when_its_node_is_lost(runs: Runs) -> None:
    cluster = start(runs, berlin(2026, 6, 1, 8, 30))
    cluster.add_node("n1")
    cluster.distributor.enqueue("report", {}, cron="0 * * * *", timezone="Europe/Berlin")
    cluster.advance(3600)  # 09:00 ran on n1; 10:00 is parked there
    cluster.add_node("n2")
    cluster.stop_node("n1")  # lost with the job: after the grace period it goes to n2
    cluster.advance(3 * 3600)
    assert local_times(runs.at) == [
        "06-01 09:00 CEST",
        "06-01 10:00 CEST",
        "06-01 11:00 CEST",
        "06-01 12:00 CEST",
    ]
