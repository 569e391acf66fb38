"""Near-duplicate questions: the same code and review re-posted with shifted line numbers, or a
near-copy with a word changed, must not be trained on when a copy of it judges the model.

Questions are compared as text blind to line numbers (``line_blind_text``), by the exact Jaccard
similarity of their character shingles. A prefix filter (each shingle set sorted in one global
order; two sets at or above the threshold share a token among their first few) finds the
candidates, so the comparison stays near-linear instead of training × held-out pairs.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

NEAR = 0.8  # Jaccard similarity at or above which two questions count as the same question
SHINGLE = 5  # characters: one changed word changes a few shingles, not a whole text's worth

# What review.pipeline.render_line puts before a line of code ("    12 +code") and a hunk header's
# ranges: both move when a push shifts the lines.
_LINE_PREFIX = re.compile(r"^ *\d+ [ +-]", re.MULTILINE)
_HUNK_RANGES = re.compile(r"^@@ [^@]* @@", re.MULTILINE)


def line_blind_text(question: Mapping[str, Any]) -> str:
    """The question's fields as one lower-case text, without rendered line numbers and diff markers,
    whitespace collapsed."""
    parts = []
    for name, value in sorted(question.items()):
        text = _HUNK_RANGES.sub("@@", _LINE_PREFIX.sub("", str(value)))
        parts.append(f"{name}: {' '.join(text.lower().split())}")
    return "\n".join(parts)


def shingles(question: Mapping[str, Any]) -> frozenset[str]:
    text = line_blind_text(question)
    return frozenset(text[i : i + SHINGLE] for i in range(max(1, len(text) - SHINGLE + 1)))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def _prefix_length(size: int) -> int:
    """How many of a set's first tokens must include a shared one when the similarity is ``NEAR``
    or more: a pair that similar shares at least ``ceil(NEAR · size)`` tokens."""
    return size - math.ceil(NEAR * size) + 1


class NearCopies:
    """The references (held-out and golden questions), indexed to tell whether a question is a near
    copy of any of them."""

    def __init__(self, references: Iterable[Mapping[str, Any]]) -> None:
        self._sets = [shingles(question) for question in references]
        # One global order, rarest first, so that prefixes hold the telling shingles.
        self._frequency = Counter(token for tokens in self._sets for token in tokens)
        self._index: dict[str, list[int]] = defaultdict(list)
        for number, tokens in enumerate(self._sets):
            for token in self._prefix(tokens):
                self._index[token].append(number)

    def _prefix(self, tokens: frozenset[str]) -> list[str]:
        ordered = sorted(tokens, key=lambda token: (self._frequency[token], token))
        return ordered[: _prefix_length(len(tokens))]

    def near(self, question: Mapping[str, Any]) -> bool:
        tokens = shingles(question)
        candidates = {number for token in self._prefix(tokens) for number in self._index.get(token, ())}
        return any(jaccard(tokens, self._sets[number]) >= NEAR for number in candidates)
