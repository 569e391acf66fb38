"""Starts the real vLLM OpenAI-compatible server (through ``deploy/vllm-serve.sh``) for the tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 600  # a cold start on 2 CPU cores takes about a minute; allow for a loaded machine


@dataclass
class VLLMServer:
    base_url: str
    model: str
    adapters: dict[str, Path]
    process: subprocess.Popen[bytes]
    log_path: Path
    started_in_s: float

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def vllm_python() -> str:
    python = os.environ.get("VLLM_PYTHON", str(ROOT / ".venv-vllm" / "bin" / "python"))
    if not Path(python).exists():
        raise RuntimeError(f"no vLLM environment at {python}: run `bash deploy/setup-vllm.sh` first")
    return python


def start_vllm(
    model_path: Path,
    served_name: str,
    adapters: dict[str, Path],
    log_path: Path,
    max_lora_rank: int = 16,
    max_model_len: int = 8192,
    resolver_dir: Path | None = None,
    port: int | None = None,
    extra: Sequence[str] = (),
) -> VLLMServer:
    """``resolver_dir``: the adapters folder its filesystem resolver loads from (off when None);
    ``port``: its port (a restart keeps its address), else a free one; ``extra``: more vLLM arguments."""
    port = port or free_port()
    env = {
        **os.environ,
        "VLLM_PYTHON": vllm_python(),
        "SERVED_NAME": served_name,
        "PORT": str(port),
        "MAX_LORA_RANK": str(max_lora_rank),
        "MAX_MODEL_LEN": str(max_model_len),
        "LORA_MODULES": " ".join(f"{name}={path}" for name, path in adapters.items()),
        **({"LORA_RESOLVER_DIR": str(resolver_dir)} if resolver_dir else {}),
    }
    started = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["bash", str(ROOT / "deploy" / "vllm-serve.sh"), str(model_path), *extra],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stop() ends the engine workers too
        )
    server = VLLMServer(f"http://127.0.0.1:{port}/v1", served_name, adapters, process, log_path, 0.0)
    deadline = started + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vLLM exited with code {process.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(f"{server.base_url}/models", timeout=2).status_code == 200:
                server.started_in_s = time.monotonic() - started
                return server
        except httpx.HTTPError:
            pass
        time.sleep(1)
    server.stop()
    raise RuntimeError(f"vLLM did not answer /v1/models within {START_TIMEOUT_S} s:\n{server.log_tail()}")
