#!/usr/bin/env bash
# The quick start: a distributor and two node processes on loopback, memory storage.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/bootstrap.sh --package  # the demo needs only jobreactor itself
exec .venv/bin/python examples/quickstart/demo.py
