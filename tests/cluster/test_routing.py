"""Routing by job name and global rate limits, under a Clock."""

from __future__ import annotations

import bisect
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater

from jobreactor import Config, JobDefinitionError, JobFailed, JobRegistry, job
from jobreactor.definitions import registering_into
from jobreactor.errors import ConfigError
from jobreactor.testing import LocalCluster

#: The clock of the cluster under test, for jobs that take a while.
CLOCK: list[Clock] = []


def registry_with(starts: list[tuple[str, int, float]], *names: str, **limits: str) -> Any:
    """A registry of jobs that record (job name, args["i"], start time) and take 50 ms."""
    registry = JobRegistry()
    with registering_into(registry):
        for name in names:

            def record(args: dict[str, Any], name: str = name) -> Deferred[dict[str, Any]]:
                itself = args["job_itself"]
                starts.append((name, args.get("i", 0), CLOCK[-1].seconds()))
                return deferLater(CLOCK[-1], 0.05, lambda: {"ran_on": itself["node"]})

            job(name, rate_limit=limits.get(name))(record)
    return registry


def cluster_of(registries: dict[str, JobRegistry], **settings: Any) -> LocalCluster:
    config = Config(merge_job_itself_to_args=True, max_attempt=1, **settings)
    first = next(iter(registries.values()))
    cluster = LocalCluster(first, config=config)
    CLOCK[:] = [cluster.clock]
    for name, registry in registries.items():
        cluster.registry = registry
        cluster.add_node(name)
    return cluster


def outcome_of(handle: Any) -> Any:
    return handle._outcome if handle.done else None


def test_thousand_jobs_at_100_per_second_over_three_nodes_take_ten_seconds() -> None:
    starts: list[tuple[str, int, float]] = []
    registry = registry_with(starts, "call_api", call_api="100/s")
    cluster = cluster_of({f"n{i}": registry for i in range(3)})
    began = cluster.clock.seconds()
    handles = [cluster.distributor.enqueue("call_api", {"i": i}) for i in range(1000)]
    cluster.advance(11)
    assert all(h.done for h in handles)
    times = [at - began for _, _, at in starts]
    assert 9.9 <= max(times) <= 10.1
    assert [i for _, i, _ in starts] == list(range(1000))  # FIFO kept
    for index, at in enumerate(times):  # never more than 100 in any one-second window
        assert bisect.bisect_left(times, at + 1 - 1e-6) - index <= 100
    ran_on = {h._outcome["ran_on"] for h in handles}
    assert ran_on == {"n0", "n1", "n2"}  # the limit holds across the nodes together
    cluster.stop()


def test_the_distributor_setting_overrides_and_other_jobs_are_not_held_up() -> None:
    starts: list[tuple[str, int, float]] = []
    registry = registry_with(starts, "slow_api", "free", slow_api="100/s")
    cluster = cluster_of({"n1": registry}, rate_limits={"slow_api": "2/s"})
    for i in range(4):
        cluster.distributor.enqueue("slow_api", {"i": i})
    cluster.distributor.enqueue("free", {})
    cluster.run()
    assert [(name, at) for name, _, at in starts] == [("slow_api", 0.0), ("free", 0.0)]
    cluster.advance(2)
    assert [at for name, _, at in starts if name == "slow_api"] == [0.0, 0.5, 1.0, 1.5]
    cluster.stop()


def test_jobs_go_only_to_nodes_that_run_them() -> None:
    starts: list[tuple[str, int, float]] = []
    cluster = cluster_of(
        {"mailer": registry_with(starts, "send_mail"), "renderer": registry_with(starts, "render")}
    )
    mails = [cluster.distributor.enqueue("send_mail", {}) for _ in range(20)]
    renders = [cluster.distributor.enqueue("render", {}) for _ in range(20)]
    cluster.advance(1)
    assert {h._outcome["ran_on"] for h in mails} == {"mailer"}
    assert {h._outcome["ran_on"] for h in renders} == {"renderer"}
    cluster.stop()


def test_a_job_no_node_runs_fails_at_once_by_default_naming_it() -> None:
    starts: list[tuple[str, int, float]] = []
    cluster = cluster_of({"n1": registry_with(starts, "known")})
    handle = cluster.distributor.enqueue("unknown_job", {})
    cluster.run()
    failure = outcome_of(handle)
    assert failure.check(JobFailed) and failure.value.error_type == "NoSuchJob"
    assert "'unknown_job'" in failure.value.error and "n1 has: known" in failure.value.error
    cluster.stop()


def test_with_no_node_timeout_it_waits_for_a_node_that_runs_it() -> None:
    starts: list[tuple[str, int, float]] = []
    cluster = cluster_of({"n1": registry_with(starts, "known")}, no_node_timeout=30)
    late = cluster.distributor.enqueue("report", {})
    never = cluster.distributor.enqueue("nobody_runs_this", {})
    cluster.advance(20)
    assert not late.done and not never.done
    cluster.registry = registry_with(starts, "report")
    cluster.add_node("n2")
    cluster.advance(15)
    assert outcome_of(late)["ran_on"] == "n2"
    failure = outcome_of(never)
    assert failure.value.error_type == "NoSuchJob" and "after 30 s" in failure.value.error
    cluster.stop()


def test_bad_rate_limits_are_refused_by_name() -> None:
    with pytest.raises(JobDefinitionError, match="job 'x': a rate limit is"):
        job("x", rate_limit="fast")
    with pytest.raises(ConfigError, match=r"rate_limits\['x'\]"):
        Config(rate_limits={"x": "0/s"})


def test_a_malformed_hello_jobs_list_is_a_bad_message() -> None:
    from jobreactor.distributor.routing import read_hello_jobs
    from jobreactor.protocol import BadMessage

    with pytest.raises(BadMessage, match="jobs must be an object"):
        read_hello_jobs(["call_api"])
    with pytest.raises(BadMessage, match="job 'call_api': a rate limit is"):
        read_hello_jobs({"call_api": {"rate_limit": "lots"}})
    assert read_hello_jobs(None) is None
    names = read_hello_jobs({"a": {}, "b": {"rate_limit": "5/m"}})
    assert names is not None and names["a"] is None
    limit = names["b"]
    assert limit is not None and limit.interval == 12.0


def test_paced_jobs_whose_nodes_left_fail_like_any_other() -> None:
    starts: list[tuple[str, int, float]] = []
    cluster = cluster_of(
        {"api_node": registry_with(starts, "api", api="1/s"), "other": registry_with(starts, "x")}
    )
    handles = [cluster.distributor.enqueue("api", {"i": i}) for i in range(3)]
    cluster.run()
    assert len(starts) == 1 and cluster.distributor.paced == 2
    cluster.stop_node("api_node")
    cluster.advance(10)  # past the grace period: the started one is re-routed too
    for handle in handles:
        assert outcome_of(handle).value.error_type == "NoSuchJob"
    assert cluster.distributor.waiting == 0
    cluster.stop()


def test_paced_jobs_wait_for_room_on_their_node_without_spinning() -> None:
    starts: list[tuple[str, int, float]] = []
    config = Config(merge_job_itself_to_args=True, max_attempt=1)
    cluster = LocalCluster(registry_with(starts, "api", api="100/s"), config=config)
    CLOCK[:] = [cluster.clock]
    cluster.add_node("busy", slots=1)  # each job takes 50 ms: room comes slower than turns
    cluster.registry = registry_with(starts, "other")
    cluster.add_node("idle")  # room, but not for these jobs
    handles = [cluster.distributor.enqueue("api", {"i": i}) for i in range(3)]
    cluster.advance(1)  # a busy loop at one instant would never get through this
    assert [round(at, 3) for _, _, at in starts] == [0.0, 0.05, 0.1]
    assert all(outcome_of(h)["ran_on"] == "busy" for h in handles)
    cluster.stop()


def test_equal_nodes_take_turns_even_when_each_job_is_over_before_the_next_comes() -> None:
    """Both nodes are idle at every enqueue: the one that waited longer gets the job."""
    starts: list[tuple[str, int, float]] = []
    registry = registry_with(starts, "greet")
    cluster = cluster_of({"w1": registry, "w2": registry})
    ran_on = []
    for i in range(6):
        handle = cluster.distributor.enqueue("greet", {"i": i})
        cluster.advance(1)  # over and reported: both nodes idle again
        ran_on.append(outcome_of(handle)["ran_on"])
    assert ran_on == ["w1", "w2"] * 3
    cluster.stop()


def test_a_burst_alternates_over_equal_nodes() -> None:
    starts: list[tuple[str, int, float]] = []
    registry = registry_with(starts, "greet")
    cluster = cluster_of({"w1": registry, "w2": registry})
    handles = [cluster.distributor.enqueue("greet", {"i": i}) for i in range(6)]
    cluster.advance(1)
    assert [outcome_of(h)["ran_on"] for h in handles] == ["w1", "w2"] * 3
    cluster.stop()
