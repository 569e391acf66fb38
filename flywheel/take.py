"""Step 2: the student takes the exam — every question rendered with the task's prompt and answered
through vLLM by the task's current adapter (the base model before the first round), concurrently."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bot.llm import LLMClient, LLMError, LLMUnavailable
from flywheel.data import Example
from flywheel.spec import TaskSpec


@dataclass(frozen=True)
class Attempt:
    example: Example
    answer: dict[str, Any] | None  # None when the call failed
    error: str | None = None

    @property
    def correct(self) -> bool:
        """Exact match: the measure of classification tasks."""
        return self.answer == self.example.answer


@dataclass(frozen=True)
class Sitting:
    attempts: list[Attempt]
    student_tokens: int


async def take_exam(
    student: LLMClient,
    model: str,
    spec: TaskSpec,
    questions: Sequence[Example],
    on_done: Callable[[], None] | None = None,
) -> Sitting:
    """The student's answers, in order. A failed call counts as a wrong answer; when every call failed
    because the server is unreachable, that is raised instead of grading an empty exam."""
    answers = await student.ask_many(
        [spec.conversation(q.question) for q in questions],
        spec.answer_type,
        model,
        max_tokens=spec.max_tokens,
        on_done=on_done,
    )
    attempts, tokens = [], 0
    for question, answer in zip(questions, answers, strict=True):
        if isinstance(answer, LLMError):
            attempts.append(Attempt(question, None, str(answer)))
        else:
            attempts.append(Attempt(question, answer.value.model_dump(mode="json")))
            tokens += answer.prompt_tokens + answer.completion_tokens
    failures = [a for a in answers if isinstance(a, LLMError)]
    if failures and len(failures) == len(answers) and all(isinstance(f, LLMUnavailable) for f in failures):
        raise failures[0]
    return Sitting(attempts, tokens)
