#!/usr/bin/env bash
# Sets up reviewbot on its embedded defaults and runs it: SQLite database and queue in the data folder
# (REVIEWBOT_HOME, default ${XDG_DATA_HOME:-~/.local/share}/reviewbot), the job consumer inside the API
# process, listening on 127.0.0.1:8080. Arguments go to `reviewbot serve` (e.g. --host 0.0.0.0).
#
# The student model:
# - REVIEWBOT_STUDENT_BASE_URL set (in the environment or the data folder's reviewbot.env): reviews
#   go to that server, e.g. Llama 3 8B on a GPU host started with deploy/vllm-serve.sh (see README).
# - Not set: this script also starts the demo student, SmolLM2-135M-Instruct served by vLLM on the
#   CPU (deploy/setup-vllm.sh, deploy/demo-student.sh; first run: a few minutes to install), a 135M model
#   whose reviews are weak, there to show the whole loop. Port: REVIEWBOT_DEMO_STUDENT_PORT (default
#   8000); log: $REVIEWBOT_HOME/demo-student.log. Its URL, served name and weights go to
#   $REVIEWBOT_HOME/run.env, so `reviewbot` commands in other shells use it. Ctrl-C stops both.
# Register projects with `reviewbot project add`. Settings come from the environment, the data
# folder's reviewbot.env, or a file given as REVIEWBOT_ENV_FILE (a .env here is not read).
# Without REVIEWBOT_SECRET_KEY, `db upgrade` makes the key that encrypts webhook secrets once, in
# reviewbot.db.key (mode 0600) beside the database: back it up with the database.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
home=${REVIEWBOT_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/reviewbot}
run_env=$home/run.env
student_keys='^REVIEWBOT_STUDENT_(BASE_URL|MODEL|WEIGHTS)='
served_name=HuggingFaceTB/SmolLM2-135M-Instruct
port=${REVIEWBOT_DEMO_STUDENT_PORT:-8000}
log=$home/demo-student.log

# True when the user chose a student server: the environment, or a settings file that wins over run.env.
student_chosen() {
  [ -n "${REVIEWBOT_STUDENT_BASE_URL:-}" ] && return 0
  local file
  for file in "$home/reviewbot.env" "${REVIEWBOT_ENV_FILE:-}"; do
    [ -n "$file" ] && [ -f "$file" ] && grep -Eq '^[[:space:]]*(export[[:space:]]+)?REVIEWBOT_STUDENT_BASE_URL=' "$file" && return 0
  done
  return 1
}

# Rewrites run.env without the student lines, then with STUDENT_LINES (if any), in one rename.
write_run_env() {
  mkdir -p "$home"
  local tmp=$run_env.tmp.$$
  {
    if [ -f "$run_env" ]; then grep -Ev "$student_keys" "$run_env" || true; fi
    printf '%s' "$*"
  } >"$tmp"
  mv "$tmp" "$run_env"
}

# A value for run.env, single-quoted (python-dotenv does not expand $ there; \ and ' are escaped).
quoted() { local v=${1//\\/\\\\}; printf "'%s'" "${v//\'/\\\'}"; }

http_ok() { "$root/.venv/bin/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" 2>/dev/null; }

serve_pid='' vllm_pid=''
# shellcheck disable=SC2317  # called by the EXIT trap
stop_all() {
  trap - INT TERM EXIT
  if [ -n "$serve_pid" ] && kill -0 "$serve_pid" 2>/dev/null; then
    kill -TERM "$serve_pid" 2>/dev/null || true
    wait "$serve_pid" 2>/dev/null || true
  fi
  if [ -n "$vllm_pid" ] && kill -0 -- "-$vllm_pid" 2>/dev/null; then
    echo "Stopping the demo student..." >&2
    kill -TERM -- "-$vllm_pid" 2>/dev/null || true  # its process group: the API server and engine workers
    for _ in $(seq 30); do kill -0 -- "-$vllm_pid" 2>/dev/null || break; sleep 1; done
    if kill -0 -- "-$vllm_pid" 2>/dev/null; then kill -KILL -- "-$vllm_pid" 2>/dev/null || true; fi
  fi
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bash "$root/deploy/setup.sh"

if student_chosen; then
  # run.env must not point commands at a demo student this run did not start.
  if [ -f "$run_env" ]; then write_run_env; fi
else
  bash "$root/deploy/setup-vllm.sh"
  model_dir=$(bash "$root/deploy/demo-student.sh")
  if http_ok "http://127.0.0.1:$port/v1/models" || ! "$root/.venv/bin/python" -c \
      'import socket, sys; socket.create_server(("127.0.0.1", int(sys.argv[1]))).close()' "$port" 2>/dev/null; then
    echo "run.sh: port $port is in use; set REVIEWBOT_DEMO_STUDENT_PORT to a free port" >&2
    exit 1
  fi
  mkdir -p "$home"
  echo "Starting the demo student $served_name on port $port (vLLM on the CPU; log: $log)" >&2
  # setsid: a process group of its own, so the engine workers stop with it and Ctrl-C reaches only us.
  SERVED_NAME=$served_name PORT=$port setsid bash "$root/deploy/vllm-serve.sh" "$model_dir" >"$log" 2>&1 &
  vllm_pid=$!
  url=http://127.0.0.1:$port/v1
  write_run_env "REVIEWBOT_STUDENT_BASE_URL=$(quoted "$url")
REVIEWBOT_STUDENT_MODEL=$(quoted "$served_name")
REVIEWBOT_STUDENT_WEIGHTS=$(quoted "$model_dir")
"
  started=$SECONDS reported=$SECONDS
  until http_ok "$url/models"; do
    if ! kill -0 "$vllm_pid" 2>/dev/null; then
      echo "run.sh: the demo student's vLLM exited; the end of $log:" >&2
      tail -n 30 "$log" >&2
      exit 1
    fi
    if ((SECONDS - started > 900)); then
      echo "run.sh: the demo student did not answer $url/models within 900 s; the end of $log:" >&2
      tail -n 30 "$log" >&2
      exit 1
    fi
    if ((SECONDS - reported >= 10)); then
      reported=$SECONDS
      echo "  waiting for the demo student to load... $((SECONDS - started)) s" >&2
    fi
    sleep 1
  done
  echo "Demo student ready at $url in $((SECONDS - started)) s" >&2
fi

"$root/.venv/bin/reviewbot" db upgrade
"$root/.venv/bin/reviewbot" serve "$@" &
serve_pid=$!
# Whichever stops first (or a trapped signal, which ends the wait early), the EXIT trap stops the other.
status=0
if [ -n "$vllm_pid" ]; then wait -n "$serve_pid" "$vllm_pid" || status=$?; else wait "$serve_pid" || status=$?; fi
if [ -n "$vllm_pid" ] && ! kill -0 "$vllm_pid" 2>/dev/null; then
  echo "run.sh: the demo student's vLLM exited; the end of $log:" >&2
  tail -n 30 "$log" >&2
  exit 1
fi
exit "$status"
