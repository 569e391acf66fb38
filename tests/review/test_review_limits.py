"""A review's call limit in the pipeline: chunks are reviewed in waves the calls left can rate and
explain, and what the limit leaves undone is listed, file by file, as not reviewed."""

from __future__ import annotations

import asyncio
import json

from bot.diff import Diff, parse_diff
from bot.llm import LLMClient
from bot.models import Task
from bot.review.pipeline import Limits, ReviewResult, review_diff
from tests.support.scripted_server import Reply, Script, completion, scripted_server

MODELS = dict.fromkeys(Task, "scripted")


def two_files() -> Diff:
    text = "".join(
        f"diff --git a/{name} b/{name}\n--- a/{name}\n+++ b/{name}\n"
        "@@ -1,2 +1,2 @@\n keep = 1\n-x = 1\n+x = eval(y)\n"
        for name in ("a.py", "b.py")
    )
    return parse_diff(text)


def found() -> list[Reply]:
    issue = {"line": 2, "side": "new", "title": "eval", "review": "Evaluates input."}
    return [completion(json.dumps({"issues": [issue]}))]


RATED = [completion(json.dumps({"issue_type": "major"}))]
EXPLAINED = [completion(json.dumps({"explanation": "It runs what it is given."}))]


def review(script: Script, limits: Limits) -> ReviewResult:
    async def run(url: str) -> ReviewResult:
        async with LLMClient(url, "key", role="student", max_retries=0) as llm:
            return await review_diff(two_files(), llm, MODELS, limits=limits)

    with scripted_server(script) as url:
        return asyncio.run(run(url))


def test_a_wave_is_finished_before_the_next_starts() -> None:
    # 4 calls: a.py is found, rated and explained (a wave of one chunk: 4 // 3); b.py is found,
    # and its finding is left unrated.
    script = Script(found() + RATED + EXPLAINED + found())
    result = review(script, Limits(max_calls=4))
    assert [(f.path, f.explanation) for f in result.findings] == [("a.py", "It runs what it is given.")]
    assert result.skipped == [("b.py", "a finding was not rated: review call limit reached (4 calls)")]
    assert result.stopped == "review call limit reached (4 calls)"
    assert result.unfinished == {"b.py"}
    assert len(script.requests) == 4
    assert result.stats.changed_lines_reviewed == result.stats.changed_lines == 4


def test_without_limits_everything_is_reviewed() -> None:
    script = Script(found() + found() + RATED + RATED + EXPLAINED + EXPLAINED)
    result = review(script, Limits())
    assert {f.path for f in result.findings} == {"a.py", "b.py"}
    assert (result.skipped, result.stopped, result.unfinished) == ([], None, frozenset())
