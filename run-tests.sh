#!/usr/bin/env bash
# Lint, type-check and the whole test suite (unit and integration). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/bootstrap.sh --redis --chromium
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# pytest exits 5 when it collects nothing; set -e makes that (like any failure) fail the run.
.venv/bin/python -m pytest "$@"
