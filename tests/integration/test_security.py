"""The attacks of issue 11 against a real ``twistd jr-distributor --auth`` process: each one
now fails for the intruder while the rightful node or client carries on.

(a) enqueue and collect without credentials; (b) Hello as a huge node to steal jobs;
(c) cancel someone else's job; (d) a forged final report; (e) take a node's name or claim
its jobs through ``held``; (f) collect an absent client's outcomes under its name.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import connectionDone
from twisted.internet.task import deferLater
from twisted.protocols import amp, portforward
from twisted.python.failure import Failure

from jobreactor import Client, ConfigError, JobReactor, connect
from jobreactor.model import Report, Status
from jobreactor.protocol import (
    PROTOCOL_VERSION,
    CancelJobs,
    Enqueue,
    Hello,
    JobReactorAMP,
    JobsDone,
    ProtocolError,
    RunJobs,
)

from .conftest import TWISTD, NodeProcesses, bounded, node_env
from .test_standalone import free_port, joined

USERS = """\
# user:password[:roles[:names]]
worker:workerpw:node:worker_*
app:apppw:client
other:otherpw:client
"""


@pytest.fixture
def secured(tmp_path: Path) -> Any:
    """A ``jr-distributor --auth file:users`` process; yields its port and log path."""
    users = tmp_path / "users"
    users.write_text(USERS)
    (tmp_path / "worker.credentials").write_text("worker:workerpw\n")
    port = free_port()
    log = tmp_path / "distributor.log"
    command = [
        TWISTD, "-n", "--pidfile=", f"--logfile={log}",
        "jr-distributor", "--listen", f"tcp:{port}:interface=127.0.0.1",
        "--auth", f"file:{users}", "--setting", "node_grace_period=1",
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=tmp_path, env=node_env())
    for _ in range(300):  # a subprocess: waiting here blocks nothing it needs
        if log.exists() and "listening on" in log.read_text():
            break
        time.sleep(0.1)
    else:
        process.kill()
        raise AssertionError("the distributor did not start listening within 30 s")
    yield port, log
    if process.poll() is None:
        process.kill()
    process.wait(10)


def start_worker(nodes: NodeProcesses, name: str, port: int) -> subprocess.Popen[bytes]:
    credentials = nodes.tmp_path / "worker.credentials"
    return nodes.start(name, port, "--credentials-file", str(credentials))


class Intruder(JobReactorAMP):
    """A hand-written AMP peer; it takes jobs (as a thief would) if it gets any."""

    def __init__(self) -> None:
        super().__init__()
        self.stolen: list[dict[str, Any]] = []
        self.closed: Deferred[None] = Deferred()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.closed.callback(None)

    @RunJobs.responder
    def run_jobs(self, jobs: Any) -> dict[str, Any]:
        self.stolen += jobs
        return {"accepted": [job["id"] for job in jobs], "parked": [], "rejected": []}


async def intruder(port: int) -> Intruder:
    protocol = Intruder()
    await bounded(connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), protocol))
    return protocol


async def refused(call: Any) -> str:
    """The error an intruder's call got (it must get one)."""
    try:
        await bounded(call, 10)
    except (ProtocolError, amp.RemoteAmpError) as error:
        return f"{type(error).__name__}: {error}"
    raise AssertionError("the distributor answered the intruder")


async def started_client(port: int, name: str, user: str, password: str, **kw: Any) -> Client:
    client = connect(
        f"tcp:host=127.0.0.1:port={port}", name=name, credentials=(user, password), **kw
    )
    await bounded(client.when_connected())
    return client


def hello(name: str, slots: int, credentials: Any = None, held: Any = ()) -> dict[str, Any]:
    return {
        "name": name,
        "slots": slots,
        "version": PROTOCOL_VERSION,
        "held": list(held),
        "credentials": credentials,
    }


def forged_final(job_id: str) -> dict[str, Any]:
    return Report(job_id, 1, Status.COMPLETE, "success", True, {"forged": True}).to_wire()


@pytest_twisted.ensureDeferred
async def test_without_credentials_an_intruder_gets_nothing(
    secured: Any, nodes: NodeProcesses
) -> None:
    port, log = secured
    thief = await intruder(port)
    # (a) enqueue; (d) a report; anything but the login is refused before Hello
    assert "HelloFirst" in await refused(thief.callRemote(Enqueue, jobs=[]))
    assert "HelloFirst" in await refused(thief.callRemote(JobsDone, reports=[]))
    # (b) a node with a million slots; (e) the name of a node that is not up yet
    huge = await intruder(port)
    message = await refused(huge.callRemote(Hello, **hello("worker_1", 1_000_000)))
    assert "Unauthorized" in message and "asks for credentials" in message
    await bounded(huge.closed, 10)  # one login attempt per connection
    early = await intruder(port)
    assert "asks for credentials" in await refused(early.callRemote(Hello, **hello("app", 0)))
    start_worker(nodes, "worker_1", port)
    await joined(nodes, "worker_1")
    # the rightful client enqueues and gets its outcome; no intruder got a job
    client = await started_client(port, "app", "app", "apppw")
    try:
        result = await bounded(client.enqueue("my_job", {"n": 1}).deferred)
        assert result["result"] == "Yay!"
        assert thief.stolen == huge.stolen == early.stolen == []
        late = await intruder(port)
        assert "HelloFirst" in await refused(late.callRemote(CancelJobs, job_ids=["x"]))
    finally:
        await client.stopService()
    assert log.read_text().count("refused (UNAUTHORIZED)") == 2, "one line per refused Hello"


@pytest_twisted.ensureDeferred
async def test_credential_holders_stay_within_their_roles_and_names(
    secured: Any, nodes: NodeProcesses
) -> None:
    port, log = secured
    worker_1 = start_worker(nodes, "worker_1", port)
    await joined(nodes, "worker_1")
    app = await started_client(port, "app", "app", "apppw")
    fired: list[dict[str, Any]] = []
    running = app.enqueue("sleepy", {"seconds": 1.5}, success=fired.append)
    other = await started_client(port, "other", "other", "otherpw")
    try:
        await deferLater(reactor, 0.4, lambda: None)  # the job runs on worker_1
        # (c) another user cannot cancel it
        assert other.submitter.protocol is not None
        answer = await bounded(
            other.submitter.protocol.callRemote(CancelJobs, job_ids=[running.id])
        )
        assert answer["cancelled"] == []
        # (b) a client credential cannot say Hello as a node
        thief = await intruder(port)
        message = await refused(thief.callRemote(Hello, **hello("app", 1_000_000)))
        assert "Unauthorized" in message  # no Challenge: no proof, no entry
        # (d) a legitimate worker_* credential, as another node, forges the final report
        forger = Node9(port)
        await forger.join()
        await bounded(forger.protocol.callRemote(JobsDone, reports=[forged_final(running.id)]))
        result = await bounded(running.deferred)
        assert "forged" not in result and fired and "forged" not in fired[0]
        assert "refused 1 reports from node worker_9" in log.read_text()
        # (e) worker_1 is killed while running a job: worker_9 cannot claim it through held
        second = app.enqueue("sleepy", {"seconds": 1.0})
        await deferLater(reactor, 0.4, lambda: None)
        worker_1.kill()
        worker_1.wait(10)
        forger.protocol.transport.loseConnection()  # type: ignore[union-attr]
        claim = Node9(port, held=[second.id])
        await claim.join()
        assert claim.answer["drop"] == [second.id]
        claim.protocol.transport.loseConnection()  # type: ignore[union-attr]
        # the rightful worker_1 comes back under its name and the job is run again
        start_worker(nodes, "worker_1", port)
        assert (await bounded(second.deferred))["pid"] != worker_1.pid
    finally:
        await other.stopService()
        await app.stopService()


class Node9:
    """A node with the real worker credential under another allowed name, ``worker_9``."""

    def __init__(self, port: int, held: list[str] | None = None) -> None:
        self.port = port
        self.held = held or []
        self.protocol = Intruder()
        self.answer: dict[str, Any] = {}

    async def join(self) -> None:
        from jobreactor.login import say_hello

        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        await bounded(connectProtocol(endpoint, self.protocol))
        self.answer = await bounded(
            say_hello(
                self.protocol,
                name="worker_9",
                slots=1,
                held=self.held,
                credentials=("worker", "workerpw"),
                endpoint="test",
            )
        )


@pytest_twisted.ensureDeferred
async def test_an_absent_clients_outcomes_go_only_to_its_user(
    secured: Any, nodes: NodeProcesses
) -> None:
    port, _ = secured
    start_worker(nodes, "worker_1", port)
    await joined(nodes, "worker_1")
    app = await started_client(port, "app", "app", "apppw")
    app.enqueue("sleepy", {"seconds": 1.0, "mine": True})
    await deferLater(reactor, 0.3, lambda: None)
    await app.stopService()  # away while its job runs
    # (f) its name, without credentials or with another user's, gets refused
    thief = await intruder(port)
    assert "asks for credentials" in await refused(thief.callRemote(Hello, **hello("app", 0)))
    impostor = connect(
        f"tcp:host=127.0.0.1:port={port}", name="app", credentials=("other", "otherpw")
    )
    try:
        with pytest.raises(Exception, match="may not use the name 'app'"):
            await bounded(impostor.when_connected(), 10)
    finally:
        await impostor.stopService()
    await deferLater(reactor, 1.0, lambda: None)  # the job ends while app is away
    collected: list[dict[str, Any]] = []
    back = await started_client(port, "app", "app", "apppw", on_unknown_outcome=collected.append)
    try:
        for _ in range(100):
            if collected:
                break
            await deferLater(reactor, 0.1, lambda: None)
        assert [report["args"]["mine"] for report in collected] == [True]
    finally:
        await back.stopService()


@pytest_twisted.ensureDeferred
async def test_a_wrong_password_is_refused_with_one_line_and_a_backoff(secured: Any) -> None:
    port, log = secured
    client = connect(f"tcp:host=127.0.0.1:port={port}", name="app", credentials=("app", "wrong"))
    try:
        with pytest.raises(Exception, match="wrong user name or password"):
            await bounded(client.when_connected(), 10)
        await deferLater(reactor, 3.0, lambda: None)
    finally:
        await client.stopService()
    text = log.read_text()
    attempts = text.count("refused (UNAUTHORIZED)")
    assert 1 <= attempts <= 6, f"{attempts} attempts in 3 s: the client must back off"
    assert text.count("wrong user name or password") == attempts
    assert "Traceback" not in text


@pytest_twisted.ensureDeferred
async def test_the_password_never_crosses_the_wire(secured: Any, nodes: NodeProcesses) -> None:
    port, _ = secured
    captured: list[bytes] = []

    class Recording(portforward.ProxyServer):
        def dataReceived(self, data: bytes) -> None:
            captured.append(data)
            super().dataReceived(data)

    class RecordingClient(portforward.ProxyClient):
        def dataReceived(self, data: bytes) -> None:
            captured.append(data)
            super().dataReceived(data)

    class RecordingClientFactory(portforward.ProxyClientFactory):
        protocol = RecordingClient

    Recording.clientProtocolFactory = RecordingClientFactory
    factory = portforward.ProxyFactory("127.0.0.1", port)
    factory.protocol = Recording
    proxy: Any = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined,arg-type]
    try:
        proxy_port: int = proxy.getHost().port
        start_worker(nodes, "worker_1", proxy_port)
        await joined(nodes, "worker_1")
        client = await started_client(proxy_port, "app", "app", "apppw")
        try:
            assert (await bounded(client.enqueue("my_job", {}).deferred))["result"] == "Yay!"
        finally:
            await client.stopService()
    finally:
        await proxy.stopListening()
    wire = b"".join(captured)
    assert b"Challenge" in wire and b"worker_1" in wire and b"app" in wire
    assert b"workerpw" not in wire and b"apppw" not in wire


@pytest_twisted.ensureDeferred
async def test_jr_embedded_distributor_node_and_client_with_credentials(
    tmp_path: Path, nodes: NodeProcesses
) -> None:
    users = tmp_path / "users"
    users.write_text(USERS)
    runtime = JobReactor(reactor=reactor)
    distributor = await bounded(runtime.start_distributor("127.0.0.1", 0, auth=f"file:{users}"))
    port = distributor.address.port
    node = await bounded(
        runtime.start_node(
            "worker_1",
            distributors=[("127.0.0.1", port)],
            jobs_directory=str(nodes.jobs_dir),
            credentials=("worker", "workerpw"),
        )
    )
    client: Client | None = None
    try:
        await bounded(distributor.when_nodes(names=["worker_1"]))
        client = await bounded(
            JobReactor(reactor=reactor).connect(
                f"tcp:host=127.0.0.1:port={port}", name="app", credentials=("app", "apppw")
            )
        )
        assert (await bounded(client.enqueue("my_job", {}).deferred))["result"] == "Yay!"
        with pytest.raises(ConfigError, match="no credentials file"):
            runtime.start_distributor("127.0.0.1", 0, auth=f"file:{tmp_path / 'none'}")
    finally:
        if client is not None:
            await client.stopService()
        await node.stopService()
        await distributor.stopService()
