#!/usr/bin/env bash
# Sets up both environments (the project's .venv and vLLM's .venv-vllm), lints, type-checks and runs
# the whole test suite: SQLite and PostgreSQL, and the real vLLM server with a tiny student model.
# Needs PostgreSQL on 127.0.0.1:5432 (trust auth, database "test") and Redis on 127.0.0.1:6379.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
started=$(date +%s)
bash deploy/setup.sh dev
echo "project environment ready in $(( $(date +%s) - started )) s"
vllm_started=$(date +%s)
bash deploy/setup-vllm.sh
echo "vLLM environment ready in $(( $(date +%s) - vllm_started )) s"
# The console's browser tests (tests/browser) drive Debian's Chromium; in CI they fail without it.
if ! command -v chromium >/dev/null 2>&1; then
  echo "Chromium is missing: installing the Debian package chromium for the console's browser tests"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if ! { $sudo apt-get update -q && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }; then
    echo "could not install Chromium: run 'sudo apt-get update && sudo apt-get install -y chromium'" \
      "(Debian), then run this again; without it the browser tests are skipped, and fail in CI" >&2
    [ "${CI:-}" != "true" ] || exit 1
  fi
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/lint-imports --no-cache  # the import rules of docs/architecture.md
.venv/bin/python -m pytest "$@"
echo "setup, lint and tests took $(( $(date +%s) - started )) s"
