"""Step 3: grading. The code scores classification answers (exact match, and for severity the
harm-weighted ``metrics``); a judge (``REVIEWBOT_JUDGE_*``, the teacher unless set) compares
explanations pairwise, each pair shown in both orders: one side wins only when both orders agree, so
a judge's bias for the first (or second) place gives ties, never wins. On the exam, the student is
compared with the exam's answers; on held-out, golden and test items, a candidate is compared with
the model in use directly, and a sign test on the decided items gives the p-value the gate reads.
A failed judge or reference call fails the evaluation, never falls back to another answer. The
teacher then grades the exam as a whole — a proficiency score 1–10, feedback on the weaknesses, and
new examples aimed at them."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from math import comb
from typing import Any

from bot.llm import LLMClient, LLMError
from flywheel.data import Example, clipped
from flywheel.exam import (
    DATA_SAMPLE,
    Items,
    TeacherError,
    ask_in_parts,
    items_of,
    label_mix,
    parse_items,
    parts,
    sample,
)
from flywheel.metrics import Costs, SeverityMetrics, item_cost, severity_metrics
from flywheel.spec import TaskSpec
from flywheel.take import Attempt
from prompts import render
from prompts.answers import Preference

WIN, TIE, LOSS = 1.0, 0.5, 0.0
GRADE_OVERHEAD = 800  # the score and the written feedback around the examples
RESULTS_CHARS = 80_000  # of an exam's results in the grading prompt: a 40-question exam, with room to spare
JUDGE_TOKENS = 16  # {"preferred": "tie"}


def sign_test_p(wins: int, losses: int) -> float:
    """One-sided exact sign test: the chance of at least ``wins`` wins in ``wins + losses`` decided
    pairs if either side were as likely to win each (ties are left out)."""
    n = wins + losses
    return sum(comb(n, k) for k in range(wins, n + 1)) / 2**n if n else 1.0


@dataclass(frozen=True)
class Duel:
    """A candidate against the model in use on the same items: pairs each side won in both orders,
    and ties (the orders disagreed, the judge said tie, or the answers were the same)."""

    wins: int
    losses: int
    ties: int

    @property
    def decided(self) -> int:
        return self.wins + self.losses

    @property
    def win_rate(self) -> float:
        """Of the decided pairs, the share the candidate won: what the sign test tests."""
        return self.wins / self.decided if self.decided else 0.5

    @property
    def p_value(self) -> float:
        return sign_test_p(self.wins, self.losses)

    def to_json(self) -> dict[str, Any]:
        return {
            "wins": self.wins,
            "losses": self.losses,
            "ties": self.ties,
            "win_rate": round(self.win_rate, 4),
            "sign_test_p": round(self.p_value, 4),
        }


@dataclass(frozen=True)
class Score:
    value: float  # mean verdict: accuracy, or the share of pairs won (a tie is half)
    verdicts: list[float]  # per attempt
    by_label: dict[str, tuple[int, int]] = field(default_factory=dict)  # expected label -> (right, total)
    failed: int = 0  # calls that got no answer
    teacher_tokens: int = 0  # the judge's too: both are hosted calls the run pays for
    keys: list[str] = field(default_factory=list)  # per attempt, the example's key: the gate pairs by it
    losses: list[float] = field(default_factory=list)  # per attempt: its cost (severity), else 1 - verdict
    severity: SeverityMetrics | None = None
    duel: Duel | None = None  # explanations: the pairwise comparison with the model in use

    def summary(self) -> dict[str, Any]:
        return {
            "score": round(self.value, 4),
            "size": len(self.verdicts),
            "failed": self.failed,
            "by_label": {label: list(counts) for label, counts in sorted(self.by_label.items())},
            **({"duel": self.duel.to_json()} if self.duel else {}),
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


@dataclass(frozen=True)
class Judge:
    """A model on a server: the judge of explanations, or the reference model that answers an exam."""

    client: LLMClient
    model: str


async def judge_pair(judge: Judge, question: dict[str, Any], first: str, second: str) -> tuple[float, int]:
    """``first``'s verdict against ``second`` and the tokens spent: the judge sees the pair in both
    orders, and ``first`` wins (or loses) only when both orders say so; otherwise a tie."""
    if first == second:
        return TIE, 0  # nothing to tell apart

    async def prefers_a(a: str, b: str) -> tuple[str, int]:
        prompt = render("preference", **clipped({**question, "a": a, "b": b}))
        messages: list[Any] = [{"role": "user", "content": prompt}]
        answer = await judge.client.ask(messages, Preference, judge.model, max_tokens=JUDGE_TOKENS)
        return answer.value.preferred, answer.prompt_tokens + answer.completion_tokens

    (shown_first, tokens_1), (shown_second, tokens_2) = await asyncio.gather(
        prefers_a(first, second), prefers_a(second, first)
    )
    tokens = tokens_1 + tokens_2
    if (shown_first, shown_second) == ("A", "B"):
        return WIN, tokens
    if (shown_first, shown_second) == ("B", "A"):
        return LOSS, tokens
    return TIE, tokens


def _explanation(attempt: Attempt) -> str | None:
    return str(attempt.answer["explanation"]) if attempt.answer is not None else None


async def _verdict(
    judge: Judge, question: dict[str, Any], mine: str | None, theirs: str | None
) -> tuple[float, int]:
    """A failed call loses to an answer (and ties with another failure) without asking the judge."""
    if mine is None:
        return (TIE if theirs is None else LOSS), 0
    if theirs is None:
        return WIN, 0
    return await judge_pair(judge, question, mine, theirs)


def _judged(attempts: Sequence[Attempt], judged: Sequence[tuple[float, int]], duel: Duel | None) -> Score:
    verdicts = [verdict for verdict, _ in judged]
    return Score(
        sum(verdicts) / len(verdicts) if verdicts else 0.0,
        verdicts,
        failed=sum(a.answer is None for a in attempts),
        teacher_tokens=sum(tokens for _, tokens in judged),
        keys=[a.example.key for a in attempts],
        losses=[WIN - v for v in verdicts],
        duel=duel,
    )


async def against_answers(judge: Judge, attempts: Sequence[Attempt]) -> Score:
    """The student's explanations against the examples' own (the exam's, written by the teacher or
    the reference model), each pair judged in both orders."""
    judged = await asyncio.gather(
        *(
            _verdict(judge, a.example.question, _explanation(a), str(a.example.answer["explanation"]))
            for a in attempts
        )
    )
    return _judged(attempts, judged, None)


async def against_model(judge: Judge, candidate: Sequence[Attempt], current: Sequence[Attempt]) -> Score:
    """The candidate's explanations against the model in use's on the same items, each pair judged
    in both orders; the score's ``duel`` counts wins, losses and ties for the sign test. The same
    attempts on both sides (the model in use against itself) are all ties, with no judge call."""
    if [a.example.key for a in candidate] != [a.example.key for a in current]:
        raise ValueError("a candidate is compared with the model in use on the same items, in order")
    judged = await asyncio.gather(
        *(
            _verdict(judge, mine.example.question, _explanation(mine), _explanation(theirs))
            for mine, theirs in zip(candidate, current, strict=True)
        )
    )
    verdicts = [verdict for verdict, _ in judged]
    duel = Duel(verdicts.count(WIN), verdicts.count(LOSS), verdicts.count(TIE))
    return _judged(candidate, judged, duel)


async def compare(
    spec: TaskSpec,
    candidate: Sequence[Attempt],
    current: Sequence[Attempt],
    judge: Judge | None,
    costs: Costs | None = None,
) -> tuple[Score, Score]:
    """The candidate's and the model in use's scores on the same items, for the gate: each one's
    accuracy (with ``costs``, its costs), or the candidate's pairwise comparison with the model in use
    and the model in use's own (every pair a tie: what "no better" scores)."""
    if spec.classification:
        return accuracy(candidate, costs), accuracy(current, costs)
    return await against_model(_needed(spec, judge), candidate, current), even(current)


def even(attempts: Sequence[Attempt]) -> Score:
    """A model compared with itself: every pair a tie."""
    return _judged(attempts, [(TIE, 0)] * len(attempts), Duel(0, 0, len(attempts)))


def _needed(spec: TaskSpec, judge: Judge | None) -> Judge:
    if judge is None:
        raise LLMError(
            f"the {spec.task} task is judged by the teacher (or REVIEWBOT_JUDGE_*), and none is set"
        )
    return judge


async def with_reference(
    teacher: LLMClient, model: str, spec: TaskSpec, attempts: Sequence[Attempt]
) -> list[Attempt]:
    """The attempts with each expected answer replaced by ``model``'s own (``REVIEWBOT_REFERENCE_MODEL``
    on the teacher's server, e.g. a 70B). A question that model does not answer fails the whole:
    keeping the example's answer instead would judge part of the exam against another reference."""
    answers = await teacher.ask_many(
        [spec.conversation(a.example.question) for a in attempts],
        spec.answer_type,
        model,
        max_tokens=spec.max_tokens,
    )
    answered = [answer for answer in answers if not isinstance(answer, LLMError)]
    if len(answered) < len(answers):
        first = next(answer for answer in answers if isinstance(answer, LLMError))
        raise LLMError(
            f"the reference model {model} did not answer {len(answers) - len(answered)} of "
            f"{len(attempts)} exam questions: {first}"
        )
    return [
        replace(a, example=replace(a.example, answer=answer.value.model_dump(mode="json")))
        for a, answer in zip(attempts, answered, strict=True)
    ]


async def score_exam(
    spec: TaskSpec,
    attempts: Sequence[Attempt],
    judge: Judge | None,
    reference: Judge | None = None,
) -> Score:
    """The exam's score: accuracy by the code, or the student's explanations against the exam's
    answers (with ``reference``, against that model's answers instead)."""
    if spec.classification:
        return accuracy(attempts)
    judge = _needed(spec, judge)
    if reference is not None:
        attempts = await with_reference(reference.client, reference.model, spec, attempts)
    return await against_answers(judge, attempts)


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
    not in ``known``, not exam questions), with labels in the mix of ``data`` (reviewers' examples).
    Examples beyond what fits ``max_tokens`` are asked for with the same prompt in further calls,
    whose grades are not used."""
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
            label_mix=label_mix(spec, data),
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
