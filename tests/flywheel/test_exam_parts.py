"""An exam asked for in parts gives each part its own target: its share of the questions' labels,
so the parts together follow the reviewers' label mix and no two parts are the same ask."""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections import Counter

from bot.llm import LLMClient
from bot.models import Task
from flywheel.data import parse_example
from flywheel.exam import EXAM_OVERHEAD, TOKENS_PER_ITEM, part_targets, write_exam
from flywheel.spec import spec_for
from tests.support.scripted_server import Script, completion, scripted_server
from tests.support.severity_task import make_examples

SEVERITY = spec_for(Task.SEVERITY)


def test_targets_follow_the_mix_and_differ_by_part() -> None:
    targets = part_targets(Counter(minor=5, major=3, critical=1, trivial=1), [4, 4, 2])
    assert targets == ["3 minor, 1 major", "1 major, 1 critical, 1 trivial, 1 minor", "1 major, 1 minor"]
    whole = Counter[str]()
    for target in targets:
        whole.update({label: int(n) for n, label in (part.split() for part in target.split(", "))})
    assert whole == {"minor": 5, "major": 3, "critical": 1, "trivial": 1}  # the mix, over 10
    assert part_targets(Counter(), [3, 3]) == ["", ""]  # no reviewers' data: no targets


def test_each_part_of_an_exam_is_asked_for_its_own_labels() -> None:
    reviewers = [parse_example(SEVERITY, row, "t") for row in make_examples(12, seed=5)]
    items = json.dumps({"items": make_examples(3, seed=9)})
    script = Script([], default=completion(items))
    with scripted_server(script) as url:
        teacher = LLMClient(url, "key", role="teacher", max_retries=0)
        exam = asyncio.run(
            write_exam(
                teacher, "big", SEVERITY, count=6, data=reviewers, complaints=[],
                proficiency="not examined yet", feedback=None, known=set(), rng=random.Random(0),
                max_tokens=3 * TOKENS_PER_ITEM + EXAM_OVERHEAD,  # three questions a part: two parts
            )
        )  # fmt: skip
    assert exam.items.examples
    prompts = [str(request["messages"][-1]["content"]) for request in script.requests]
    asked = [re.search(r"The severities of these 3: ([^.]*)\.", prompt) for prompt in prompts]
    mix = Counter(e.answer["issue_type"] for e in reviewers)
    # The parts are asked at once: the server may see them in either order.
    assert sorted(match[1] if match else "" for match in asked) == sorted(part_targets(mix, [3, 3]))
    assert len(set(prompts)) == 2  # not the same prompt twice
