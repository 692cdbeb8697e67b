"""A job travels from ``enqueue`` to its feedback across real processes over TCP."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from jobreactor import Config, Distributor, JobFailed

from .conftest import TWISTD, NodeProcesses, bounded, node_env, port_of


@pytest_twisted.ensureDeferred
async def test_jobs_run_on_two_node_processes(
    distributor: Distributor, nodes: NodeProcesses
) -> None:
    nodes.start("worker_1", port_of(distributor), slots=3)
    nodes.start("worker_2", port_of(distributor), slots=3)
    await bounded(distributor.when_nodes(names=["worker_1", "worker_2"]))
    successes: list[dict[str, Any]] = []
    handles = [distributor.enqueue("my_job", {"n": n}, success=successes.append) for n in range(20)]
    results = await bounded(defer.gatherResults([h.deferred for h in handles]))
    assert [result["n"] for result in results] == list(range(20))
    for result in results:
        assert result["result"] == "Yay!" and result["second"] is True
    assert sorted(args["n"] for args in successes) == list(range(20))
    assert len({args["pid"] for args in successes}) == 2, "both nodes took jobs"


@pytest_twisted.ensureDeferred
async def test_failing_job_reports_error_after_its_attempts(
    distributor: Distributor, nodes: NodeProcesses
) -> None:
    nodes.start("worker_1", port_of(distributor))
    errors: list[dict[str, Any]] = []
    successes: list[dict[str, Any]] = []
    handle = distributor.enqueue("failing", {"n": 7}, success=successes.append, error=errors.append)
    with pytest.raises(JobFailed) as caught:
        await bounded(handle.deferred)
    assert caught.value.error == "broken 7"
    assert caught.value.error_type == "ValueError"
    assert successes == []
    assert errors == [caught.value.job_args]
    assert errors[0]["noted"] is True
    assert "touched" not in errors[0]


@pytest_twisted.ensureDeferred
async def test_unknown_job_name_comes_back_as_the_jobs_error(
    distributor: Distributor, nodes: NodeProcesses
) -> None:
    nodes.start("worker_1", port_of(distributor))
    errors: list[dict[str, Any]] = []
    handle = distributor.enqueue("not_defined", {"x": 1}, error=errors.append)
    with pytest.raises(JobFailed) as caught:
        await bounded(handle.deferred)
    assert caught.value.error_type == "NoSuchJob"
    assert "not_defined" in errors[0]["error"]
    # the node is still up and serving
    assert (await bounded(distributor.enqueue("my_job", {}).deferred))["result"] == "Yay!"


@pytest_twisted.ensureDeferred
async def test_args_above_amp_value_limit_travel(
    distributor: Distributor, nodes: NodeProcesses
) -> None:
    nodes.start("worker_1", port_of(distributor))
    blob = "x" * 200_000
    result = await bounded(distributor.enqueue("echo_size", {"blob": blob}).deferred)
    assert result["size"] == 200_000
    assert result["blob"] == blob


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"\x01\x00" + b"k" * 256 + b"\x00\x01v\x00\x00", id="malformed-box"),
        pytest.param(b"\x00\xffGET / HTTP/1.1\r\n\r\n" + bytes(range(256)) * 4, id="never-ends"),
        pytest.param(
            b"\x00\x04_ask\x00\x011\x00\x08_command\x00\x07RunJobs\x00\x00", id="no-hello"
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_garbage_bytes_close_only_that_connection(
    garbage: bytes, nodes: NodeProcesses
) -> None:
    distributor = Distributor(
        "tcp:0:interface=127.0.0.1", config=Config(hello_timeout=1.0), reactor=reactor
    )
    distributor.startService()
    try:
        await bounded(distributor.when_listening())
        nodes.start("worker_1", port_of(distributor))
        await bounded(distributor.when_nodes(names=["worker_1"]))

        def send_garbage() -> bytes:
            address = ("127.0.0.1", port_of(distributor))
            with socket.create_connection(address, timeout=5) as sock:
                sock.sendall(garbage)
                chunks = []
                try:
                    while chunk := sock.recv(4096):
                        chunks.append(chunk)
                except ConnectionResetError:
                    pass
                return b"".join(chunks)

        # returns once the distributor closed the connection (recv times out otherwise)
        answer = await bounded(deferToThread(send_garbage))
        assert b"_answer" not in answer, "nothing sent before Hello is carried out"
        result = await bounded(distributor.enqueue("my_job", {"after": "garbage"}).deferred)
        assert result["result"] == "Yay!"
        assert [info.name for info in distributor.nodes()] == ["worker_1"]
    finally:
        await maybeDeferred(distributor.stopService)


@pytest_twisted.ensureDeferred
async def test_second_node_with_a_connected_name_is_refused(
    distributor: Distributor, nodes: NodeProcesses
) -> None:
    nodes.start("twin", port_of(distributor))
    await bounded(distributor.when_nodes(names=["twin"]))
    nodes.start("twin", port_of(distributor))
    for _ in range(100):
        if "is already connected" in nodes.log("twin"):
            break
        await deferLater(reactor, 0.1, lambda: None)
    assert "a node named 'twin' is already connected" in nodes.log("twin")
    await deferLater(reactor, 1.5, lambda: None)  # a second refused attempt, with backoff
    log = nodes.log("twin")
    assert "Unhandled" not in log and "Traceback" not in log, "a refusal is one log line"
    assert [info.name for info in distributor.nodes()] == ["twin"]
    result = await bounded(distributor.enqueue("my_job", {}).deferred)
    assert result["result"] == "Yay!"


@pytest_twisted.ensureDeferred
async def test_jobs_of_a_killed_node_run_on_another_after_the_grace_period(
    distributor: Distributor, nodes: NodeProcesses
) -> None:
    doomed = nodes.start("doomed", port_of(distributor), slots=5)
    await bounded(distributor.when_nodes(names=["doomed"]))
    handles = [distributor.enqueue("sleepy", {"seconds": 30}) for _ in range(3)]
    for _ in range(100):
        if next(info for info in distributor.nodes()).holding == 3:
            break
        await deferLater(reactor, 0.1, lambda: None)
    doomed.send_signal(signal.SIGKILL)
    survivor = nodes.start("survivor", port_of(distributor), slots=5)
    await bounded(distributor.when_nodes(names=["survivor"]))
    # the re-routed jobs still sleep 30 s: cancel them once they are on the survivor
    for _ in range(100):
        infos = {info.name: info for info in distributor.nodes()}
        if infos.get("survivor") and infos["survivor"].holding == 3:
            break
        await deferLater(reactor, 0.1, lambda: None)
    assert distributor.nodes()[0].name == "survivor"
    assert distributor.nodes()[0].holding == 3
    for handle in handles:
        handle.cancel()
    outcomes = await bounded(defer.DeferredList([h.deferred for h in handles], consumeErrors=True))
    assert all(not ok for ok, _ in outcomes)
    assert survivor.poll() is None


@pytest_twisted.ensureDeferred
async def test_json_log_lines_carry_job_id_name_node_and_attempt(
    distributor: Distributor, nodes: NodeProcesses
) -> None:
    nodes.start("logged", port_of(distributor), "--log-format", "json")
    await bounded(distributor.when_nodes(names=["logged"]))
    handle = distributor.enqueue("failing", {"n": 3})
    with pytest.raises(JobFailed):
        await bounded(handle.deferred)
    await deferLater(reactor, 0.5, lambda: None)  # the log line is written
    events = [json.loads(line) for line in nodes.log("logged").splitlines() if line.strip()]
    about_job = [event for event in events if event.get("job_id") == handle.id]
    assert {event.get("attempt") for event in about_job} == {1, 2}
    for event in about_job:
        assert event["job_name"] == "failing" and event["node"] == "logged"


@pytest_twisted.ensureDeferred
async def test_unix_socket_endpoints_on_both_sides(nodes: NodeProcesses, tmp_path: Any) -> None:
    path = tmp_path / "distributor.sock"
    distributor = Distributor(f"unix:{path}", reactor=reactor)
    distributor.startService()
    try:
        await bounded(distributor.when_listening())
        nodes.processes["unix"] = subprocess.Popen(
            [
                TWISTD,
                "-n",
                "--pidfile=",
                f"--logfile={nodes.log_path('unix')}",
                "jr-node",
                "--name",
                "unix",
                "--jobs",
                str(nodes.jobs_dir),
                "--distributor",
                f"unix:path={path}",
            ],
            cwd=tmp_path,
            env=node_env(),
        )
        await bounded(distributor.when_nodes(names=["unix"]))
        result = await bounded(distributor.enqueue("my_job", {"via": "unix"}).deferred)
        assert result["result"] == "Yay!"
    finally:
        await maybeDeferred(distributor.stopService)
