"""A test double of the hosted teacher for real data: it knows only a pool of labelled examples (the
analyzers' training side, ``flywheel.bootstrap``) and never writes anything outside it. Its exams
and new examples are drawn from the pool, each question at most once per teacher; its new examples
aim at the student's mistakes (the same rule, else the same severity, as a question it got wrong);
its grade is the exam's exact-match accuracy. Asked one of its own questions again (vetting), it
answers with the pool's label; as a judge it prefers the explanation closer to the pool's reference
rationale (token F1), so a judge built on the held-out examples measures explanations against their
references. It reads prompts as ``teacher_server.Teacher`` does: the task outside the data blocks,
the material inside them.
"""

from __future__ import annotations

import json
import random
import re
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from flywheel.data import Example
from tests.support.teacher_server import data_blocks, instructions

WORD = re.compile(r"[a-z0-9_]+")
MARGIN = 0.02  # token-F1 difference below which two explanations tie


def rule_of(review: str) -> str:
    """A review's rule: the analyzer's message up to its first detail (a name, a number, a quote)."""
    return " ".join(review.split()[:4]).lower()


def token_f1(text: str, reference: str) -> float:
    """Bag-of-words F1 of ``text`` against ``reference``: how much of the rationale it says."""
    got, want = Counter(WORD.findall(text.lower())), Counter(WORD.findall(reference.lower()))
    common = sum((got & want).values())
    if not common:
        return 0.0
    precision, recall = common / sum(got.values()), common / sum(want.values())
    return 2 * precision * recall / (precision + recall)


def _lookup_key(code: str, review: str) -> tuple[str, str]:
    return " ".join(code.split()), " ".join(review.split())


@dataclass
class PoolTeacher:
    pool: Sequence[Example]  # the only questions it writes: the training side
    references: Sequence[Example] = ()  # extra questions it can judge (a judge's held-out set)
    seed: int = 0
    calls: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.unused = list(self.pool)
        self.rng.shuffle(self.unused)
        self.known = {
            _lookup_key(e.question["code"], e.question["review"]): e for e in [*self.pool, *self.references]
        }

    def _draw(self, count: int, prefer: Sequence[Example] = ()) -> list[dict[str, Any]]:
        """``count`` unused pool questions: half like ``prefer`` (same rule, else same label), the
        rest at random."""
        chosen: list[Example] = []
        for index, missed in enumerate(prefer):
            if index >= count // 2:
                break
            rule, label = rule_of(missed.question["review"]), json.dumps(missed.answer, sort_keys=True)
            match = next((e for e in self.unused if rule_of(e.question["review"]) == rule), None) or next(
                (e for e in self.unused if json.dumps(e.answer, sort_keys=True) == label), None
            )
            if match is not None:
                self.unused.remove(match)
                chosen.append(match)
        while len(chosen) < count and self.unused:
            chosen.append(self.unused.pop())
        return [{**e.to_json(), "difficulty": 3} for e in chosen]

    def _question(self, prompt: str, code_label: str, review_label: str) -> Example | None:
        blocks = data_blocks(prompt)
        return self.known.get(_lookup_key(blocks.get(code_label, ""), blocks.get(review_label, "")))

    def exam(self, prompt: str) -> dict[str, Any]:
        count = int(re.search(r"Write (\d+) new exam questions", instructions(prompt))[1])  # type: ignore[index]
        return {"items": self._draw(count)}

    def grade(self, prompt: str) -> dict[str, Any]:
        results = [json.loads(line) for line in data_blocks(prompt)["data: exam results"].splitlines()]
        wrong = [r for r in results if r["correct"] not in (True, "better", "as good")]
        count = int(re.search(r'"examples", (\d+) new training examples', instructions(prompt))[1])  # type: ignore[index]
        missed = [Example(r["question"], r["expected"]) for r in wrong]
        accuracy = 1 - len(wrong) / len(results) if results else 0.0
        rules = sorted({rule_of(e.question["review"]) for e in missed})[:6]
        return {
            "score": max(1, min(10, 1 + round(9 * accuracy))),
            "feedback": "The student gets wrong the reviews that begin: "
            + ("; ".join(rules) or "none")
            + ".",
            "examples": self._draw(count, missed),
        }

    def rate(self, prompt: str) -> dict[str, Any]:
        example = self._question(prompt, "diff", "review")
        return dict(example.answer) if example else {"issue_type": "minor"}

    def explain(self, prompt: str) -> dict[str, Any]:
        example = self._question(prompt, "diff", "review")
        return {"explanation": example.answer.get("explanation", "") if example else ""}

    def preference(self, prompt: str) -> dict[str, Any]:
        example = self._question(prompt, "data: code", "data: review")
        reference = str(example.answer.get("explanation", "")) if example else ""
        blocks = data_blocks(prompt)
        a = token_f1(blocks["data: explanation A"], reference)
        b = token_f1(blocks["data: explanation B"], reference)
        return {"preferred": "tie" if abs(a - b) < MARGIN else ("A" if a > b else "B")}

    def answer(self, prompt: str, temperature: float | None = None) -> tuple[int, Any]:
        del temperature  # a deterministic double
        task = instructions(prompt)
        kind = (
            "exam" if "Write an exam" in task
            else "grade" if "Grade the exam" in task
            else "explain" if task.startswith("Task: explain")
            else "rate" if task.startswith("Task: rate")
            else "preference"
        )  # fmt: skip
        with self.lock:
            self.calls[kind] += 1
            return 200, json.dumps(getattr(self, kind)(prompt))
