"""Fixtures for the storage tests: real redis-server processes and one opened storage per backend.

Every redis-server here is started by the tests themselves, on a free port in a temporary
directory, so a test can stop, kill and restart it. A missing ``redis-server`` is a failure,
never a skip (``scripts/bootstrap.sh --redis`` installs it).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from jobreactor.storage import IJobStorage, MemoryStorage, RedisStorage, SQLiteStorage

#: Seconds a test waits for a storage operation that should succeed.
WAIT = 10.0
#: The reply/connect timeout given to the Redis storages under test (seconds).
REDIS_TIMEOUT = 1.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def redis_server_binary() -> str:
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )
    if found is None:
        pytest.fail("redis-server is not installed: run scripts/bootstrap.sh --redis")
    return found


class RedisServer:
    """One redis-server process on 127.0.0.1:``port`` with its files in ``directory``.

    ``appendonly`` turns on AOF persistence (``appendfsync everysec``, Redis' default);
    RDB snapshots are always off (``--save ''``), so only the AOF can bring data back.
    """

    def __init__(
        self,
        directory: Path,
        *,
        appendonly: bool,
        extra: tuple[str, ...] = (),
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        self.directory = directory
        self.port = free_port()
        self.appendonly = appendonly
        self.extra = extra
        #: (certificate, key, CA) files: the server then speaks TLS only, on ``port``.
        self.tls = tls
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def storage(self, **options: Any) -> RedisStorage:
        """A Redis storage on this server, under a prefix of its own."""
        options.setdefault("prefix", f"test-{uuid.uuid4().hex[:8]}")
        options.setdefault("timeout", REDIS_TIMEOUT)
        return RedisStorage(host="127.0.0.1", port=self.port, **options)

    def start(self) -> None:
        assert self.process is None, "already running"
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.tls is None:
            ports = ["--port", str(self.port)]
        else:
            cert, key, ca = self.tls
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"]
            ports += ["--tls-cert-file", str(cert), "--tls-key-file", str(key)]
            ports += ["--tls-ca-cert-file", str(ca)]
        command = [
            redis_server_binary(),
            *ports,
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--daemonize",
            "no",
            "--logfile",
            str(self.directory / "redis.log"),
            *self.extra,
        ]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                self.process = None
                pytest.fail(f"redis-server exited at start:\n{log}")
            if self.ping():
                return
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"redis-server did not answer on port {self.port} within {WAIT} s")

    def ping(self) -> bool:
        """Whether the server answers (a TLS one: whether it accepts connections)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as connection:
                if self.tls is not None:
                    return True
                connection.sendall(b"PING\r\n")
                # NOAUTH: up, and wants a password; LOADING (its AOF) is not ready yet.
                return connection.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server (SIGTERM: a clean shutdown; SIGKILL: a crash) and wait for it."""
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=WAIT)

    def cli(self, *args: str, db: int = 0, password: str | None = None) -> str:
        """The ``redis-cli --raw`` output of one command (plain servers only)."""
        command = ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), "-n", str(db), "--raw"]
        if password is not None:
            command += ["--no-auth-warning", "-a", password]
        done = subprocess.run(
            [*command, *args], capture_output=True, text=True, timeout=WAIT, check=True
        )
        return done.stdout

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One server for the tests that only need Redis to be there; each uses its own prefix."""
    server = RedisServer(tmp_path_factory.mktemp("redis-shared"), appendonly=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_servers(tmp_path: Path) -> Iterator[Any]:
    """A factory of servers of this test alone: ``redis_servers(appendonly=True)``.

    Every server it started is stopped at the end of the test.
    """
    started: list[RedisServer] = []

    def make(
        *,
        appendonly: bool = False,
        extra: tuple[str, ...] = (),
        tls: tuple[Path, Path, Path] | None = None,
    ) -> RedisServer:
        directory = tmp_path / f"redis-{len(started)}"
        server = RedisServer(directory, appendonly=appendonly, extra=extra, tls=tls)
        started.append(server)
        server.start()
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture(params=[False, True], ids=["no-persistence", "appendonly"])
def redis_server(request: pytest.FixtureRequest, redis_servers: Any) -> RedisServer:
    """A server of this test alone, once without persistence and once with AOF."""
    server: RedisServer = redis_servers(appendonly=request.param)
    return server


def make_storage(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """A new, unopened storage of ``kind`` (memory, sqlite or redis) for this test."""
    if kind == "memory":
        return MemoryStorage()
    if kind == "sqlite":
        return SQLiteStorage(str(tmp_path / "jobs.db"))
    server: RedisServer = request.getfixturevalue("shared_redis")
    return server.storage()


@pytest_twisted.async_yield_fixture(params=["memory", "sqlite", "redis"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[IJobStorage]:
    """An opened storage of each kind; closed after the test."""
    opened = make_storage(request.param, request, tmp_path)
    await opened.open().addTimeout(WAIT, reactor)
    yield opened
    await opened.close().addTimeout(WAIT, reactor)
