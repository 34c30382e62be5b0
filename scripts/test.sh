#!/usr/bin/env bash
# The project's test command (README, CI): set up .venv, start a local PostgreSQL for the
# storage tests, lint, type-check, run the whole suite, then the README's Ray cluster commands
# on a one-machine cluster (scripts/cluster_smoke.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if url=$(bash scripts/postgres.sh); then
  export AMC_TEST_POSTGRES="${url##*$'\n'}"
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy amc experiments
# Two xdist workers (the machine has 2 cores); tests using the session's Ray share one worker
# (tests/conftest.py). Pass `-n 0` to run in one process.
.venv/bin/python -m pytest -q -n 2 --dist loadgroup "$@"
bash scripts/cluster_smoke.sh
