"""Self-consistency of the teacher's examples before they are trained on: each question is asked
again, without its answer, at temperature 0, in the student's own prompt, and an example whose
answer the teacher does not give again is dropped. The teacher wrote it sampling (temperature 0.7,
many at once); an answer it does not reproduce when asked plainly is one it is unsure of.

Only classification answers are checked (severity: the label must be the same). An explanation is
free text: two good ones rarely share their words, so a cheap comparison would drop good examples
at random, and a judged one would cost a call per example; explanation examples are kept unchecked,
held down by the synthetic cap and retirement instead (``curriculum``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bot.llm import LLMClient, LLMError, LLMUnavailable
from flywheel.data import Example
from flywheel.spec import TaskSpec


@dataclass(frozen=True)
class Vetted:
    kept: list[Example]
    disagreed: list[Example]  # the teacher answered them differently: dropped
    failed: int  # no valid answer to compare with: dropped too (unchecked is not vetted)
    teacher_tokens: int

    @property
    def dropped(self) -> int:
        return len(self.disagreed) + self.failed


async def vet(teacher: LLMClient, model: str, spec: TaskSpec, examples: Sequence[Example]) -> Vetted:
    """The examples whose answer ``model`` gives again when asked the question alone. When every
    call failed because the teacher is unreachable, that is raised instead of dropping everything."""
    if not spec.classification or not examples:
        return Vetted(list(examples), [], 0, 0)
    answers = await teacher.ask_many(
        [spec.conversation(e.question) for e in examples],
        spec.answer_type,
        model,
        temperature=0.0,
        max_tokens=spec.max_tokens,
    )
    errors = [answer for answer in answers if isinstance(answer, LLMError)]
    if len(errors) == len(answers) and all(isinstance(e, LLMUnavailable) for e in errors):
        raise errors[0]
    kept: list[Example] = []
    disagreed: list[Example] = []
    tokens = 0
    for example, answer in zip(examples, answers, strict=True):
        if isinstance(answer, LLMError):
            continue
        tokens += answer.prompt_tokens + answer.completion_tokens
        (kept if answer.value.model_dump(mode="json") == example.answer else disagreed).append(example)
    return Vetted(kept, disagreed, len(errors), tokens)
