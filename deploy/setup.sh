#!/usr/bin/env bash
# Creates (or updates) the project's virtual environment at .venv with reviewbot installed.
#   bash deploy/setup.sh          service only
#   bash deploy/setup.sh dev      plus the trainer stack, test and lint tools
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${REVIEWBOT_VENV:-$root/.venv}
extras=${1:-}

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
if [ -n "$extras" ]; then
  # torch first, pinned, so pip takes the CPU build on disk instead of a multi-GB CUDA build.
  "$venv/bin/pip" install -q torch==2.13.0
  "$venv/bin/pip" install -q -e "$root[$extras]"
else
  "$venv/bin/pip" install -q -e "$root"
fi
echo "reviewbot installed in $venv: $("$venv/bin/reviewbot" --version)"
