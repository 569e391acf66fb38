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
# deploy/check-deploy.sh checks the Compose files with Debian's docker-compose and the Kubernetes
# manifests with its kubectl; in CI it fails without them.
deploy_tools=()
command -v docker-compose >/dev/null 2>&1 || deploy_tools+=(docker-compose)
command -v kubectl >/dev/null 2>&1 || deploy_tools+=(kubernetes-client)
if [ ${#deploy_tools[@]} -gt 0 ]; then
  echo "${deploy_tools[*]} missing: installing the Debian packages for deploy/check-deploy.sh"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if ! { $sudo apt-get update -q \
         && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${deploy_tools[@]}"; }; then
    echo "could not install ${deploy_tools[*]}: run 'sudo apt-get install -y ${deploy_tools[*]}'" \
      "(Debian), then run this again; without them the deployment checks are skipped, and fail in CI" >&2
    [ "${CI:-}" != "true" ] || exit 1
  fi
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/lint-imports --no-cache  # the import rules of docs/architecture.md
if command -v docker-compose >/dev/null 2>&1 && command -v kubectl >/dev/null 2>&1; then
  bash deploy/check-deploy.sh  # Compose files and Kubernetes manifests, with the real tools
else
  echo "skipping deploy/check-deploy.sh: docker-compose or kubectl is missing (CI fails instead)" >&2
fi
.venv/bin/python -m pytest "$@"
echo "setup, lint and tests took $(( $(date +%s) - started )) s"
