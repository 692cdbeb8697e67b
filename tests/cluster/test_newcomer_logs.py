"""What the distributor's log tells a new user: a client is called a client, and a job's
first failure is a warning with the error, long before its retries run out."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.logger import LogLevel, capturedLogs, formatEvent

from jobreactor import Config, JobRegistry, job
from jobreactor.definitions import registering_into
from jobreactor.testing import LocalCluster


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    registry = JobRegistry()
    with registering_into(registry):

        @job("buggy")
        def buggy(args: dict[str, Any]) -> None:
            raise KeyError("user_id")

        @job("fine")
        def fine(args: dict[str, Any]) -> None:
            pass

    cluster = LocalCluster(registry, config=Config())  # the default: 10 attempts
    cluster.add_node("worker_1")
    yield cluster
    cluster.stop()


def lines(events: Any, level: LogLevel) -> list[str]:
    return [formatEvent(event) for event in events if event["log_level"] == level]


def test_a_client_is_logged_as_a_client(cluster: LocalCluster) -> None:
    with capturedLogs() as events:
        cluster.add_client("web-1")
        cluster.run()

    said = lines(events, LogLevel.info)
    assert "client web-1 connected" in said
    assert not [line for line in said if "node web-1" in line]


def test_the_first_failure_of_a_job_is_a_warning_naming_the_error(cluster: LocalCluster) -> None:
    errors: list[dict[str, Any]] = []
    with capturedLogs() as events:
        handle = cluster.distributor.enqueue("buggy", {}, error=errors.append)
        cluster.distributor.enqueue("fine", {})
        cluster.advance(300)  # 9 retries, n * 5 s apart: 225 s

    assert len(errors) == 1 and errors[0]["error_type"] == "KeyError"  # after 10 attempts
    assert [line for line in lines(events, LogLevel.warn) if "will be retried" in line] == [
        f"job buggy ({handle.id}) failed on node worker_1: KeyError: 'user_id'; it will be "
        "retried (up to max_attempt attempts, 10 by default) before its error feedback runs; "
        "@job('buggy', max_attempt=1) or enqueue(..., max_attempt=1) stops at the first failure"
    ]


def test_no_first_failure_warning_when_there_is_no_retry(cluster: LocalCluster) -> None:
    with capturedLogs() as events:
        cluster.distributor.enqueue("buggy", {}, max_attempt=1)
        cluster.run()

    assert [line for line in lines(events, LogLevel.warn) if "will be retried" in line] == []
