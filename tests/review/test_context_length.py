"""Chunks sized to the model's context, against a scripted server that behaves like vLLM: its
``/v1/models`` card says ``max_model_len``, its tokenizer is denser than the pipeline's estimate (1
character a token, not 3), and a prompt that does not fit is refused with vLLM's HTTP 400. Every
changed line is reviewed all the same, whether the server counts tokens (``/tokenize``) or not."""

from __future__ import annotations

import asyncio
import json

import pytest

from bot.diff import Diff, parse_diff
from bot.llm import LLMClient
from bot.models import Task
from bot.review.pipeline import ReviewResult, chunk_diff, review_diff
from prompts.answers import MAX_ANSWER_TOKENS
from tests.support.scripted_server import Script, completion, scripted_server

ADDED = 125
WINDOW = 4096  # the find prompt's template alone is about 1,700 of these tokens; its answer 1,536
MODELS = dict.fromkeys(Task, "scripted")


def long_diff(added: int = ADDED) -> Diff:
    lines = "".join(f"+added_{i} = compute_the_value_of({i}, carefully=True)\n" for i in range(added))
    text = f"diff --git a/app.py b/app.py\n--- a/app.py\n+++ b/app.py\n@@ -1,2 +1,{added + 2} @@\n"
    return parse_diff(text + " keep_1 = 1\n" + lines + " keep_2 = 2\n")


def review(script: Script, diff: Diff) -> ReviewResult:
    async def run(url: str) -> ReviewResult:
        async with LLMClient(url, "key", role="student", max_retries=0) as llm:
            return await review_diff(diff, llm, MODELS, chunk_tokens=2500)

    with scripted_server(script) as url:
        return asyncio.run(run(url))


def student(*, tokenize: bool) -> Script:
    return Script(
        [],
        default=completion(json.dumps({"issues": []})),
        max_model_len=WINDOW,
        chars_per_token=1.0,
        tokenize=tokenize,
    )


@pytest.mark.parametrize("tokenize", [True, False], ids=["counted", "refused-then-split"])
def test_every_changed_line_is_reviewed_with_a_dense_tokenizer(tokenize: bool) -> None:
    script = student(tokenize=tokenize)
    result = review(script, long_diff())
    assert result.failed == []
    assert result.stats.changed_lines == ADDED
    assert result.stats.changed_lines_reviewed == ADDED  # not 5 of 125
    asked = [r for r in script.requests if "messages" in r]
    assert len(asked) >= result.stats.chunks > 1  # pieces of refused chunks are asked on their own
    reviewed = "".join(r["messages"][1]["content"] for r in asked)
    for i in range(ADDED):
        assert f"+added_{i} = " in reviewed
    for request in asked:  # what was answered fitted the context, by the server's own count
        assert script.count(request) + MAX_ANSWER_TOKENS[Task.FIND] <= WINDOW
    if tokenize:
        assert script.tokenized, "the server's tokenizer was not asked"
        assert script.refused == []  # counted before sending: nothing was refused
    else:
        assert script.refused, "the estimate fitted; the test would prove nothing"


def test_without_a_context_length_chunks_follow_the_setting() -> None:
    script = Script([], default=completion(json.dumps({"issues": []})), tokenize=True)  # no max_model_len
    result = review(script, long_diff())
    assert result.stats.chunks == len(chunk_diff(long_diff(), 2500))
    assert script.tokenized == []  # nothing to fit against: no counting
    assert result.stats.changed_lines_reviewed == ADDED


def test_a_line_longer_than_the_context_fails_in_plain_words() -> None:
    text = "diff --git a/app.py b/app.py\n--- a/app.py\n+++ b/app.py\n@@ -0,0 +1 @@\n+" + "x" * 5000 + "\n"
    result = review(student(tokenize=False), parse_diff(text))
    (failure,) = result.failed
    assert "a line is longer than the model's context" in failure.public
    assert result.unfinished == {"app.py"}
