"""A learnable synthetic severity task for the flywheel tests: the first word of each review (its
"marker") decides the severity. The tiny student is never pre-trained on these markers, so before
the flywheel it rates them at about chance; the teacher test double knows the rule.

Examples are in the flywheel's format: ``{"question": {"code", "review"}, "answer": {"issue_type"}}``.
"""

from __future__ import annotations

import random
from typing import Any

MARKERS = {
    "Corrupts": "critical",
    "Exposes": "critical",
    "Deletes": "critical",
    "Leaks": "major",
    "Blocks": "major",
    "Skips": "major",
    "Obscures": "minor",
    "Repeats": "minor",
    "Nests": "minor",
    "Misspells": "trivial",
    "Misaligns": "trivial",
    "Pads": "trivial",
}
OBJECTS = ["the cache", "the session", "the user list", "the config", "the buffer", "the index", "the token"]
FUNCTIONS = ["load", "save", "parse", "render", "merge", "flush", "update", "check"]


def severity_of(review: str) -> str | None:
    """The right answer for a review of this task, or None if it is not one."""
    words = review.split()
    return MARKERS.get(words[0]) if words else None


def code_snippet(rng: random.Random) -> str:
    """One numbered diff line, short so that the tiny student's context is mostly the review."""
    number, sign, function = rng.randint(1, 400), rng.choice("+ "), rng.choice(FUNCTIONS)
    return f"{number:>6} {sign}def {function}(value): return compute(value)"


def make_example(rng: random.Random, marker: str | None = None) -> dict[str, Any]:
    marker = marker or rng.choice(list(MARKERS))
    code = code_snippet(rng)
    function = code.split("def ", 1)[1].split("(", 1)[0]
    review = f"{marker} {rng.choice(OBJECTS)} in {function}()."
    return {"question": {"code": code, "review": review}, "answer": {"issue_type": MARKERS[marker]}}


def make_examples(count: int, seed: int = 0, markers: list[str] | None = None) -> list[dict[str, Any]]:
    """``count`` examples, cycling through ``markers`` (default: all, so the classes are balanced)."""
    rng = random.Random(seed)
    pool = markers or list(MARKERS)
    return [make_example(rng, pool[i % len(pool)]) for i in range(count)]
