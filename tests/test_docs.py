"""The documentation stays buildable and its examples stay true.

``docs/`` must build with ``sphinx-build -W`` (warnings are errors), every ``python`` block of
every page must at least compile, every ``json`` block must parse, and every block of
``docs/jobs.md`` that is a complete jobs file (its first line is ``# reactor_jobs/<file>.py``)
must load as a jobs directory, except the one marked "broken on purpose", which must fail the
way the page says.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jobreactor import JobDefinitionError, load_jobs_directory

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))

FENCE = re.compile(r"^```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^```\s*$", re.MULTILINE | re.DOTALL)
JOBS_FILE = re.compile(r"^# reactor_jobs/(?P<file>[\w/]+\.py)(?P<note>.*)$")


def blocks(page: Path, lang: str) -> list[str]:
    text = page.read_text(encoding="utf-8")
    return [match["body"] for match in FENCE.finditer(text) if match["lang"] == lang]


def jobs_files() -> list[tuple[str, str, str]]:
    """``(file name, note after it, source)`` of each complete jobs file in docs/jobs.md."""
    found = []
    for source in blocks(DOCS / "jobs.md", "python"):
        first_line = source.splitlines()[0] if source.strip() else ""
        match = JOBS_FILE.match(first_line)
        if match:
            found.append((match["file"], match["note"].strip(), source))
    return found


def test_the_docs_build_without_warnings(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            "-d",
            str(tmp_path / "doctrees"),
            str(DOCS),
            str(tmp_path / "html"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, f"sphinx-build -W failed:\n{result.stdout}\n{result.stderr}"
    for page in PAGES:
        assert (tmp_path / "html" / f"{page.stem}.html").exists(), page.name


def test_the_pages_are_the_expected_ones() -> None:
    names = {page.stem for page in PAGES}
    assert {
        "index",
        "quickstart",
        "jobs",
        "enqueueing",
        "configuration",
        "design",
        "protocol",
        "testing",
    } <= names


def test_jobs_md_has_complete_jobs_files() -> None:
    # Guards the pattern below: if it stopped matching, the tests would check nothing.
    names = [name for name, _, _ in jobs_files()]
    assert len(names) >= 5, names
    assert len(set(names)) == len(names), f"two examples share a file name: {names}"


@pytest.mark.parametrize(
    ("page", "index", "source"),
    [
        pytest.param(page.name, index, source, id=f"{page.stem}-{index}")
        for page in PAGES
        for index, source in enumerate(blocks(page, "python"))
    ],
)
def test_every_python_block_compiles(page: str, index: int, source: str) -> None:
    compile(source, f"docs/{page} (python block {index})", "exec")


@pytest.mark.parametrize(
    ("page", "index", "source"),
    [
        pytest.param(page.name, index, source, id=f"{page.stem}-{index}")
        for page in PAGES
        for index, source in enumerate(blocks(page, "json"))
    ],
)
def test_every_json_block_parses(page: str, index: int, source: str) -> None:
    json.loads(source)


@pytest.mark.parametrize(
    ("name", "note", "source"),
    [pytest.param(*example, id=example[0]) for example in jobs_files()],
)
def test_each_jobs_file_in_jobs_md_loads(name: str, note: str, source: str, tmp_path: Path) -> None:
    path = tmp_path / "reactor_jobs" / name
    path.parent.mkdir(parents=True)
    path.write_text(source, encoding="utf-8")
    compile(source, str(path), "exec")
    if "broken on purpose" in note:
        with pytest.raises(JobDefinitionError) as caught:
            load_jobs_directory(tmp_path / "reactor_jobs")
        # The page promises the file, the line and the error.
        assert f"{path}, line " in str(caught.value)
        assert "ZeroDivisionError" in str(caught.value)
        return
    registry = load_jobs_directory(tmp_path / "reactor_jobs")
    assert registry.names(), f"{name} defines no job"


MARKDOWN = [*PAGES, ROOT / "README.md", *sorted(ROOT.glob("examples/*/README.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\((?P<target>[^)\s]+)\)")
SPHINX_ONLY = re.compile(r"\{(doc|ref|toctree|eval-rst)\}|^```\{|^\(\w[\w-]*\)=$", re.MULTILINE)


def github_anchor(heading: str) -> str:
    """The anchor a code-hosting site (and MyST's heading anchors) gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {github_anchor(m[1]) for m in re.finditer(r"^#{1,6} (.+)$", text, re.MULTILINE)}


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda page: str(page.relative_to(ROOT)))
def test_pages_use_plain_markdown_that_reads_well_on_a_code_hosting_site(page: Path) -> None:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))  # roles shown in code are fine
    found = SPHINX_ONLY.findall(text)
    assert not found, f"{page.name} uses Sphinx-only syntax, shown literally elsewhere: {found}"


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(page: Path) -> None:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    checked = 0
    for match in LINK.finditer(text):
        target = match["target"]
        if re.match(r"^[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: link {target!r} leads nowhere"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{page.name}: no heading for {target!r}"
        checked += 1
    if page.name == "index.md":
        assert checked >= 10  # the contents list
