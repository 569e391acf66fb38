"""Step 3: grading. The code scores classification answers (exact match, and for severity the
harm-weighted ``metrics``); the teacher judges explanations pairwise against a reference, as in the
seed. The teacher then grades the exam as a whole — a proficiency score 1–10, feedback on the
weaknesses, and new examples aimed at them."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from bot.llm import LLMClient, LLMError
from bot.models import Task
from flywheel.data import Example, clipped
from flywheel.exam import DATA_SAMPLE, Items, TeacherError, ask_in_parts, items_of, parse_items, parts, sample
from flywheel.metrics import Costs, SeverityMetrics, item_cost, severity_metrics
from flywheel.spec import TaskSpec
from flywheel.take import Attempt
from prompts import render
from prompts.answers import Preference

WIN, TIE, LOSS = 1.0, 0.5, 0.0
GRADE_OVERHEAD = 800  # the score and the written feedback around the examples
RESULTS_CHARS = 80_000  # of an exam's results in the grading prompt: a 40-question exam, with room to spare


@dataclass(frozen=True)
class Score:
    value: float  # mean verdict: accuracy, or the win rate against the reference (a tie is half)
    verdicts: list[float]  # per attempt
    by_label: dict[str, tuple[int, int]] = field(default_factory=dict)  # expected label -> (right, total)
    failed: int = 0  # calls that got no answer
    teacher_tokens: int = 0
    keys: list[str] = field(default_factory=list)  # per attempt, the example's key: the gate pairs by it
    losses: list[float] = field(default_factory=list)  # per attempt: its cost (severity), else 1 - verdict
    severity: SeverityMetrics | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "score": round(self.value, 4),
            "size": len(self.verdicts),
            "failed": self.failed,
            "by_label": {label: list(counts) for label, counts in sorted(self.by_label.items())},
        }


def accuracy(attempts: Sequence[Attempt], costs: Costs | None = None) -> Score:
    """Exact match, per label; with ``costs`` (severity), the harm-weighted metrics and losses."""
    verdicts = [WIN if a.correct else LOSS for a in attempts]
    by_label: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for attempt, verdict in zip(attempts, verdicts, strict=True):
        label = str(next(iter(attempt.example.answer.values())))
        by_label[label][0] += int(verdict)
        by_label[label][1] += 1
    pairs = [(_label(a.example.answer), _label(a.answer) if a.answer else None) for a in attempts]
    return Score(
        sum(verdicts) / len(verdicts) if verdicts else 0.0,
        verdicts,
        {label: (right, total) for label, (right, total) in by_label.items()},
        sum(a.answer is None for a in attempts),
        keys=[a.example.key for a in attempts],
        losses=[item_cost(costs, g, p) for g, p in pairs] if costs else [WIN - v for v in verdicts],
        severity=severity_metrics(pairs, costs) if costs else None,
    )


def _label(answer: dict[str, Any]) -> str:
    return str(next(iter(answer.values())))


async def preference(
    teacher: LLMClient, model: str, attempts: Sequence[Attempt], rng: random.Random
) -> Score:
    """Per attempt, the teacher's choice between the student's answer and the example's reference
    answer; the two are shown in random order, so a judge's bias for "A" cannot favour either."""

    async def judge(attempt: Attempt, student_first: bool) -> tuple[float, int]:
        if attempt.answer is None:
            return LOSS, 0
        ours, theirs = attempt.answer["explanation"], attempt.example.answer["explanation"]
        a, b = (ours, theirs) if student_first else (theirs, ours)
        prompt = render("preference", **clipped({**attempt.example.question, "a": a, "b": b}))
        messages: list[Any] = [{"role": "user", "content": prompt}]
        answer = await teacher.ask(messages, Preference, model, max_tokens=16)
        tokens = answer.prompt_tokens + answer.completion_tokens
        if answer.value.preferred == "tie":
            return TIE, tokens
        return (WIN if (answer.value.preferred == "A") == student_first else LOSS), tokens

    orders = [rng.random() < 0.5 for _ in attempts]
    judged = await asyncio.gather(*(judge(a, first) for a, first in zip(attempts, orders, strict=True)))
    verdicts = [verdict for verdict, _ in judged]
    return Score(
        sum(verdicts) / len(verdicts) if verdicts else 0.0,
        verdicts,
        failed=sum(a.answer is None for a in attempts),
        teacher_tokens=sum(tokens for _, tokens in judged),
        keys=[a.example.key for a in attempts],
        losses=[WIN - v for v in verdicts],
    )


async def against_reference(
    teacher: LLMClient, model: str, spec: TaskSpec, attempts: Sequence[Attempt]
) -> list[Attempt]:
    """The attempts with each expected answer replaced by ``model``'s own answer (the seed's
    reference model, e.g. a 70B); where that model fails, the example's answer stays."""
    answers = await teacher.ask_many(
        [spec.conversation(a.example.question) for a in attempts],
        spec.answer_type,
        model,
        max_tokens=spec.max_tokens,
    )
    return [
        a
        if isinstance(answer, LLMError)
        else replace(a, example=replace(a.example, answer=answer.value.model_dump(mode="json")))
        for a, answer in zip(attempts, answers, strict=True)
    ]


async def score(
    spec: TaskSpec,
    attempts: Sequence[Attempt],
    teacher: LLMClient | None,
    teacher_model: str,
    rng: random.Random,
    reference_model: str | None = None,
    costs: Costs | None = None,
) -> Score:
    """The task's measure: accuracy by the code (with severity's ``costs``), or the teacher's
    pairwise preference against the examples' answers (or, with ``reference_model``, against that
    model's answers)."""
    if spec.classification:
        return accuracy(attempts, costs if spec.task == Task.SEVERITY else None)
    if teacher is None:
        raise LLMError(f"the {spec.task} task is judged by the teacher, and none is configured")
    if reference_model:
        attempts = await against_reference(teacher, reference_model, spec, attempts)
    return await preference(teacher, teacher_model, attempts, rng)


@dataclass(frozen=True)
class Grade:
    proficiency: int  # the teacher's 1–10
    feedback: str
    new: Items
    teacher_tokens: int


async def grade_exam(
    teacher: LLMClient,
    model: str,
    spec: TaskSpec,
    attempts: Sequence[Attempt],
    exam_score: Score,
    *,
    data: Sequence[Example],
    count: int,
    known: set[str],
    rng: random.Random,
    max_tokens: int = 8192,
) -> Grade:
    """The teacher's grade of a sitting and ``count`` new training examples (new questions only:
    not in ``known``, not exam questions). Examples beyond what fits ``max_tokens`` are asked for
    with the same prompt in further calls, whose grades are not used."""
    results = [
        clipped(
            {
                "question": a.example.question,
                "expected": a.example.answer,
                "student": a.answer if a.answer is not None else {"error": a.error},
                "correct": verdict == WIN
                if spec.classification
                else {WIN: "better", TIE: "as good", LOSS: "worse"}[verdict],
            }
        )
        for a, verdict in zip(attempts, exam_score.verdicts, strict=True)
    ]
    shown = sample(data, DATA_SAMPLE, rng)
    right = sum(v == WIN for v in exam_score.verdicts)

    def prompt_for(part: int) -> str:
        return render(
            "exam_evaluation",
            task_prompt=spec.task_prompt(),
            results=results,
            results_limit=RESULTS_CHARS,
            exam_score=f"{exam_score.value:.0%} ({right} of {len(results)})",
            data=shown,
            count=part,
        )

    answers = await ask_in_parts(
        teacher, model, prompt_for, spec.grade_type, parts(count, max_tokens, GRADE_OVERHEAD), GRADE_OVERHEAD
    )
    answer = answers[0]
    proficiency, feedback = answer.value.get("score"), answer.value.get("feedback")
    if not isinstance(proficiency, int) or isinstance(proficiency, bool) or not 1 <= proficiency <= 10:
        raise TeacherError(f"the teacher {model} graded with score {proficiency!r}; expected an integer 1-10")
    if not isinstance(feedback, str) or not feedback.strip():
        raise TeacherError(f"the teacher {model} gave no written feedback on the exam")
    exam_keys = {a.example.key for a in attempts}
    written = [item for part in answers for item in items_of(part.value.get("examples"))]
    new = parse_items(spec, written, known | exam_keys, f"grade from {model}")
    tokens = sum(a.prompt_tokens + a.completion_tokens for a in answers)
    return Grade(proficiency, feedback.strip(), new, tokens)
