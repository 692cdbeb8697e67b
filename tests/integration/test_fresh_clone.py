"""The README's first command from a fresh clone: ``bash run-demo.sh`` installs jobreactor
alone (no test or dev tools) into the clone's ``.venv`` and runs the demo to a clean end."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_run_demo_from_a_fresh_clone_installs_only_the_package(tmp_path: Path) -> None:
    clone = tmp_path / "jobreactor"
    # The work tree as it is (committed or not): what a clone of this commit would hold.
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            target = clone / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
            target.chmod(source.stat().st_mode)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"

    demo = subprocess.run(
        ["bash", "run-demo.sh"], cwd=clone, env=env, capture_output=True, text=True, timeout=600
    )

    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "no_such_job: failed (NoSuchJob)" in demo.stdout
    assert "installing jobreactor into .venv" in demo.stderr
    installed = {path.name for path in (clone / ".venv" / "bin").iterdir()}
    assert {"twistd", "twist", "jr"} <= installed
    assert not installed & {"pytest", "ruff", "mypy", "sphinx-build", "flask"}, installed
    assert not (clone / "build").exists()
