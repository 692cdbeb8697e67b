"""``twistd jr-node`` / ``twistd jr-distributor`` / ``twist jr-node`` as a user runs them.

Options from the command line, the environment and a TOML config file (and their precedence,
seen from a distributor the nodes connect to), ``--log-format json``, and every kind of bad
input ending in one line and a non-zero exit.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import IO, Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from jobreactor import Distributor, JobFailed

from .conftest import TWISTD, bounded, node_env, port_of

pytestmark = pytest.mark.integration

TWIST = str(Path(sys.executable).with_name("twist"))

JOBS = """
import os

from jobreactor import job


@job("whoami")
def whoami(args):
    return {"pid": os.getpid()}


@job("always_fails")
def always_fails(args):
    with open(args["log"], "a") as log:
        log.write("attempt\\n")
    raise ValueError("always")
"""

NODE_OPTIONS = [
    "name", "jobs", "storage", "distributor", "slots", "credentials-file", "config", "log-format",
]  # fmt: skip


def clean_env(**variables: str) -> dict[str, str]:
    """The test's environment without any JR_* variable of the caller, plus ``variables``."""
    env = {key: value for key, value in node_env().items() if not key.startswith("JR_")}
    env.update(variables)
    return env


class Daemons:
    """twistd / twist children of one test, all killed at its end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.jobs_dir = tmp_path / "reactor_jobs"
        self.jobs_dir.mkdir()
        (self.jobs_dir / "jobs.py").write_text(textwrap.dedent(JOBS))
        self.processes: list[subprocess.Popen[bytes]] = []
        self.outputs: list[IO[bytes]] = []

    def start(
        self, command: list[str], output: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        out = (self.tmp_path / output).open("wb")
        self.outputs.append(out)
        process = subprocess.Popen(
            command,
            cwd=self.tmp_path,
            env=env if env is not None else clean_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        self.processes.append(process)
        return process

    def node(self, *args: str, output: str, env: dict[str, str] | None = None) -> Any:
        return self.start([TWISTD, "-n", "--pidfile=", "jr-node", *args], output, env)

    def read(self, output: str) -> str:
        return (self.tmp_path / output).read_text()

    def write(self, name: str, text: str) -> Path:
        path = self.tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        for out in self.outputs:
            out.close()


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    started = Daemons(tmp_path)
    yield started
    started.stop_all()


def endpoint(port: int) -> str:
    return f"tcp:host=127.0.0.1:port={port}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Poll ``condition`` (a subprocess's log or port) every 0.1 s, up to ``timeout``."""
    for _ in range(int(timeout * 10)):
        if condition():
            return
        await deferLater(reactor, 0.1, lambda: None)
    raise AssertionError(f"not within {timeout} s: {what}")


async def stop(process: subprocess.Popen[bytes], timeout: float = 20) -> int:
    """SIGTERM, then wait (without blocking the reactor) for the exit status."""
    process.send_signal(signal.SIGTERM)
    await wait_until(lambda: process.poll() is not None, "the process exits", timeout)
    code = process.returncode
    assert code is not None
    return code


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = text.splitlines()
    assert lines, "no log output"
    events = []
    for line in lines:
        assert not line.startswith("\x1e"), "plain JSON lines, no record separator"
        event = json.loads(line)
        assert isinstance(event, dict)
        events.append(event)
    return events


# -- help ----------------------------------------------------------------------------------


def test_node_help_documents_every_option() -> None:
    result = subprocess.run(
        [TWISTD, "-n", "jr-node", "--help"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    for option in NODE_OPTIONS:
        assert f"--{option}=" in result.stdout, option
    assert "--setting=" in result.stdout
    for variable in (
        "JR_NODE_NAME",
        "JR_JOBS",
        "JR_STORAGE",
        "JR_DISTRIBUTORS",
        "JR_SLOTS",
        "JR_CONFIG",
        "JR_LOG_FORMAT",
        "JR_SETTING_",
        "JR_CREDENTIALS_FILE",
    ):
        assert variable in result.stdout, variable
    text = " ".join(result.stdout.split())
    assert "else from its environment variable" in text  # the precedence
    assert "else from the [node] table of the --config file" in text


def test_distributor_help_documents_every_option() -> None:
    result = subprocess.run(
        [TWISTD, "-n", "jr-distributor", "--help"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    for option in ("listen", "auth", "web", "config", "log-format", "setting"):
        assert f"--{option}=" in result.stdout, option
    for variable in (
        "JR_LISTEN",
        "JR_AUTH",
        "JR_WEB",
        "JR_CONFIG",
        "JR_LOG_FORMAT",
        "JR_SETTING_",
    ):
        assert variable in result.stdout, variable


# -- precedence ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_command_line_beats_environment_beats_config_file(
    distributor: Distributor, daemons: Daemons
) -> None:
    real = endpoint(port_of(distributor))
    unreachable = endpoint(1)
    jobs = str(daemons.jobs_dir)
    # The file alone.
    only_file = daemons.write(
        "only_file.toml",
        f"""
        [node]
        name = "file_node"
        slots = 3
        jobs = "{jobs}"
        distributors = ["{real}"]
        """,
    )
    daemons.node("--config", str(only_file), output="file_node.log")
    # The environment over the file: name, slots, jobs and distributors (two, comma-separated).
    overridden = daemons.write(
        "overridden.toml",
        f"""
        [node]
        name = "name_from_file"
        slots = 3
        jobs = "no_such_directory"
        distributors = ["{unreachable}"]
        """,
    )
    env = clean_env(
        JR_CONFIG=str(overridden),
        JR_NODE_NAME="env_node",
        JR_SLOTS="4",
        JR_JOBS=jobs,
        JR_DISTRIBUTORS=f"{unreachable}, {real}",
    )
    daemons.node(output="env_node.log", env=env)
    # The command line over both.
    env = clean_env(JR_NODE_NAME="name_from_env", JR_SLOTS="4", JR_DISTRIBUTORS=unreachable)
    daemons.node(
        "--config", str(overridden), "--name", "cli_node", "--slots", "5",
        "--jobs", jobs, "--distributor", real,
        output="cli_node.log", env=env,
    )  # fmt: skip

    await bounded(distributor.when_nodes(names=["file_node", "env_node", "cli_node"]))
    slots = {info.name: info.slots for info in distributor.nodes()}
    assert slots == {"file_node": 3, "env_node": 4, "cli_node": 5}
    # They run jobs, with the jobs directory each was given.
    for name in slots:
        result = await bounded(distributor.enqueue("whoami", {}, node=name).deferred)
        assert result["pid"] > 0


@pytest_twisted.ensureDeferred
async def test_settings_come_from_the_command_line_environment_or_file(
    distributor: Distributor, daemons: Daemons
) -> None:
    config = daemons.write(
        "settings.toml",
        """
        [settings]
        max_attempt = 7
        retry_multiplier = 0
        heartbeat_timeout = 4.5
        """,
    )
    common = ["--jobs", str(daemons.jobs_dir), "--distributor", endpoint(port_of(distributor))]
    cases = {
        "file_settings": ([], {}, 7),
        "env_settings": ([], {"JR_SETTING_MAX_ATTEMPT": "5"}, 5),
        "cli_settings": (["--setting", "max_attempt=3"], {"JR_SETTING_MAX_ATTEMPT": "5"}, 3),
    }
    for name, (args, variables, _) in cases.items():
        env = clean_env(JR_CONFIG=str(config), **variables)
        daemons.node("--name", name, *common, *args, output=f"{name}.log", env=env)
    await bounded(distributor.when_nodes(names=list(cases)))
    for name, (_, _, attempts) in cases.items():
        log = daemons.tmp_path / f"{name}.attempts"
        handle = distributor.enqueue("always_fails", {"log": str(log)}, node=name)
        with pytest.raises(JobFailed):
            await bounded(handle.deferred)
        # retry_multiplier = 0 from the file in every case: the retries came at once.
        assert log.read_text().count("attempt") == attempts, name


@pytest_twisted.ensureDeferred
async def test_distributor_listen_from_command_line_environment_or_file(
    daemons: Daemons,
) -> None:
    file_port, env_port, cli_port = free_port(), free_port(), free_port()
    config = daemons.write(
        "distributor.toml",
        f"""
        [distributor]
        listen = "tcp:{file_port}:interface=127.0.0.1"
        """,
    )
    command = [TWISTD, "-n", "--pidfile=", "jr-distributor", "--config", str(config)]
    env = clean_env(JR_LISTEN=f"tcp:{env_port}:interface=127.0.0.1")
    cases = [
        ("file", command, clean_env(), file_port),
        ("env", command, env, env_port),
        ("cli", [*command, "--listen", f"tcp:{cli_port}:interface=127.0.0.1"], env, cli_port),
    ]
    for label, argv, variables, port in cases:
        process = daemons.start(argv, f"{label}.log", variables)
        await wait_until(partial(accepts, port), f"listening on {port} ({label})")
        others = {file_port, env_port, cli_port} - {port}
        assert not any(accepts(other) for other in others), label
        await stop(process)


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


# -- logging -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("twistd_args", "node_args", "variables"),
    [
        pytest.param([], ["--log-format", "json"], {}, id="--log-format"),
        pytest.param([], [], {"JR_LOG_FORMAT": "json"}, id="JR_LOG_FORMAT"),
        pytest.param(["--logger", "jobreactor.logging.json_observer"], [], {}, id="--logger"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_json_log_format_writes_one_object_per_line(
    twistd_args: list[str],
    node_args: list[str],
    variables: dict[str, str],
    distributor: Distributor,
    daemons: Daemons,
) -> None:
    process = daemons.start(
        [
            TWISTD, "-n", "--pidfile=", *twistd_args, "jr-node", "--name", "json_node",
            "--jobs", str(daemons.jobs_dir), "--distributor", endpoint(port_of(distributor)),
            *node_args,
        ],
        "json_node.out",
        clean_env(**variables),
    )  # fmt: skip
    await bounded(distributor.when_nodes(names=["json_node"]))
    await bounded(distributor.enqueue("whoami", {}).deferred)
    assert await stop(process) == 0, daemons.read("json_node.out")
    events = json_lines(daemons.read("json_node.out"))
    assert all("log_time" in event and "log_namespace" in event for event in events)
    assert any(event["log_namespace"].startswith("jobreactor") for event in events)


@pytest_twisted.ensureDeferred
async def test_json_log_format_goes_to_twistd_logfile(
    distributor: Distributor, daemons: Daemons
) -> None:
    logfile = daemons.tmp_path / "node.json"
    process = daemons.start(
        [
            TWISTD, "-n", "--pidfile=", f"--logfile={logfile}", "jr-node",
            "--name", "file_logger", "--jobs", str(daemons.jobs_dir),
            "--distributor", endpoint(port_of(distributor)), "--log-format", "json",
        ],
        "stdout.txt",
    )  # fmt: skip
    await bounded(distributor.when_nodes(names=["file_logger"]))
    assert await stop(process) == 0
    assert daemons.read("stdout.txt") == ""
    events = json_lines(logfile.read_text())
    assert any(event["log_namespace"].startswith("jobreactor") for event in events)


@pytest_twisted.ensureDeferred
async def test_twist_runs_a_node_in_the_foreground(
    distributor: Distributor, daemons: Daemons
) -> None:
    process = daemons.start(
        [
            TWIST, "jr-node", "--name", "twist_node", "--jobs", str(daemons.jobs_dir),
            "--distributor", endpoint(port_of(distributor)), "--slots", "2",
            "--log-format", "json",
        ],
        "twist_node.out",
    )  # fmt: skip
    await bounded(distributor.when_nodes(names=["twist_node"]))
    assert [info.slots for info in distributor.nodes()] == [2]
    result = await bounded(distributor.enqueue("whoami", {}).deferred)
    assert result["pid"] == process.pid
    assert await stop(process) == 0, daemons.read("twist_node.out")
    assert json_lines(daemons.read("twist_node.out"))


@pytest_twisted.ensureDeferred
async def test_without_n_twistd_daemonizes_with_a_pid_file(
    distributor: Distributor, daemons: Daemons
) -> None:
    pidfile = daemons.tmp_path / "node.pid"
    logfile = daemons.tmp_path / "node.json"
    # twistd's parent process returns once the daemon has started (or failed to).
    started = subprocess.run(
        [
            TWISTD, f"--pidfile={pidfile}", f"--logfile={logfile}", "jr-node",
            "--name", "daemon_node", "--jobs", str(daemons.jobs_dir),
            "--distributor", endpoint(port_of(distributor)), "--log-format", "json",
        ],
        cwd=daemons.tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert started.returncode == 0, started.stdout + started.stderr
    pid = int(pidfile.read_text())
    try:
        await bounded(distributor.when_nodes(names=["daemon_node"]))
        result = await bounded(distributor.enqueue("whoami", {}).deferred)
        assert result["pid"] == pid
        os.kill(pid, signal.SIGTERM)
        await wait_until(lambda: not pidfile.exists(), "the daemon removes its pid file")
    finally:
        if pidfile.exists():
            os.kill(pid, signal.SIGKILL)
    assert any(
        event["log_namespace"].startswith("jobreactor") for event in json_lines(logfile.read_text())
    )


# -- bad input -----------------------------------------------------------------------------

GOOD_NODE = ["--name", "w", "--jobs", "reactor_jobs"]

BAD_INPUT = [
    # (id, plugin args, environment, files to write, the message)
    ("unknown-option", ["jr-node", *GOOD_NODE, "--bogus"], {}, {}, "option --bogus not recognized"),
    ("no-name", ["jr-node", "--jobs", "reactor_jobs"], {}, {}, "--name is required"),
    ("slots-not-a-number", ["jr-node", *GOOD_NODE, "--slots", "x"], {}, {},
     "--slots: must be an integer, not 'x'"),
    ("slots-zero", ["jr-node", *GOOD_NODE, "--slots", "0"], {}, {},
     "--slots: must be at least 1, not 0"),
    ("slots-env", ["jr-node", *GOOD_NODE], {"JR_SLOTS": "many"}, {},
     "JR_SLOTS: must be an integer, not 'many'"),
    ("storage-url", ["jr-node", *GOOD_NODE, "--storage", "mysql://db/jobs"], {}, {},
     "--storage: storage 'mysql://db/jobs' is not understood"),
    ("storage-env", ["jr-node", *GOOD_NODE], {"JR_STORAGE": "sqlite:"}, {},
     "JR_STORAGE: storage 'sqlite:' names no file"),
    ("jobs-missing", ["jr-node", "--name", "w", "--jobs", "nowhere"], {}, {},
     "--jobs: jobs directory 'nowhere' does not exist"),
    ("jobs-default-missing", ["jr-node", "--name", "w"], {}, {"reactor_jobs": None},
     "--jobs (default): jobs directory 'reactor_jobs' does not exist"),
    ("distributor-not-endpoint", ["jr-node", *GOOD_NODE, "--distributor", "localhost"], {}, {},
     "--distributor: 'localhost' is not a client endpoint string"),
    ("distributor-bad-type", ["jr-node", *GOOD_NODE, "-d", "tpc:host=a:port=1"], {}, {},
     "Unknown endpoint type: 'tpc'"),
    ("distributor-no-port", ["jr-node", *GOOD_NODE], {"JR_DISTRIBUTORS": "tcp:host=a"}, {},
     "JR_DISTRIBUTORS: 'tcp:host=a' is not a client endpoint string"),
    ("log-format", ["jr-node", *GOOD_NODE, "--log-format", "xml"], {}, {},
     "--log-format: the log format is text or json, not 'xml'"),
    ("config-missing", ["jr-node", *GOOD_NODE, "--config", "none.toml"], {}, {},
     "config file 'none.toml' cannot be read: No such file or directory"),
    ("config-env-missing", ["jr-node", *GOOD_NODE], {"JR_CONFIG": "none.toml"}, {},
     "JR_CONFIG: config file 'none.toml' cannot be read"),
    ("config-not-toml", ["jr-node", *GOOD_NODE, "--config", "c.toml"], {},
     {"c.toml": "[node\nname = 'x'\n"}, "config file 'c.toml' is not valid TOML: "),
    ("config-unknown-key", ["jr-node", *GOOD_NODE, "--config", "c.toml"], {},
     {"c.toml": "[node]\nnmae = 'x'\n"}, "unknown key 'nmae' in [node]"),
    ("config-unknown-table", ["jr-node", *GOOD_NODE, "--config", "c.toml"], {},
     {"c.toml": "[nodes]\nname = 'x'\n"}, "unknown table or key 'nodes'"),
    ("config-wrong-type", ["jr-node", "--jobs", "reactor_jobs", "--config", "c.toml"], {},
     {"c.toml": "[node]\nname = 'x'\nslots = '3'\n"},
     "slots in [node] of c.toml: must be an integer"),
    ("setting-unknown-file", ["jr-node", *GOOD_NODE, "--config", "c.toml"], {},
     {"c.toml": "[settings]\nmax_attempts = 3\n"}, "unknown setting 'max_attempts'"),
    ("setting-unknown-env", ["jr-node", *GOOD_NODE], {"JR_SETTING_MAX_ATTEMPTS": "3"}, {},
     "JR_SETTING_MAX_ATTEMPTS: unknown setting 'max_attempts'"),
    ("setting-unknown-cli", ["jr-node", *GOOD_NODE, "--setting", "nope=1"], {}, {},
     "--setting nope: unknown setting 'nope'"),
    ("setting-bad-value-file", ["jr-node", *GOOD_NODE, "--config", "c.toml"], {},
     {"c.toml": "[settings]\nmax_attempt = 0\n"}, "max_attempt must be at least 1"),
    ("setting-bad-value-env", ["jr-node", *GOOD_NODE], {"JR_SETTING_REMOVE_DONE_JOBS": "maybe"},
     {}, "JR_SETTING_REMOVE_DONE_JOBS: remove_done_jobs must be true or false, not 'maybe'"),
    ("setting-no-equals", ["jr-node", *GOOD_NODE, "--setting", "max_attempt"], {}, {},
     "--setting 'max_attempt': write NAME=VALUE"),
    ("listen", ["jr-distributor", "--listen", "tcp:fivethousand"], {}, {},
     "--listen: 'tcp:fivethousand' is not a server endpoint string"),
    ("listen-env", ["jr-distributor"], {"JR_LISTEN": "http:80"}, {},
     "JR_LISTEN: 'http:80' is not a server endpoint string"),
    ("web", ["jr-distributor", "--web", "tcp:eighty"], {}, {},
     "--web: 'tcp:eighty' is not a server endpoint string"),
    ("distributor-setting", ["jr-distributor", "--setting", "hello_timeout=0"], {}, {},
     "hello_timeout must be at least 0.001"),
    ("distributor-config", ["jr-distributor", "--config", "c.toml"], {},
     {"c.toml": "[distributor]\nlisten = 5000\n"},
     "listen in [distributor] of c.toml: must be a non-empty string, not 5000"),
    ("jr-tls-missing-cert", ["jr-distributor", "--listen", "jr-tls:5000:certificate=no.pem"],
     {}, {}, "jr-tls: cannot read certificate no.pem: No such file or directory"),
    ("auth-missing-file", ["jr-distributor", "--auth", "file:users"], {}, {},
     "--auth: no credentials file 'users'"),
    ("auth-bad-line", ["jr-distributor"], {"JR_AUTH": "file:users"}, {"users": "alice\n"},
     "JR_AUTH: users line 1: expected user:password[:roles[:names]]"),
    ("credentials-bad-file", ["jr-node", *GOOD_NODE], {"JR_CREDENTIALS_FILE": "creds"},
     {"creds": "no-password\n"},
     "JR_CREDENTIALS_FILE: credentials file creds: expected one line user:password"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "variables", "files", "message"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_INPUT],
)
def test_bad_input_is_one_line_and_a_non_zero_exit(
    args: list[str],
    variables: dict[str, str],
    files: dict[str, str | None],
    message: str,
    tmp_path: Path,
) -> None:
    (tmp_path / "reactor_jobs").mkdir()
    for name, text in files.items():
        if text is None:
            (tmp_path / name).rmdir()
        else:
            (tmp_path / name).write_text(text)
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", *args],
        env=clean_env(**variables),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    matching = [line for line in output.splitlines() if message in line]
    assert len(matching) == 1, output
    assert len([line for line in output.splitlines() if line.strip()]) <= 3, output


def test_bad_input_under_twist_is_one_line_too(tmp_path: Path) -> None:
    result = subprocess.run(
        [TWIST, "jr-node", "--name", "w", "--jobs", "nowhere"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 64, output  # EX_USAGE
    assert "Traceback" not in output
    assert "--jobs: jobs directory 'nowhere' does not exist" in output
    assert len([line for line in output.splitlines() if line.strip()]) <= 3, output


def test_an_empty_environment_variable_counts_as_unset(tmp_path: Path) -> None:
    (tmp_path / "reactor_jobs").mkdir()
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "jr-node"],
        env=clean_env(JR_NODE_NAME="", JR_SLOTS=""),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "--name is required" in result.stdout
