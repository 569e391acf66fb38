"""A synthetic, learnable code-review task: canned review comments whose severity follows from their
words, rendered with the product's own prompts. It pre-trains the tiny student so that its answers
are short and well-formed (and non-empty), and gives tests labelled examples."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from openai.types.chat import ChatCompletionMessageParam

from prompts import MAX_ISSUES_PER_CHUNK, conversation


@dataclass(frozen=True)
class Comment:
    title: str
    review: str
    severity: str
    explanation: str


COMMENTS = [
    Comment(
        "SQL injection", "The query is built from user input.", "critical", "Attackers can read all data."
    ),
    Comment(
        "Crash on None", "This dereferences a None value.", "critical", "Every request without it crashes."
    ),
    Comment("Leaked handle", "The file handle is never closed.", "major", "Handles run out under load."),
    Comment("Race", "The counter is updated without the lock.", "major", "Concurrent updates are lost."),
    Comment("Unclear name", "Rename this to say what it holds.", "minor", "Readers misread the value."),
    Comment("Magic number", "Name this constant.", "minor", "Its meaning is hidden."),
    Comment("Typo", "Typo in the comment.", "trivial", "No effect on behaviour."),
    Comment("Spacing", "Extra blank line here.", "trivial", "Style only."),
]

Example = tuple[list[ChatCompletionMessageParam], str]


def _code(rng: random.Random) -> tuple[str, int]:
    start = rng.randint(1, 400)
    lines = [f"{start + i:>6} {rng.choice('+ ')}value_{rng.randint(0, 99)} = compute({i})" for i in range(4)]
    return "\n".join(lines), start + rng.randint(0, 3)


def find_example(rng: random.Random) -> Example:
    code, line = _code(rng)
    comment = rng.choice(COMMENTS)
    answer = {"issues": [{"line": line, "side": "new", "title": comment.title, "review": comment.review}]}
    messages = conversation(
        "find", path=f"src/mod_{rng.randint(0, 9)}.py", code=code, max_issues=MAX_ISSUES_PER_CHUNK
    )
    return messages, json.dumps(answer, separators=(",", ":"))


def rate_example(rng: random.Random, comment: Comment | None = None) -> Example:
    comment = comment or rng.choice(COMMENTS)
    messages = conversation("rate", code=_code(rng)[0], review=comment.review)
    return messages, json.dumps({"issue_type": comment.severity}, separators=(",", ":"))


def explain_example(rng: random.Random) -> Example:
    comment = rng.choice(COMMENTS)
    messages = conversation("explain", code=_code(rng)[0], review=comment.review, issue_type=comment.severity)
    return messages, json.dumps({"explanation": comment.explanation}, separators=(",", ":"))


def review_examples(count: int, seed: int = 0) -> list[Example]:
    """``count`` examples of each of the three review prompts."""
    rng = random.Random(seed)
    return [make(rng) for _ in range(count) for make in (find_example, rate_example, explain_example)]
