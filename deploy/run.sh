#!/usr/bin/env bash
# Sets up reviewbot on its embedded defaults (SQLite database and queue in the current folder) and runs it.
# At this version the service has no long-running command yet: this migrates the database and shows the CLI.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/deploy/setup.sh"
"$root/.venv/bin/reviewbot" db upgrade
"$root/.venv/bin/reviewbot" --help
