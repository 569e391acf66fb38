"""Two real vLLM servers (the tiny student) behind one adapters folder, as replicas behind a load
balancer: an adapter the registry loads into one of them answers on both, and again on the other
after it restarts, through vLLM's filesystem resolver (``LORA_RESOLVER_DIR`` in deploy/vllm-serve.sh)."""

from __future__ import annotations

import asyncio
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import sqlalchemy as sa
from sqlmodel import Session

from bot.config import load_settings
from bot.llm import LLMClient, LLMRejected
from bot.models import Task
from bot.serving import BASE_FINGERPRINT, load_missing_adapters, served_models
from bot.weights import fingerprint
from flywheel import registry
from prompts import RateAnswer
from tests.support.tiny_model import TinyStudent, build_lora_adapter
from tests.support.vllm_server import VLLMServer, start_vllm

pytestmark = pytest.mark.vllm

SERVED = "tiny-student"
MESSAGES = [{"role": "user", "content": "Rate: query = f'SELECT * FROM t WHERE id={uid}'"}]


def client(server: VLLMServer) -> LLMClient:
    return LLMClient(server.base_url, "EMPTY", role="student", timeout_s=120, max_retries=1)


def greedy(server: VLLMServer, model: str) -> str:
    """An unconstrained greedy continuation: deterministic per model, so an adapter shows."""
    raw = openai.OpenAI(base_url=server.base_url, api_key="EMPTY", max_retries=0)
    reply = raw.chat.completions.create(model=model, messages=MESSAGES, temperature=0, max_tokens=16)
    return reply.choices[0].message.content or ""


def listed(server: VLLMServer) -> list[str]:
    async def names() -> list[str]:
        async with client(server) as llm:
            return await llm.list_models()

    return asyncio.run(names())


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_adapter_loaded_into_one_replica_answers_on_every_replica(
    engine: sa.Engine, tiny_student: TinyStudent, tmp_path: Path
) -> None:
    adapters = tmp_path / "fw" / "adapters"
    # The trainer reads its own copy of the base weights (same content, another path), so the
    # adapter names that copy until the registry points it at what the servers serve.
    trainer_weights = Path(shutil.copytree(tiny_student.path, tmp_path / "trainer-weights"))
    adapter = build_lora_adapter(TinyStudent(trainer_weights), adapters / "severity-v1", seed=3)
    logs = tmp_path / "logs"
    logs.mkdir()
    with ThreadPoolExecutor(2) as pool:  # both cold starts at once
        starting = [
            pool.submit(start_vllm, tiny_student.path, SERVED, {}, logs / f"{n}.log", resolver_dir=adapters)
            for n in ("a", "b")
        ]
        a, b = (f.result() for f in starting)
    try:
        base = greedy(a, SERVED)
        settings = load_settings(database_url=engine.url.render_as_string(hide_password=False),
                                 student_base_url=a.base_url, student_model=SERVED)  # fmt: skip

        async def register() -> None:
            async with client(a) as llm:
                with Session(engine) as session:
                    version = await registry.register(
                        session, llm, Task.SEVERITY, adapter, str(trainer_weights), max_rank=16
                    )
                    registry.promote(session, version.adapter_name, force=True)
                    assert version.metrics[BASE_FINGERPRINT] == fingerprint(tiny_student.path)
                await llm.load_lora_adapter("severity-v1", str(adapter))  # a second load: no error

        asyncio.run(register())  # only A is told
        config = json.loads((adapter / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == str(tiny_student.path)  # the servers' --model
        meta = json.loads((adapter / registry.ADAPTER_META).read_text())
        assert meta["base_model_name_or_path"] == meta["base_weights"] == str(trainer_weights)
        assert served_models(settings, engine)[Task.SEVERITY] == "severity-v1"

        assert "severity-v1" in listed(a)
        assert "severity-v1" not in listed(b)  # B was never told
        on_a = greedy(a, "severity-v1")
        assert on_a != base  # the adapter changes the answer
        assert greedy(b, "severity-v1") == on_a  # B loaded it from the folder on this first request
        assert "severity-v1" in listed(b)
        with pytest.raises(openai.NotFoundError):
            greedy(b, "severity-v9")  # a name with no folder is still unknown

        b.stop()
        b = start_vllm(tiny_student.path, SERVED, {}, logs / "b2.log", resolver_dir=adapters,
                       port=int(b.base_url.rsplit(":", 1)[1].split("/")[0]))  # fmt: skip
        assert "severity-v1" not in listed(b)
        assert greedy(b, "severity-v1") == on_a  # resolved again after the restart

        async def reload_everywhere() -> tuple[list[str], list[str]]:
            async with client(a) as on_a_client, client(b) as on_b_client:
                return (
                    await load_missing_adapters(engine, on_a_client),
                    await load_missing_adapters(engine, on_b_client),
                )

        assert asyncio.run(reload_everywhere()) == ([], [])  # both serve it: nothing to load

        async def unload_then_ask_unknown() -> None:
            async with client(b) as llm:
                await llm.unload_lora_adapter("severity-v1")
                await llm.unload_lora_adapter("severity-v1")  # gone already: not an error
                assert "severity-v1" not in await llm.list_models()
                await llm.ask(MESSAGES, RateAnswer, "no-such-adapter", max_tokens=8)

        with pytest.raises(LLMRejected, match="no-such-adapter"):
            asyncio.run(unload_then_ask_unknown())
    finally:
        a.stop()
        b.stop()
