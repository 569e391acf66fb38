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
    MAX_ANSWER_TOKENS,
    ExplainAnswer,
    ExplanationExam,
    ExplanationGrade,
    ExplanationQuestion,
    RateAnswer,
    SeverityExam,
    SeverityGrade,
    SeverityQuestion,
)


@dataclass(frozen=True)
class TaskSpec:
    task: Task
    template: str  # the student's prompt: prompts/<template>.j2
    question_type: type[BaseModel]
    answer_type: type[BaseModel]
    exam_type: type[BaseModel]
    grade_type: type[BaseModel]
    answer_example: str
    classification: bool  # graded by exact match (else by the teacher's pairwise preference)

    @property
    def max_tokens(self) -> int:
        """Of the student's answer: the review pipeline's limit, so the student is tested as it serves."""
        return MAX_ANSWER_TOKENS[self.task]

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
        task=Task.SEVERITY,
        template="rate",
        question_type=SeverityQuestion,
        answer_type=RateAnswer,
        exam_type=SeverityExam,
        grade_type=SeverityGrade,
        answer_example='{"issue_type": "major"}',
        classification=True,
    ),
    Task.EXPLANATION: TaskSpec(
        task=Task.EXPLANATION,
        template="explain",
        question_type=ExplanationQuestion,
        answer_type=ExplainAnswer,
        exam_type=ExplanationExam,
        grade_type=ExplanationGrade,
        answer_example='{"explanation": "..."}',
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
