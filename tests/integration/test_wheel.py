"""The built wheel, installed with plain ``pip`` in a fresh venv, gives twistd both plugins.

An editable install puts the repository on ``sys.path``, so it proves nothing about what the
wheel ships: ``twisted/plugins/`` must be in it, without an ``__init__.py`` in ``twisted/`` or
``twisted/plugins/`` (which would hide Twisted's own modules and plugins).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Every wait below is bounded; installing Twisted from the index is the slow one.
INSTALL_TIMEOUT = 600

NODE_OPTIONS = ["name", "jobs", "storage", "distributor", "slots", "config", "log-format"]


def clean_env() -> dict[str, str]:
    """The environment without anything that would put the repository on sys.path."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") and not key.startswith("JR_")
    }
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def run(command: list[str], cwd: Path, timeout: float = 120) -> str:
    result = subprocess.run(
        command, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{command}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.integration
def test_the_wheel_ships_the_twistd_plugins(tmp_path: Path) -> None:
    # Build from a copy, so setuptools' build/ and *.egg-info stay out of the work tree.
    source = tmp_path / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "build", "dist", "*.egg-info", "_build", "__pycache__",
            ".mypy_cache", ".ruff_cache", ".pytest_cache", "*.log", "dropin.cache",
        ),
    )  # fmt: skip
    wheels = tmp_path / "wheels"
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-w", str(wheels), str(source)],
        cwd=tmp_path,
        timeout=300,
    )  # fmt: skip
    [wheel] = wheels.glob("jobreactor-*.whl")
    # The build backend (scripts/build_backend.py) builds in a temporary directory: nothing
    # stale can leak from a build/lib into the next wheel, and the source tree stays clean.
    assert not (source / "build").exists()
    assert not list(source.glob("*.egg-info"))

    names = set(zipfile.ZipFile(wheel).namelist())
    assert "twisted/plugins/jobreactor_plugins.py" in names
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert "jobreactor/tap_node.py" in names and "jobreactor/py.typed" in names

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    python = str(venv / "bin" / "python")
    run([python, "-m", "pip", "install", "-q", str(wheel)], cwd=tmp_path, timeout=INSTALL_TIMEOUT)

    where = run([python, "-c", "import jobreactor; print(jobreactor.__file__)"], cwd=tmp_path)
    assert where.strip().startswith(str(venv)), "the wheel's jobreactor, not the work tree's"

    listing = run([str(venv / "bin" / "twistd"), "--help"], cwd=tmp_path)
    assert "jr-node" in listing and "jr-distributor" in listing
    listing = run([str(venv / "bin" / "twist"), "--help"], cwd=tmp_path)
    assert "jr-node" in listing and "jr-distributor" in listing

    node_help = run([str(venv / "bin" / "twistd"), "-n", "jr-node", "--help"], cwd=tmp_path)
    for option in NODE_OPTIONS:
        assert f"--{option}=" in node_help, option
    distributor_help = run(
        [str(venv / "bin" / "twistd"), "-n", "jr-distributor", "--help"], cwd=tmp_path
    )
    for option in ("listen", "config", "log-format"):
        assert f"--{option}=" in distributor_help, option
