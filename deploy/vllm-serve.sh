#!/usr/bin/env bash
# Serves the student with vLLM's OpenAI-compatible server, LoRA enabled and runtime adapter loading on.
# The same script runs the tiny test model on CPU and Llama 3 8B Instruct on a GPU host.
#
#   deploy/vllm-serve.sh MODEL_PATH_OR_ID [extra vLLM arguments...]
#
# Environment (all optional):
#   VLLM_PYTHON        python that has vLLM  (default: .venv-vllm/bin/python, else python3)
#   SERVED_NAME        name clients use for the base model       (default: MODEL)
#   HOST, PORT         listen address                             (default: 127.0.0.1:8000)
#   MAX_LORA_RANK      largest adapter rank accepted              (default: 64)
#   MAX_LORAS          adapters held in one batch at once         (default: 4; vLLM's own default, 1,
#                      makes the severity, explanation and candidate adapters evict each other)
#   MAX_MODEL_LEN      context length                             (default: 8192)
#   LORA_MODULES       space-separated NAME=PATH adapters to load at start
#   LORA_RESOLVER_DIR  the shared adapters folder (REVIEWBOT_FLYWHEEL_DIR/adapters, at the same path
#                      as the trainer's): a request naming an adapter this server lacks loads
#                      FOLDER/NAME (vLLM's filesystem resolver), so every replica serves every adapter
#   VLLM_API_KEY       require this bearer token from clients
# On a machine without an NVIDIA GPU the CPU settings below apply (small KV cache, CPU-safe memory use).
set -euo pipefail
model=${1:?usage: deploy/vllm-serve.sh MODEL_PATH_OR_ID [extra vLLM arguments...]}
shift
root=$(cd "$(dirname "$0")/.." && pwd)
python=${VLLM_PYTHON:-}
if [ -z "$python" ]; then
  if [ -x "$root/.venv-vllm/bin/python" ]; then python=$root/.venv-vllm/bin/python; else python=python3; fi
fi

args=(--model "$model" --served-model-name "${SERVED_NAME:-$model}"
      --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}"
      --max-model-len "${MAX_MODEL_LEN:-8192}"
      --enable-lora --max-lora-rank "${MAX_LORA_RANK:-64}" --max-loras "${MAX_LORAS:-4}"
      # Compact JSON in structured answers: fewer tokens, and no whitespace loops from a weak model.
      --structured-outputs-config '{"backend": "xgrammar", "disable_any_whitespace": true}')
if [ -n "${LORA_MODULES:-}" ]; then
  # shellcheck disable=SC2206  # word splitting into NAME=PATH items is intended
  args+=(--lora-modules ${LORA_MODULES})
fi
if [ -n "${VLLM_API_KEY:-}" ]; then args+=(--api-key "$VLLM_API_KEY"); fi

# Lets the registry add adapters to the running server (POST /v1/load_lora_adapter), and the resolver
# load one on a request that names it.
export VLLM_ALLOW_RUNTIME_LORA_UPDATING=True
if [ -n "${LORA_RESOLVER_DIR:-}" ]; then
  # Behind a load balancer the registry's POST reaches one replica; the resolver lets any replica,
  # new or restarted, load the adapter from the shared folder the first time a request names it.
  mkdir -p "$LORA_RESOLVER_DIR"  # vLLM refuses to start when the folder does not exist
  export VLLM_PLUGINS=${VLLM_PLUGINS:+$VLLM_PLUGINS,}lora_filesystem_resolver
  export VLLM_LORA_RESOLVER_CACHE_DIR=$LORA_RESOLVER_DIR
fi
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}  # GiB of KV cache
  args+=(--gpu-memory-utilization 0.3)
fi
exec "$python" -m vllm.entrypoints.openai.api_server "${args[@]}" "$@"
