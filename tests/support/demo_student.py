"""The demo student for the end-to-end tests: the real SmolLM2-135M-Instruct, prepared by the product's
own ``deploy/demo-student.sh`` into a cache folder that outlives the test run (converted once per
machine), then served by the real vLLM."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.vllm_server import ROOT

SERVED_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"  # as deploy/run.sh serves it
PREPARE_TIMEOUT_S = 900  # installing gguf and the GGUF package, then the conversion (~25 s)


@dataclass(frozen=True)
class DemoStudent:
    path: Path  # the converted checkpoint: bf16 safetensors, tokenizer, ChatML template
    prepared_in_s: float


def cache_dir() -> Path:
    """``$REVIEWBOT_TEST_CACHE``, else ``.cache/demo-student`` in the repository (git-ignored)."""
    configured = os.environ.get("REVIEWBOT_TEST_CACHE")
    return Path(configured) if configured else ROOT / ".cache" / "demo-student"


def prepare_demo_student(home: Path) -> DemoStudent:
    """``deploy/demo-student.sh`` with ``REVIEWBOT_HOME=home``: converts on the first call, finds
    the checkpoint there afterwards."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("REVIEWBOT_")}
    env["REVIEWBOT_HOME"] = str(home)
    started = time.monotonic()
    done = subprocess.run(
        ["bash", str(ROOT / "deploy" / "demo-student.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=PREPARE_TIMEOUT_S,
    )
    if done.returncode != 0:
        raise RuntimeError(f"deploy/demo-student.sh failed ({done.returncode}):\n{done.stderr[-3000:]}")
    path = Path(done.stdout.strip().splitlines()[-1])
    if not (path / "config.json").is_file():
        raise RuntimeError(f"deploy/demo-student.sh named {path}, which holds no checkpoint")
    return DemoStudent(path, time.monotonic() - started)
