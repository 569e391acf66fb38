"""The real vLLM server says its context length and counts prompts the way it bills them, and its
refusal of a prompt past the context is told apart from other refusals."""

from __future__ import annotations

import asyncio

import openai
import pytest

from bot.llm import LLMClient, LLMTooLong
from bot.models import Task
from prompts import MAX_ISSUES_PER_CHUNK, FindAnswer, conversation
from prompts.answers import MAX_ANSWER_TOKENS
from tests.support.vllm_server import VLLMServer

pytestmark = pytest.mark.vllm

CODE = "".join(f"{n:>6} +value_{n} = compute({n})\n" for n in range(1, 41))


def test_context_length_and_prompt_tokens_come_from_the_server(vllm_server: VLLMServer) -> None:
    messages = conversation("find", path="app.py", code=CODE, max_issues=MAX_ISSUES_PER_CHUNK)
    too_long = conversation("find", path="app.py", code=CODE * 200, max_issues=MAX_ISSUES_PER_CHUNK)

    async def probe() -> tuple[int | None, int | None, int | None, int, str]:
        async with LLMClient(
            vllm_server.base_url, "EMPTY", role="student", timeout_s=60, max_retries=1
        ) as llm:
            window = await llm.max_model_len("tiny-student")
            adapter_window = await llm.max_model_len("tiny-lora")
            counted = await llm.count_tokens("tiny-student", messages)
            raw = openai.AsyncOpenAI(base_url=vllm_server.base_url, api_key="EMPTY")
            billed = await raw.chat.completions.create(model="tiny-student", messages=messages, max_tokens=1)
            await raw.close()
            with pytest.raises(LLMTooLong) as refused:
                await llm.ask(too_long, FindAnswer, "tiny-student", max_tokens=MAX_ANSWER_TOKENS[Task.FIND])
        assert billed.usage is not None
        return window, adapter_window, counted, billed.usage.prompt_tokens, str(refused.value)

    window, adapter_window, counted, billed, refusal = asyncio.run(probe())
    assert window == 8192  # tests/support/vllm_server.py starts it with MAX_MODEL_LEN=8192
    assert adapter_window == 8192
    assert counted == billed  # /tokenize counts the chat template as the completion does
    assert "refused the request" in refusal
