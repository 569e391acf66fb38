"""The real vLLM server restarted while a real ``reviewbot worker`` reviews with it: the review's
retry succeeds, every chunk reviewed, and the promoted adapter, which a restarted vLLM no longer
serves, is loaded again before it answers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from bot.llm import LLMClient
from bot.models import ModelStatus, ModelVersion, ReviewStatus, Task
from tests.faults.world import World
from tests.support import vllm_server
from tests.support.db import session_scope
from tests.support.processes import start_worker, wait_for
from tests.support.tiny_model import TinyStudent, build_lora_adapter

pytestmark = pytest.mark.vllm

ADAPTER = "severity-faults-v1"
SETTLE_S = 420  # a vLLM cold start on 2 CPU cores takes about a minute, more on a loaded machine


def served(base_url: str) -> list[str]:
    async def names() -> list[str]:
        async with LLMClient(base_url, "EMPTY", role="student") as llm:
            return await llm.list_models()

    return asyncio.run(names())


def completions_in(log: Path) -> int:
    return log.read_text(errors="replace").count("POST /v1/chat/completions")


@pytest.mark.parametrize("world", ["sqlite"], indirect=True)
def test_vllm_restarted_mid_review_then_the_retry_succeeds_with_the_adapter(
    world: World, tiny_student: TinyStudent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = build_lora_adapter(tiny_student, tmp_path / "severity-lora", seed=5)
    with session_scope(world.engine) as session:
        session.add(
            ModelVersion(
                task=Task.SEVERITY, adapter_name=ADAPTER, path=str(adapter), base_model="tiny-student",
                status=ModelStatus.ACTIVE,
            )
        )  # fmt: skip
    first_log = tmp_path / "vllm-1.log"
    server = vllm_server.start_vllm(tiny_student.path, "tiny-student", {}, first_log)  # no adapter loaded
    port = int(server.base_url.rsplit(":", 1)[1].split("/")[0])
    mr = world.add_merge_request(changed=tuple(range(0, 30, 2)))  # many chunks: still in flight at the stop
    review_id = world.add_review(mr)
    env = world.env(
        student_base_url=server.base_url, student_model="tiny-student", review_chunk_tokens="200",
        llm_max_retries="3", lease_ttl_s="10",
    )  # fmt: skip
    worker = start_worker("worker", env, world.log_dir)
    try:
        wait_for("the review's first model call", lambda: completions_in(first_log) > 0, 120, interval_s=0.05)
        server.stop()  # mid-review: its calls in flight fail, the rest find no server
        restarted_at = time.monotonic()
        monkeypatch.setattr(vllm_server, "free_port", lambda: port)  # the same address, as a restart keeps
        server = vllm_server.start_vllm(tiny_student.path, "tiny-student", {}, tmp_path / "vllm-2.log")
        restart_s = time.monotonic() - restarted_at
        try:
            wait_for("the review to settle", world.settled, SETTLE_S, interval_s=1)
            adapters_after = served(server.base_url)
        finally:
            server.stop()
    finally:
        worker.stop()

    row = world.review(review_id)
    assert row.status == ReviewStatus.DONE, (row.error, worker.output()[-4000:])
    assert row.error is None, row.error  # no chunk left unreviewed for the restart
    assert row.attempts >= 2  # the restart hit the review in flight, and its retry finished it
    assert ADAPTER in adapters_after  # loaded again into the restarted server
    findings = [fp for kind, fp in world.bot_markers(mr) if kind == "finding"]
    tally = world.tally(
        f"vLLM restarted mid-review (back in {restart_s:.0f} s; review attempts {row.attempts})",
        faults=1,
        reviewed=[mr],
    )
    assert (tally.completed, tally.duplicates, tally.stuck, tally.lost) == (1, 0, 0, 0), tally
    assert len(findings) == len(set(findings))
