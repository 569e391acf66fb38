"""The run's teacher-token budget (``REVIEWBOT_FLYWHEEL_MAX_TEACHER_TOKENS``), checked before every
teacher call rather than between rounds only: a round asks for exams, grades and judgements in many
calls at once, and one round could spend several budgets.

A call is allowed when its worst case still fits: the tokens spent so far, those reserved by calls
in flight, and this call's own worst case (its prompt, estimated as the review pipeline does, plus its
``max_tokens``). Otherwise ``BudgetSpent`` says so and nothing is sent."""

from __future__ import annotations

from collections.abc import Sequence

from openai.types.chat import ChatCompletionMessageParam
from pydantic import BaseModel

from bot.config import Settings
from bot.llm import Answer, LLMBadAnswer, LLMClient
from bot.review.pipeline import estimate_tokens


class BudgetSpent(Exception):
    """A teacher call would pass the run's token budget; the message says by how much."""


class TeacherBudget:
    """Tokens spent (prompt and answer, as the server counts them) and reserved by calls in flight."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.spent = 0
        self.reserved = 0

    def reserve(self, worst_case: int) -> None:
        if self.limit is not None and self.spent + self.reserved + worst_case > self.limit:
            raise BudgetSpent(
                f"teacher-token budget: a call of up to {worst_case} tokens would pass it "
                f"({self.spent} spent and {self.reserved} in flight of {self.limit})"
            )
        self.reserved += worst_case

    def settle(self, worst_case: int, used: int) -> None:
        self.reserved -= worst_case
        self.spent += used


def worst_case(messages: Sequence[ChatCompletionMessageParam], max_tokens: int) -> int:
    """The most tokens a call can cost: its prompt, over-estimated, and its whole answer."""
    text = "".join(str(message.get("content") or "") for message in messages)
    return estimate_tokens(text) + max_tokens


class BudgetedTeacher(LLMClient):
    """The teacher's client, each call checked against ``budget`` before it is sent."""

    budget: TeacherBudget

    @classmethod
    def for_run(cls, settings: Settings, limit: int | None) -> BudgetedTeacher:
        client = cls.teacher(settings)
        assert isinstance(client, BudgetedTeacher)
        client.budget = TeacherBudget(limit)
        return client

    async def _complete(
        self,
        messages: Sequence[ChatCompletionMessageParam],
        answer_type: type[BaseModel],
        model: str,
        temperature: float,
        max_tokens: int,
        logprobs: bool = False,
    ) -> Answer[str]:
        most = worst_case(messages, max_tokens)
        self.budget.reserve(most)
        used = 0
        try:
            answer = await super()._complete(messages, answer_type, model, temperature, max_tokens, logprobs)
            used = answer.prompt_tokens + answer.completion_tokens
            return answer
        except LLMBadAnswer:
            used = most  # cut off at max_tokens: the server counted the whole answer
            raise
        finally:
            self.budget.settle(most, used)
