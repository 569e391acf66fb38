"""Step 1: the teacher writes an exam — question/answer pairs aimed at the student's level and at
the weaknesses its last grade named. Teacher output is checked item by item: a malformed item or a
duplicate is dropped and counted, the rest is kept."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from bot.llm import Answer, LLMBadAnswer, LLMClient
from flywheel.data import DataError, Example, clipped, parse_example
from flywheel.spec import TaskSpec
from prompts import render

TEACHER_ATTEMPTS = 2  # a teacher samples: one more try when its answer is not valid JSON
TOKENS_PER_ITEM = 400  # room for one question with its code, in the teacher's answer
EXAM_OVERHEAD = 200  # the answer's own JSON around the items
DATA_SAMPLE = 20  # task-data examples shown to the teacher per prompt


class TeacherError(LLMBadAnswer):
    """The teacher's answer held nothing usable; the message counts what was dropped and why."""


@dataclass(frozen=True)
class Items:
    examples: list[Example]
    malformed: int
    duplicates: int
    problems: list[str]  # the first few reasons items were dropped, for the run's record


def parse_items(spec: TaskSpec, values: Any, known: set[str], where: str) -> Items:
    """Keep the well-formed items whose question is new (not in ``known``, not repeated)."""
    if not isinstance(values, list):
        raise TeacherError(f"{where}: expected a list of items, got {type(values).__name__}")
    examples, seen, malformed, duplicates, problems = [], set(known), 0, 0, []
    for index, value in enumerate(values):
        try:
            example = parse_example(spec, value, f"{where} item {index}")
        except DataError as exc:
            malformed += 1
            problems.append(str(exc))
            continue
        if example.key in seen:
            duplicates += 1
            continue
        seen.add(example.key)
        examples.append(example)
    return Items(examples, malformed, duplicates, problems[:5])


async def ask_teacher(
    teacher: LLMClient, model: str, prompt: str, schema: type[BaseModel], max_tokens: int
) -> Answer[dict[str, Any]]:
    messages: list[Any] = [{"role": "user", "content": prompt}]
    for attempt in range(TEACHER_ATTEMPTS):
        try:
            return await teacher.ask_object(messages, schema, model, temperature=0.7, max_tokens=max_tokens)
        except LLMBadAnswer:
            if attempt + 1 == TEACHER_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def parts(count: int, max_tokens: int, overhead: int) -> list[int]:
    """``count`` items split into asks that each fit the teacher's ``max_tokens`` (a model's output
    limit, or its context window less the prompt); the first part is the largest."""
    per_call = max(1, (max_tokens - overhead) // TOKENS_PER_ITEM)
    return [min(per_call, count - start) for start in range(0, count, per_call)]


async def ask_in_parts(
    teacher: LLMClient,
    model: str,
    prompt_for: Callable[[int], str],
    schema: type[BaseModel],
    counts: list[int],
    overhead: int,
) -> list[Answer[dict[str, Any]]]:
    """One teacher call per part, all at once."""
    calls = [
        ask_teacher(teacher, model, prompt_for(n), schema, n * TOKENS_PER_ITEM + overhead) for n in counts
    ]
    return list(await asyncio.gather(*calls))


def sample(examples: Sequence[Example], count: int, rng: random.Random) -> list[dict[str, Any]]:
    """Examples to show the teacher, as data: reviewers' and models' texts, cut to length."""
    chosen = rng.sample(list(examples), min(count, len(examples)))
    return [clipped({"question": e.question, "answer": e.answer}) for e in chosen]


def label_mix(spec: TaskSpec, examples: Sequence[Example]) -> str:
    """The share of each label in ``examples`` (reviewers' data), most frequent first, e.g.
    "minor 50%, major 30%, …" ("" without data): the mix the teacher's questions should follow,
    rather than one of each label, which production does not see. A classification's label is its
    answer; an explanation's, the severity it explains."""
    counts = label_counts(spec, examples)
    total = sum(counts.values())
    return ", ".join(f"{label} {count / total:.0%}" for label, count in counts.most_common())


def label_counts(spec: TaskSpec, examples: Sequence[Example]) -> Counter[str]:
    return Counter(label for e in examples if (label := _label(spec, e)) is not None)


def part_targets(shares: Counter[str], counts: Sequence[int]) -> list[str]:
    """Each part's own labels, e.g. "3 minor, 1 major": the exam's questions split over the labels
    in proportion to ``shares`` (largest remainder), then dealt out evenly over the parts, so the
    parts together follow the mix and no two parts are the same ask ("" for all without shares)."""
    total, known = sum(counts), sum(shares.values())
    if not known:
        return ["" for _ in counts]
    ranked = [label for label, _ in shares.most_common()]
    quota = {label: total * shares[label] // known for label in ranked}
    by_remainder = sorted(ranked, key=lambda label: -(total * shares[label] % known))
    for label in by_remainder[: total - sum(quota.values())]:
        quota[label] += 1
    # The k-th of a label's q questions sits at (k + 0.5) / q of the exam: each label spread evenly.
    dealt = sorted(
        ((k + 0.5) / q, ranked.index(label), label) for label, q in quota.items() for k in range(q)
    )
    labels = [label for *_, label in dealt]
    targets, start = [], 0
    for count in counts:
        part = Counter(labels[start : start + count])
        targets.append(", ".join(f"{n} {label}" for label, n in part.most_common()))
        start += count
    return targets


def _label(spec: TaskSpec, example: Example) -> str | None:
    value = next(iter(example.answer.values())) if spec.classification else example.question.get("issue_type")
    return None if value is None else str(value)


@dataclass(frozen=True)
class Exam:
    items: Items
    teacher_tokens: int


async def write_exam(
    teacher: LLMClient,
    model: str,
    spec: TaskSpec,
    *,
    count: int,
    data: Sequence[Example],
    complaints: Sequence[dict[str, Any]],
    proficiency: str,
    feedback: str | None,
    known: set[str],
    rng: random.Random,
    max_tokens: int = 8192,
) -> Exam:
    """Ask the teacher for ``count`` questions (in parts that fit ``max_tokens``, all at once, each
    part with its own labels: ``part_targets``), with labels in the mix of ``data`` (reviewers'
    examples); ``known`` holds the keys of the training and held-out
    examples, which an exam must not repeat."""
    shown = sample(data, DATA_SAMPLE, rng)
    mix = label_mix(spec, data)

    def prompt_for(part: int, target: str) -> str:
        return render(
            "exam",
            task_prompt=spec.task_prompt(),
            question_fields=spec.question_fields,
            answer_example=spec.answer_example,
            data=shown,
            complaints=complaints,
            proficiency=proficiency,
            feedback=feedback,
            label_mix=mix,
            target=target,
            count=part,
        )

    counts = parts(count, max_tokens, EXAM_OVERHEAD)
    targets = part_targets(label_counts(spec, data), counts)
    answers = list(
        await asyncio.gather(
            *(
                ask_teacher(
                    teacher, model, prompt_for(n, target), spec.exam_type, n * TOKENS_PER_ITEM + EXAM_OVERHEAD
                )
                for n, target in zip(counts, targets, strict=True)
            )
        )
    )
    written = [item for answer in answers for item in items_of(answer.value.get("items"))]
    items = parse_items(spec, written, known, f"exam from {model}")
    if not items.examples:
        raise TeacherError(
            f"the teacher {model} wrote no usable exam question: {items.malformed} malformed, "
            f"{items.duplicates} duplicates. {' '.join(items.problems[:2])}"
        )
    return Exam(items, sum(a.prompt_tokens + a.completion_tokens for a in answers))


def items_of(value: Any) -> list[Any]:
    """A part's items; a part that is not a list counts as one malformed item."""
    return value if isinstance(value, list) else [value]
