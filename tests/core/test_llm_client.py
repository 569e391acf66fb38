"""The LLM client's failure handling, against a scripted server and a closed port."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from bot.config import ConfigError, load_settings
from bot.llm import Answer, LLMBadAnswer, LLMClient, LLMError, LLMRejected, LLMTooLong, LLMUnavailable
from prompts import RateAnswer
from tests.support.scripted_server import Reply, Script, completion, scripted_server
from tests.support.vllm_server import free_port

MESSAGES = [{"role": "user", "content": "rate this"}]
GOOD = completion('{"issue_type":"major"}')


def ask(base_url: str, **options: Any) -> Answer[RateAnswer]:
    async def call() -> Answer[RateAnswer]:
        settings = {"role": "student", "backoff_s": 0.01, **options}
        async with LLMClient(base_url, "key", **settings) as llm:
            return await llm.ask(MESSAGES, RateAnswer, "student-model", max_tokens=32)

    return asyncio.run(call())


def test_sends_json_schema_and_validates_the_answer() -> None:
    script = Script([GOOD])
    with scripted_server(script) as url:
        answer = ask(url)
    assert answer.value == RateAnswer(issue_type="major")
    assert (answer.prompt_tokens, answer.completion_tokens) == (10, 5)
    sent = script.requests[0]
    assert sent["model"] == "student-model"
    assert sent["temperature"] == 0.0
    schema = sent["response_format"]["json_schema"]["schema"]
    assert sent["response_format"]["type"] == "json_schema"
    assert schema["properties"]["issue_type"]["enum"] == ["critical", "major", "minor", "trivial"]
    assert schema["additionalProperties"] is False


def test_unreachable_server_names_url_and_reason() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(LLMUnavailable) as raised:
        ask(url, max_retries=2)
    message = str(raised.value)
    assert url in message
    assert "student model server" in message
    assert "after 3 attempts" in message


def test_retries_5xx_then_succeeds() -> None:
    script = Script([Reply(503, {"error": {"message": "overloaded"}}), Reply(500, {}), GOOD])
    with scripted_server(script) as url:
        assert ask(url, max_retries=3).value.issue_type == "major"
    assert len(script.requests) == 3


def test_gives_up_after_max_retries_with_the_last_reason() -> None:
    script = Script([], default=Reply(502, {"error": {"message": "bad gateway"}}))
    with scripted_server(script) as url, pytest.raises(LLMUnavailable, match=r"HTTP 502.*after 3 attempts"):
        ask(url, max_retries=2)
    assert len(script.requests) == 3


def test_429_waits_for_retry_after() -> None:
    script = Script([Reply(429, {"error": {"message": "slow down"}}, {"Retry-After": "1"}), GOOD])
    with scripted_server(script) as url:
        started = time.monotonic()
        ask(url, max_retries=1)
    assert time.monotonic() - started >= 1.0
    assert len(script.requests) == 2


def test_4xx_is_not_retried() -> None:
    script = Script([], default=Reply(404, {"error": {"message": "The model `x` does not exist."}}))
    with scripted_server(script) as url, pytest.raises(LLMRejected, match="does not exist"):
        ask(url, max_retries=3)
    assert len(script.requests) == 1


def test_a_prompt_past_the_context_is_refused_as_too_long() -> None:
    script = Script([GOOD], max_model_len=40, chars_per_token=1.0)
    with scripted_server(script) as url, pytest.raises(LLMTooLong, match="maximum context length is 40"):
        ask(url, max_retries=3)
    assert len(script.refused) == 1  # not retried
    assert script.requests == []


def test_context_length_and_token_count_come_from_the_server() -> None:
    async def probe(url: str) -> tuple[int | None, int | None, int | None, int | None]:
        async with LLMClient(url, "key", role="student") as llm:
            return (
                await llm.max_model_len("scripted"),
                await llm.max_model_len("severity-v2"),  # an adapter: its base model's context
                await llm.max_model_len("another-model"),
                await llm.count_tokens("scripted", MESSAGES),
            )

    script = Script([], max_model_len=2048, chars_per_token=2.0, tokenize=True, adapters=("severity-v2",))
    with scripted_server(script) as url:
        assert asyncio.run(probe(url)) == (2048, 2048, None, script.count({"messages": MESSAGES}))
    assert script.tokenized == [{"model": "scripted", "messages": MESSAGES}]


def test_a_server_without_a_tokenizer_is_asked_once() -> None:
    async def count(url: str) -> list[int | None]:
        async with LLMClient(url, "key", role="student") as llm:
            return [await llm.count_tokens("scripted", MESSAGES) for _ in range(3)]

    script = Script([])  # no /tokenize, no max_model_len on its card
    with scripted_server(script) as url:
        assert asyncio.run(count(url)) == [None, None, None]
        assert ask_len(url) is None
    assert len(script.tokenized) == 1


def ask_len(url: str) -> int | None:
    async def call() -> int | None:
        async with LLMClient(url, "key", role="student") as llm:
            return await llm.max_model_len("scripted")

    return asyncio.run(call())


def test_timeout_per_call() -> None:
    script = Script([], default=Reply(delay_s=2.0, body=GOOD.body))
    with scripted_server(script) as url, pytest.raises(LLMUnavailable, match=r"no answer within 0\.3 s"):
        ask(url, timeout_s=0.3, max_retries=1)


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (completion("not json"), "does not match RateAnswer"),
        (completion('{"issue_type":"catastrophic"}'), "issue_type"),
        (completion('{"issue_type":"major","extra":1}'), "extra"),
        (completion('{"issue_type":"ma', finish_reason="length"), "cut off at max_tokens=32"),
    ],
)
def test_invalid_answers_are_reported(reply: Reply, reason: str) -> None:
    with scripted_server(Script([reply])) as url, pytest.raises(LLMBadAnswer, match=reason):
        ask(url)


def test_ask_many_bounds_concurrency_and_keeps_failures_in_place() -> None:
    replies = [Reply(delay_s=0.2, body=GOOD.body) for _ in range(9)]
    replies[4] = Reply(400, {"error": {"message": "prompt too long"}})
    script = Script(replies)

    async def run(url: str) -> list[Answer[RateAnswer] | LLMError]:
        async with LLMClient(url, "key", role="student", concurrency=3, backoff_s=0.01) as llm:
            return await llm.ask_many([MESSAGES] * 9, RateAnswer, "m", max_tokens=32)

    with scripted_server(script) as url:
        answers = asyncio.run(run(url))
    assert script.max_in_flight == 3
    assert sum(isinstance(a, LLMRejected) for a in answers) == 1
    assert sum(isinstance(a, Answer) for a in answers) == 8


def test_load_lora_adapter_posts_name_and_path() -> None:
    script = Script([Reply(200, "Success")])

    async def load(url: str) -> None:
        async with LLMClient(url, "key", role="student") as llm:
            await llm.load_lora_adapter("severity-v2", "/models/severity-v2")

    with scripted_server(script) as url:
        asyncio.run(load(url))
    assert script.requests == [
        {"path": "/v1/load_lora_adapter", "lora_name": "severity-v2", "lora_path": "/models/severity-v2"}
    ]


def test_teacher_needs_configuration() -> None:
    with pytest.raises(ConfigError, match="REVIEWBOT_TEACHER_BASE_URL"):
        LLMClient.teacher(load_settings())
    teacher = LLMClient.teacher(
        load_settings(teacher_base_url="https://teacher.example/v1", teacher_model="big", teacher_api_key="k")
    )
    assert teacher.base_url == "https://teacher.example/v1"
    assert teacher.role == "teacher"
