"""What only the Redis storage has to get right: outages, persistence, its index, its URLs."""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from jobreactor.errors import ConfigError
from jobreactor.model import Status
from jobreactor.monitor import Monitor
from jobreactor.storage import RedisStorage, StorageError, open_storage
from jobreactor.storage.redis import RedisKeys

from .conftest import REDIS_TIMEOUT, WAIT, RedisServer
from .test_behaviour import full_job, wait

#: How much later than its timeout a failing operation may report (scheduling slack).
SLACK = 1.5


async def fails_in_time(deferred: Deferred[Any]) -> StorageError:
    """Wait for ``deferred`` to fail with StorageError within the storage timeout."""
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        await deferred.addTimeout(REDIS_TIMEOUT + WAIT, reactor)
    assert time.monotonic() - started < REDIS_TIMEOUT + SLACK
    return info.value


async def saves_again(storage: RedisStorage, within: float = 15.0) -> None:
    """Save until a save works (the pool reconnects with backoff), at most ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        try:
            await wait(storage.save("node-1", full_job(id="after")))
            return
        except StorageError:
            if time.monotonic() > deadline:
                raise
            await deferLater(reactor, 0.2, lambda: None)


@pytest_twisted.ensureDeferred
async def test_save_fails_in_time_while_redis_is_down_then_works(
    redis_server: RedisServer,
) -> None:
    storage = redis_server.storage()
    await wait(storage.open())
    try:
        await wait(storage.save("node-1", full_job(id="before")))
        redis_server.stop()
        error = await fails_in_time(storage.save("node-1", full_job(id="lost")))
        assert "saving job lost of node node-1" in str(error)
        # Still down: each later call fails in time as well, none hangs.
        await fails_in_time(storage.load("node-1", "before"))
        await fails_in_time(storage.jobs_for("node-1"))

        redis_server.start()
        await saves_again(storage)
        assert (await wait(storage.load("node-1", "after"))) == full_job(id="after")
        kept = await wait(storage.load("node-1", "before"))
        # SIGTERM makes Redis write its AOF; without persistence the data is gone.
        assert (kept is not None) == redis_server.appendonly
    finally:
        await wait(storage.close())


@pytest_twisted.ensureDeferred
async def test_save_fails_in_time_when_redis_hangs(shared_redis: RedisServer) -> None:
    """A server that accepts but never answers (SIGSTOP) is cut off by the reply timeout."""
    storage = shared_redis.storage()
    await wait(storage.open())
    assert shared_redis.process is not None
    try:
        shared_redis.process.send_signal(signal.SIGSTOP)
        try:
            await fails_in_time(storage.save("node-1", full_job(id="stuck")))
        finally:
            shared_redis.process.send_signal(signal.SIGCONT)
        await saves_again(storage)
    finally:
        await wait(storage.close())


@pytest_twisted.ensureDeferred
async def test_open_fails_in_time_when_nothing_listens(redis_servers: Any) -> None:
    server = redis_servers()
    server.stop()
    storage = server.storage()
    error = await fails_in_time(storage.open())
    assert f"127.0.0.1:{server.port}" in str(error)
    assert "connecting: connection refused" in str(error)  # at once, not after the timeout
    # open() cleaned up after itself: a later call says so instead of waiting.
    with pytest.raises(StorageError, match="not open"):
        await wait(storage.save("node-1", full_job()))


@pytest_twisted.ensureDeferred
async def test_acknowledged_jobs_survive_a_redis_crash_with_aof(redis_servers: Any) -> None:
    server = redis_servers(appendonly=True)
    storage = server.storage()
    await wait(storage.open())
    jobs = [full_job(id=f"job-{n}", status=Status.QUEUED, attempt=n) for n in range(50)]
    try:
        for job in jobs:
            await wait(storage.save("node-1", job))
        await wait(storage.save("node-1", full_job(id="done", status=Status.COMPLETE)))
        await wait(storage.remove("node-1", "job-0"))
        server.stop(signal.SIGKILL)  # a crash: no shutdown, no final AOF rewrite
        server.start()
        await saves_again(storage)
        queued = await wait(storage.jobs_for("node-1", [Status.QUEUED]))
        assert sorted(queued, key=lambda job: job.attempt) == jobs[1:]
        assert [job.id for job in await wait(storage.jobs_for("node-1", [Status.COMPLETE]))] == [
            "done"
        ]
    finally:
        await wait(storage.close())


@pytest_twisted.ensureDeferred
async def test_keys_and_index_layout(shared_redis: RedisServer) -> None:
    storage = shared_redis.storage(prefix="layout")
    keys = RedisKeys("layout")
    await wait(storage.open())
    try:
        await wait(storage.save("node-1", full_job(id="a", status=Status.QUEUED)))
        await wait(storage.save("node-1", full_job(id="b", status=Status.QUEUED)))
        await wait(storage.save("node-1", full_job(id="b", status=Status.IN_PROGRESS)))
        await wait(storage.save("node-2", full_job(id="c", status=Status.ERROR)))

        assert set(shared_redis.cli("KEYS", "layout:*").split()) >= {
            "layout:nodes",
            "layout:node:node-1:jobs",
            "layout:node:node-2:jobs",
        }
        assert sorted(shared_redis.cli("SMEMBERS", keys.nodes()).split()) == ["node-1", "node-2"]
        assert shared_redis.cli("HLEN", keys.jobs("node-1")).strip() == "2"
        assert shared_redis.cli("SMEMBERS", keys.status("node-1", Status.QUEUED)).split() == ["a"]
        in_progress = keys.status("node-1", Status.IN_PROGRESS)
        assert shared_redis.cli("SMEMBERS", in_progress).split() == ["b"]
        assert shared_redis.cli("SMEMBERS", keys.status("node-2", Status.ERROR)).split() == ["c"]

        await wait(storage.remove("node-2", "c"))
        assert shared_redis.cli("EXISTS", keys.jobs("node-2")).strip() == "0"
        assert shared_redis.cli("EXISTS", keys.status("node-2", Status.ERROR)).strip() == "0"
        assert shared_redis.cli("SMEMBERS", keys.nodes()).split() == ["node-1"]
    finally:
        await wait(storage.close())


@pytest_twisted.ensureDeferred
async def test_no_command_scans_the_database(redis_servers: Any, tmp_path: Path) -> None:
    """MONITOR shows every command, those run inside Lua scripts too: no KEYS, no SCAN."""
    server = redis_servers()
    log_path = tmp_path / "monitor.log"
    with log_path.open("w") as log_file:
        watcher = subprocess.Popen(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(server.port), "MONITOR"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + WAIT
        while "OK" not in log_path.read_text():
            assert time.monotonic() < deadline, "redis-cli MONITOR did not start"
            time.sleep(0.05)
        storage = server.storage()
        await wait(storage.open())
        monitor = Monitor(storage)
        try:
            for n in range(5):
                await wait(storage.save("node-1", full_job(id=f"job-{n}", status=Status.QUEUED)))
            await wait(storage.load("node-1", "job-1"))
            await wait(storage.jobs_for("node-1"))
            await wait(storage.jobs_for("node-1", [Status.QUEUED, Status.ERROR]))
            await wait(storage.remove("node-1", "job-1"))
            await wait(monitor.counts())
            await wait(monitor.destroy_all_jobs_for("node-1"))
            await wait(storage.nodes())
            await wait(storage.save("node-1", full_job(id="marker")))
        finally:
            await wait(storage.close())
        deadline = time.monotonic() + WAIT
        while "marker" not in log_path.read_text():
            assert time.monotonic() < deadline, "MONITOR did not show the last command"
            time.sleep(0.05)
    finally:
        watcher.terminate()
        watcher.wait(timeout=WAIT)

    commands = []
    for line in log_path.read_text().splitlines():
        if '"' in line:
            commands.append(line.split('"')[1].upper())
    assert {"EVAL", "EVALSHA", "HSET", "SADD", "SREM", "HGET"} & set(commands)
    assert "SMEMBERS" in commands  # the status index is what jobs_for reads
    assert not {"KEYS", "SCAN", "FLUSHDB", "FLUSHALL"} & set(commands), sorted(set(commands))


@pytest_twisted.ensureDeferred
async def test_password_db_and_prefix_from_the_url(redis_servers: Any) -> None:
    server = redis_servers(extra=("--requirepass", "s3cr:et@"))
    url = f"redis://:s3cr%3Aet%40@127.0.0.1:{server.port}/3?prefix=app&timeout=1"
    storage = open_storage(url)
    assert isinstance(storage, RedisStorage)
    assert "s3cr" not in str(storage) and "s3cr" not in repr(storage)
    await wait(storage.open())
    try:
        await wait(storage.save("node-1", full_job(id="x")))
    finally:
        await wait(storage.close())
    stored = server.cli("HKEYS", "app:node:node-1:jobs", db=3, password="s3cr:et@")
    assert stored.split() == ["x"]
    assert server.cli("DBSIZE", db=0, password="s3cr:et@").strip() == "0"

    wrong = open_storage(f"redis://:nope@127.0.0.1:{server.port}/0?timeout=1")
    error = await fails_in_time(wrong.open())
    assert "auth" in str(error).lower()
    assert "nope" not in str(error)

    missing = open_storage(f"redis://127.0.0.1:{server.port}/0?timeout=1")
    error = await fails_in_time(missing.open())
    assert "NOAUTH" in str(error)


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for localhost/127.0.0.1 signed by it, as PEM files."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def build(subject: str, issuer: x509.Name | None, signer: Any, ca: bool) -> Any:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer or name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
        return key, builder.sign(signer or key, hashes.SHA256())

    ca_key, ca_cert = build("jobreactor test CA", None, None, True)
    key, cert = build("localhost", ca_cert.subject, ca_key, False)
    files = directory / "server.crt", directory / "server.key", directory / "ca.crt"
    files[0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files[1].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files[2].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    os.chmod(files[1], 0o600)
    return files


@pytest_twisted.ensureDeferred
async def test_tls_with_rediss(redis_servers: Any, tmp_path: Path) -> None:
    pytest.importorskip("OpenSSL", reason="TLS needs pyOpenSSL (twisted[tls])")
    cert, key, ca = make_certificates(tmp_path)
    server = redis_servers(tls=(cert, key, ca))
    storage = open_storage(f"rediss://localhost:{server.port}/0?ssl_ca_certs={ca}&timeout=2")
    assert str(storage).startswith("rediss://")
    await wait(storage.open())
    try:
        await wait(storage.save("node-1", full_job(id="secure")))
        assert (await wait(storage.load("node-1", "secure"))) == full_job(id="secure")
    finally:
        await wait(storage.close())

    # The server's certificate is checked: without our CA the connection is refused.
    untrusted = open_storage(f"rediss://localhost:{server.port}/0?timeout=1")
    with pytest.raises(StorageError):
        await untrusted.open().addTimeout(WAIT, reactor)
    # A plain connection to a TLS port gets nowhere either.
    plain = open_storage(f"redis://localhost:{server.port}/0?timeout=1")
    with pytest.raises(StorageError):
        await plain.open().addTimeout(WAIT, reactor)


REDISS_FIRST = """
import sys

import jobreactor
from jobreactor.model import Job
from jobreactor.storage import open_storage
from twisted.internet import defer, task

loaded = "OpenSSL" in sys.modules


async def main(reactor):
    storage = open_storage(sys.argv[1])
    await storage.open()
    await storage.save("node-1", Job(id="secure", name="noop", args={}))
    print(loaded, (await storage.load("node-1", "secure")).id)
    await storage.close()


task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
"""


def test_rediss_where_jobreactor_was_imported_without_tls(
    redis_servers: Any, tmp_path: Path
) -> None:
    """In a fresh process jobreactor imports Twisted without the TLS stack (see
    jobreactor/_lazy_tls.py); rediss:// loads it and works (this process has it already)."""
    cert, key, ca = make_certificates(tmp_path)
    server = redis_servers(tls=(cert, key, ca))
    url = f"rediss://localhost:{server.port}/0?ssl_ca_certs={ca}&timeout=2"
    done = subprocess.run(
        [sys.executable, "-c", REDISS_FIRST, url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "secure"]


def test_url_fields() -> None:
    storage = RedisStorage.from_url("redis://user:p%40ss@redis.example:6380/2?prefix=x&timeout=2.5")
    assert (storage.host, storage.port, storage.db) == ("redis.example", 6380, 2)
    assert (storage.username, storage.password) == ("user", "p@ss")
    assert (storage.prefix, storage.timeout, storage.tls) == ("x", 2.5, None)
    default = RedisStorage.from_url("redis://")
    assert (default.host, default.port, default.db, default.prefix) == ("localhost", 6379, 0, "jr")
    assert default.timeout == 5.0 and default.password is None
    assert RedisStorage.from_url("redis://h/").db == 0


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("redis://host:port/0", "does not parse"),
        ("redis://host:99999/0", "does not parse"),
        ("redis://host/zero", "database must be a number"),
        ("redis://host/0?bogus=1", "unknown option(s) bogus"),
        ("redis://host/0?ssl_ca_certs=/x", "TLS options need rediss://"),
        ("redis://host/0?timeout=0", "timeout must be a positive number"),
        ("redis://host/0?timeout=soon", "timeout must be a positive number"),
        ("redis://host/0?prefix=", "prefix must not be empty"),
        ("redis://host/0?prefix=a&prefix=b", "given twice"),
        ("rediss://host/0?ssl_ca_certs=/no/such/ca.pem", "cannot read ssl_ca_certs"),
        ("rediss://host/0?ssl_cert_reqs=maybe", "ssl_cert_reqs must be"),
        ("rediss://host/0?ssl_certfile=/x.pem", "go together"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, complaint: str) -> None:
    with pytest.raises(ConfigError) as info:
        open_storage(url)
    assert complaint in str(info.value)


def test_errors_never_show_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        open_storage("redis://:hunter2@host/0?bogus=1")
    assert "hunter2" not in str(info.value)
    assert ":***@host" in str(info.value)
