"""The real demo student for the end-to-end tests: converted once per machine (a cache that outlives
the run), served by one vLLM for the whole session."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import _timings
from tests.support.demo_student import SERVED_NAME, DemoStudent, cache_dir, prepare_demo_student
from tests.support.vllm_server import VLLMServer, start_vllm

LORA_RANK = 8  # the adapters the tests train; the server accepts up to twice that


@pytest.fixture(scope="session")
def demo_student() -> DemoStudent:
    student = prepare_demo_student(cache_dir())
    _timings["demo student preparation (deploy/demo-student.sh; cached after the first run)"] = (
        student.prepared_in_s
    )
    return student


@pytest.fixture(scope="session")
def demo_server(demo_student: DemoStudent, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    """vLLM serving SmolLM2-135M-Instruct as deploy/run.sh names it, LoRA enabled."""
    log = tmp_path_factory.mktemp("demo-student-log") / "vllm.log"
    started = time.monotonic()
    server = start_vllm(demo_student.path, SERVED_NAME, {}, log, max_lora_rank=2 * LORA_RANK)
    _timings["vLLM server start (demo student, to first /v1/models)"] = time.monotonic() - started
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _own_data_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Settings made in the test never read the developer's data folder (its run.env)."""
    monkeypatch.setenv("REVIEWBOT_HOME", str(tmp_path / "home"))
