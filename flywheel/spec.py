"""What the flywheel needs to know about each task it trains: the student's prompt, the shapes of a
question and an answer, and the teacher's answer schemas for exams and grades."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from openai.types.chat import ChatCompletionMessageParam
from pydantic import BaseModel

from bot.models import Task
from prompts import conversation, render
from prompts.answers import (
    ExplainAnswer,
    ExplanationExam,
    ExplanationGrade,
    ExplanationItem,
    ExplanationQuestion,
    RateAnswer,
    SeverityExam,
    SeverityGrade,
    SeverityItem,
    SeverityQuestion,
)


@dataclass(frozen=True)
class TaskSpec:
    task: Task
    template: str  # the student's prompt: prompts/<template>.j2
    question_type: type[BaseModel]
    answer_type: type[BaseModel]
    item_type: type[BaseModel]  # question + answer + difficulty, as the teacher writes them
    exam_type: type[BaseModel]
    grade_type: type[BaseModel]
    answer_example: str
    max_tokens: int  # of the student's answer
    classification: bool  # graded by exact match (else by the teacher's pairwise preference)

    @property
    def question_fields(self) -> list[str]:
        return list(self.question_type.model_fields)

    def task_prompt(self) -> str:
        """The student's prompt with ``{field}`` placeholders, shown to the teacher."""
        return render(self.template, **{name: "{" + name + "}" for name in self.question_fields})

    def conversation(self, question: Mapping[str, Any]) -> list[ChatCompletionMessageParam]:
        return conversation(self.template, **question)

    @staticmethod
    def answer_text(answer: Mapping[str, Any]) -> str:
        """The answer as the student writes it: compact JSON, as vLLM's structured output produces."""
        return json.dumps(answer, separators=(",", ":"), ensure_ascii=False)


SPECS = {
    Task.SEVERITY: TaskSpec(
        Task.SEVERITY,
        "rate",
        SeverityQuestion,
        RateAnswer,
        SeverityItem,
        SeverityExam,
        SeverityGrade,
        '{"issue_type": "major"}',
        max_tokens=32,
        classification=True,
    ),
    Task.EXPLANATION: TaskSpec(
        Task.EXPLANATION,
        "explain",
        ExplanationQuestion,
        ExplainAnswer,
        ExplanationItem,
        ExplanationExam,
        ExplanationGrade,
        '{"explanation": "..."}',
        max_tokens=300,
        classification=False,
    ),
}


def spec_for(task: Task | str) -> TaskSpec:
    try:
        return SPECS[Task(task)]
    except (KeyError, ValueError):
        raise ValueError(
            f"the flywheel trains the tasks {[t.value for t in SPECS]}, not {str(task)!r}"
        ) from None
