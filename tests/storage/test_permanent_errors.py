"""Issue 12, case 10: storage errors that waiting does not fix are told apart from outages.

A corrupt SQLite file or a wrong Redis password makes a node say what is wrong and stop
(``twistd jr-node`` exits 1) instead of retrying "storage not available" forever; one
unreadable row is set aside and the node goes on with the others.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher

from jobreactor import JobRegistry, Node
from jobreactor.monitor import Monitor
from jobreactor.storage import PermanentStorageError, RedisStorage, SQLiteStorage, StorageError

from .conftest import WAIT
from .test_behaviour import full_job, wait

TWISTD = str(Path(sys.executable).with_name("twistd"))


@pytest_twisted.ensureDeferred
async def test_a_corrupt_sqlite_file_is_a_permanent_error(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    path.write_bytes(b"this is no database, just bytes " * 200)
    storage = SQLiteStorage(str(path))
    with pytest.raises(PermanentStorageError, match=r"not a database.*restore or move it"):
        await wait(storage.open())
    await storage.close()


@pytest_twisted.ensureDeferred
async def test_an_unreadable_row_is_set_aside_and_the_others_are_read(tmp_path: Path) -> None:
    storage = SQLiteStorage(str(tmp_path / "jobs.db"))
    await wait(storage.open())
    await wait(storage.save("node-1", full_job(id="good")))
    with sqlite3.connect(tmp_path / "jobs.db") as connection:
        connection.execute(
            "INSERT INTO jobs (node, id, status, name, run_at, data)"
            " VALUES ('node-1', 'bad', 'queued', 'x', NULL, '{not json')"
        )
    events: list[dict[str, Any]] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    try:
        jobs = await wait(storage.jobs_for("node-1"))
        assert [job.id for job in jobs] == ["good"]
        assert any("unreadable" in formatEvent(e) and "set aside" in formatEvent(e) for e in events)
        # What jr destroy does: the unreadable row can be removed.
        assert await wait(Monitor(storage).destroy("node-1", "bad")) is True
    finally:
        globalLogPublisher.removeObserver(observer)
        await storage.close().addTimeout(WAIT, reactor)
    with sqlite3.connect(tmp_path / "jobs.db") as connection:
        assert connection.execute("SELECT id FROM jobs").fetchall() == [("good",)]


@pytest_twisted.ensureDeferred
async def test_a_wrong_redis_password_is_a_permanent_error(redis_servers: Any) -> None:
    server = redis_servers(extra=("--requirepass", "right"))
    storage = RedisStorage(host="127.0.0.1", port=server.port, password="hunter2-xyz", timeout=2)
    try:
        with pytest.raises(StorageError) as raised:
            await wait(storage.open())
        assert isinstance(raised.value, PermanentStorageError), raised.value
        assert "password" in str(raised.value) and "hunter2" not in str(raised.value)
    finally:
        await storage.close().addTimeout(WAIT, reactor)


@pytest_twisted.ensureDeferred
async def test_a_node_on_a_corrupt_file_stops_at_once_instead_of_retrying(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.db"
    path.write_bytes(b"garbage " * 1000)
    node = Node("n1", [], storage=f"sqlite:{path}", registry=JobRegistry())
    node.startService()
    try:
        with pytest.raises(PermanentStorageError, match="not a database"):
            await node.when_started().addTimeout(WAIT, reactor)
    finally:
        await node.stopService()


def test_twistd_jr_node_on_a_corrupt_file_exits_1_and_says_why(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    path.write_bytes(b"garbage " * 1000)
    (tmp_path / "reactor_jobs").mkdir()
    done = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "jr-node", "--name", "n1",
         "--jobs", str(tmp_path / "reactor_jobs"), "--storage", f"sqlite:{path}",
         "--distributor", "tcp:host=127.0.0.1:port=1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done
    output = done.stdout + done.stderr  # twistd -n logs to stdout, stderr included
    assert "jr-node: cannot start:" in output and "not a database" in output
    assert "storage unusable, not retried" in output
    assert "Traceback" not in output and "trying again" not in output


@pytest_twisted.ensureDeferred
async def test_jr_list_names_the_rows_set_aside(tmp_path: Path) -> None:
    """``jr list`` shows the readable jobs and says which rows were set aside, and why."""
    from twisted.internet.threads import deferToThread

    from .test_monitor import run_jr

    storage = SQLiteStorage(str(tmp_path / "jobs.db"))
    await wait(storage.open())
    await wait(storage.save("node-1", full_job(id="good")))
    await storage.close().addTimeout(WAIT, reactor)
    with sqlite3.connect(tmp_path / "jobs.db") as connection:
        connection.execute(
            "INSERT INTO jobs (node, id, status, name, run_at, data)"
            " VALUES ('node-1', 'bad', 'queued', 'x', NULL, '{not json')"
        )
    url = f"sqlite:{tmp_path / 'jobs.db'}"
    for arguments in (("list", "node-1"), ("list",)):
        done = await deferToThread(run_jr, "--storage", url, *arguments)
        assert done.returncode == 0, done.stderr
        assert "good" in done.stdout and "bad" not in done.stdout
        assert done.stderr.startswith("unreadable job bad of node node-1 (set aside): ")
