"""JSON answer schemas of the prompts; strict (no extra keys) so hosted APIs accept them as strict.

Length and count bounds are part of the schema, so constrained decoding always ends: a model cannot
run a string or a list past them and get cut off by ``max_tokens``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from bot.models import Severity as SeverityLevel
from bot.models import Task

MAX_ISSUES_PER_CHUNK = 5
# The longest answer of each task, in tokens: the review pipeline and the flywheel ask with these.
MAX_ANSWER_TOKENS = {Task.FIND: 1536, Task.SEVERITY: 32, Task.EXPLANATION: 384}

# The severity enum of ``bot.models``, as an inline JSON-schema enum (no ``$ref``, which some
# OpenAI-compatible servers refuse in strict schemas).
Severity = Annotated[
    SeverityLevel, WithJsonSchema({"type": "string", "enum": [level.value for level in SeverityLevel]})
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CandidateIssue(Strict):
    line: int = Field(ge=0, le=10_000_000)
    side: Literal["new", "old"]
    title: str = Field(min_length=1, max_length=100)
    review: str = Field(min_length=1, max_length=600)


class FindAnswer(Strict):
    """Answer of ``find.j2``: the issues a reviewer sees in one chunk of a diff."""

    issues: list[CandidateIssue] = Field(max_length=MAX_ISSUES_PER_CHUNK)


class RateAnswer(Strict):
    """Answer of ``rate.j2`` (the seed's TASK_PROMPT): the severity of one review comment."""

    issue_type: Severity


class ExplainAnswer(Strict):
    """Answer of ``explain.j2``: why the issue has its severity."""

    explanation: str = Field(min_length=1, max_length=600)


# The flywheel: a question of each task the student learns, and the teacher's answers about exams.
MAX_EXAM_ITEMS = 200


class SeverityQuestion(Strict):
    """The input of ``rate.j2``."""

    code: str = Field(min_length=1, max_length=20_000)
    review: str = Field(min_length=1, max_length=600)


class ExplanationQuestion(Strict):
    """The input of ``explain.j2``."""

    code: str = Field(min_length=1, max_length=20_000)
    review: str = Field(min_length=1, max_length=600)
    issue_type: Severity


class SeverityItem(Strict):
    question: SeverityQuestion
    answer: RateAnswer
    difficulty: int = Field(ge=1, le=5, description="1 easy … 5 hard")


class ExplanationItem(Strict):
    question: ExplanationQuestion
    answer: ExplainAnswer
    difficulty: int = Field(ge=1, le=5, description="1 easy … 5 hard")


class SeverityExam(Strict):
    """Answer of ``exam.j2`` for the severity task."""

    items: list[SeverityItem] = Field(max_length=MAX_EXAM_ITEMS)


class ExplanationExam(Strict):
    """Answer of ``exam.j2`` for the explanation task."""

    items: list[ExplanationItem] = Field(max_length=MAX_EXAM_ITEMS)


class SeverityGrade(Strict):
    """Answer of ``exam_evaluation.j2`` for the severity task."""

    score: int = Field(ge=1, le=10, description="the student's proficiency, 1 (none) … 10 (mastery)")
    feedback: str = Field(min_length=1, max_length=2000)
    examples: list[SeverityItem] = Field(max_length=MAX_EXAM_ITEMS)


class ExplanationGrade(Strict):
    """Answer of ``exam_evaluation.j2`` for the explanation task."""

    score: int = Field(ge=1, le=10, description="the student's proficiency, 1 (none) … 10 (mastery)")
    feedback: str = Field(min_length=1, max_length=2000)
    examples: list[ExplanationItem] = Field(max_length=MAX_EXAM_ITEMS)


class Preference(Strict):
    """Answer of ``preference.j2``: which of two explanations is better."""

    preferred: Literal["A", "B", "tie"]
