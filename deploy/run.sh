#!/usr/bin/env bash
# Sets up reviewbot on its embedded defaults and runs it: SQLite database and queue in the current
# folder, the job consumer inside the API process, listening on 127.0.0.1:8080.
# Reviews need the student model at REVIEWBOT_STUDENT_BASE_URL (default http://127.0.0.1:8000/v1):
# start it with deploy/vllm-serve.sh (see README). Register projects with `reviewbot project add`.
# Settings come from the environment, or a file given as REVIEWBOT_ENV_FILE (a .env here is not read).
# Without REVIEWBOT_SECRET_KEY, `db upgrade` makes the key that encrypts webhook secrets once, in
# reviewbot.db.key (mode 0600) beside the database: back it up with the database.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/deploy/setup.sh"
"$root/.venv/bin/reviewbot" db upgrade
exec "$root/.venv/bin/reviewbot" serve "$@"
