"""The real vLLM server with the tiny student, driven through the project's own LLM client."""

from __future__ import annotations

import asyncio
from pathlib import Path

import openai
import pytest
import sqlalchemy as sa
from sqlmodel import Session
from transformers import AutoTokenizer

from bot.llm import LLMClient, LLMError, LLMRejected
from bot.models import Task
from bot.serving import AdapterMismatch
from bot.weights import fingerprint
from flywheel import registry
from prompts import RateAnswer, render
from tests.support.tiny_model import TinyStudent, build_lora_adapter, build_tiny_student
from tests.support.vllm_server import VLLMServer

pytestmark = pytest.mark.vllm

RATE_MESSAGES = [
    {
        "role": "user",
        "content": render("rate", code="query = f'SELECT * FROM t WHERE id={uid}'", review="SQL injection"),
    }
]


def client(server: VLLMServer) -> LLMClient:
    return LLMClient(server.base_url, "EMPTY", role="student", timeout_s=60, max_retries=1)


def greedy_text(server: VLLMServer, model: str) -> str:
    """Unconstrained greedy continuation: a random model's raw preference, so adapters show."""
    raw = openai.OpenAI(base_url=server.base_url, api_key="EMPTY")
    reply = raw.chat.completions.create(model=model, messages=RATE_MESSAGES, temperature=0, max_tokens=24)
    return reply.choices[0].message.content or ""


def test_generation_prompt_ends_on_a_token_boundary(tiny_student: TinyStudent) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_student.path)
    prompt = tokenizer.apply_chat_template(RATE_MESSAGES, add_generation_prompt=True, tokenize=False)
    answer = '{"issue_type":"major"}<|eot_id|>'
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    full_ids = tokenizer(prompt + answer, add_special_tokens=False).input_ids
    assert full_ids[: len(prompt_ids)] == prompt_ids


def test_server_lists_base_model_and_adapter(vllm_server: VLLMServer) -> None:
    async def names() -> list[str]:
        async with client(vllm_server) as llm:
            return await llm.list_models()

    assert set(asyncio.run(names())) >= {"tiny-student", "tiny-lora"}


@pytest.mark.parametrize("model", ["tiny-student", "tiny-lora"])
def test_structured_answer_from_base_and_adapter(vllm_server: VLLMServer, model: str) -> None:
    async def ask() -> object:
        async with client(vllm_server) as llm:
            return await llm.ask(RATE_MESSAGES, RateAnswer, model, max_tokens=32)

    answer = asyncio.run(ask())
    assert isinstance(answer.value, RateAnswer)  # type: ignore[attr-defined]
    assert answer.model == model  # type: ignore[attr-defined]
    assert answer.prompt_tokens > 0
    assert answer.completion_tokens > 0


def test_adapter_changes_the_model_output(vllm_server: VLLMServer) -> None:
    """Same prompt, temperature 0: if vLLM ignored the adapter, both would be identical."""
    base = greedy_text(vllm_server, "tiny-student")
    assert base == greedy_text(vllm_server, "tiny-student")  # greedy decoding is deterministic
    assert greedy_text(vllm_server, "tiny-lora") != base


def test_adapter_loaded_at_runtime_is_served(
    vllm_server: VLLMServer, tiny_student: TinyStudent, tmp_path: Path
) -> None:
    adapter = build_lora_adapter(tiny_student, tmp_path / "runtime-lora", seed=7)

    async def load_and_ask() -> tuple[list[str], object]:
        async with client(vllm_server) as llm:
            await llm.load_lora_adapter("runtime-lora-v1", str(adapter))
            answer = await llm.ask(RATE_MESSAGES, RateAnswer, "runtime-lora-v1", max_tokens=32)
            return await llm.list_models(), answer

    names, answer = asyncio.run(load_and_ask())
    assert "runtime-lora-v1" in names
    assert isinstance(answer.value, RateAnswer)  # type: ignore[attr-defined]
    assert greedy_text(vllm_server, "runtime-lora-v1") != greedy_text(vllm_server, "tiny-student")


def test_adapter_vllm_refuses_is_a_clear_error(vllm_server: VLLMServer, tmp_path: Path) -> None:
    async def load() -> None:
        async with client(vllm_server) as llm:
            await llm.load_lora_adapter("missing-v1", str(tmp_path / "no-such-adapter"))

    with pytest.raises(LLMRejected, match="refused adapter 'missing-v1'"):
        asyncio.run(load())


def test_unknown_model_name_is_rejected_not_retried(vllm_server: VLLMServer) -> None:
    async def ask() -> None:
        async with client(vllm_server) as llm:
            await llm.ask(RATE_MESSAGES, RateAnswer, "no-such-adapter", max_tokens=32)

    with pytest.raises(LLMRejected, match="no-such-adapter"):
        asyncio.run(ask())


def test_many_requests_at_once(vllm_server: VLLMServer) -> None:
    async def ask_all() -> list[object]:
        done = []
        async with LLMClient(vllm_server.base_url, "EMPTY", role="student", concurrency=8) as llm:
            conversations = [
                [{"role": "user", "content": render("rate", code=f"x = {i}", review=f"review {i}")}]
                for i in range(24)
            ]
            answers = await llm.ask_many(
                conversations, RateAnswer, "tiny-lora", max_tokens=32, on_done=lambda: done.append(1)
            )
        assert len(done) == 24
        return list(answers)

    answers = asyncio.run(ask_all())
    assert len(answers) == 24
    assert not [a for a in answers if isinstance(a, LLMError)]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_adapter_trained_on_other_base_weights_is_refused_before_loading(
    vllm_server: VLLMServer, tiny_student: TinyStudent, engine: sa.Engine, tmp_path: Path
) -> None:
    other = build_tiny_student(tmp_path / "other-student", seed=1)  # same architecture, other weights
    adapter = build_lora_adapter(other, tmp_path / "adapters" / "severity-v1", seed=2)

    async def register() -> list[str]:
        async with client(vllm_server) as llm:
            with Session(engine) as session, pytest.raises(AdapterMismatch) as refused:
                await registry.register(session, llm, Task.SEVERITY, adapter, str(other.path), max_rank=16)
            assert f"trained on base weights {fingerprint(other.path)}" in str(refused.value)
            assert f"serves {tiny_student.path} with base weights {fingerprint(tiny_student.path)}" in str(
                refused.value
            )
            return await llm.list_models()

    assert "severity-v1" not in asyncio.run(register())  # vLLM was never asked
    with Session(engine) as session:
        assert registry.versions(session) == []
