"""The teacher-token budget is checked before every teacher call (flywheel.budget), over real HTTP: a
call that would pass it is never sent, calls in flight count, and a run it stops ends cleanly with
the reason."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import BaseModel

from bot.models import RunStatus, Task
from flywheel import data
from flywheel.anchor import anchor_path
from flywheel.budget import BudgetedTeacher, BudgetSpent, TeacherBudget, worst_case
from flywheel.cycle import Plan, run_flywheel
from tests.flywheel.test_flywheel import BASE, SEVERITY, one_round
from tests.support.scripted_server import Script, completion, scripted_server
from tests.support.severity_task import make_examples
from tests.support.tiny_model import TinyStudent

MESSAGES = [{"role": "user", "content": "x" * 30}]  # about 11 tokens by the estimate
MAX_TOKENS = 20
WORST = 11 + MAX_TOKENS  # a call's worst case; the scripted server counts 10 + 5 = 15 tokens


class Reply(BaseModel):
    ok: bool


def teacher(url: str, limit: int) -> BudgetedTeacher:
    client = BudgetedTeacher(url, "key", role="teacher", max_retries=0)
    client.budget = TeacherBudget(limit)
    return client


async def ask(client: BudgetedTeacher) -> None:
    await client.ask(MESSAGES, Reply, "big", max_tokens=MAX_TOKENS)  # type: ignore[arg-type]


def test_a_call_that_would_pass_the_budget_is_not_sent() -> None:
    assert worst_case(MESSAGES, MAX_TOKENS) == WORST  # type: ignore[arg-type]
    script = Script([], default=completion('{"ok": true}'))
    with scripted_server(script) as url:
        client = teacher(url, limit=15 + 15 + WORST - 1)  # two calls fit; the third's worst case does not

        async def three() -> None:
            await ask(client)
            await ask(client)
            with pytest.raises(BudgetSpent, match=f"up to {WORST} tokens would pass it \\(30 spent"):
                await ask(client)

        asyncio.run(three())
    assert len(script.requests) == 2  # the third was never sent
    assert (client.budget.spent, client.budget.reserved) == (30, 0)


def test_calls_in_flight_count_against_the_budget() -> None:
    script = Script([], default=completion('{"ok": true}'))
    script.default.delay_s = 0.3  # type: ignore[union-attr]
    with scripted_server(script) as url:
        client = teacher(url, limit=WORST * 2 - 1)  # one worst case fits, two at once do not

        async def together() -> list[BaseException | None]:
            return await asyncio.gather(ask(client), ask(client), return_exceptions=True)

        outcomes = asyncio.run(together())
    assert sum(isinstance(o, BudgetSpent) for o in outcomes) == 1
    assert len(script.requests) == 1
    assert (client.budget.spent, client.budget.reserved) == (15, 0)


def test_no_limit_is_no_check() -> None:
    budget = TeacherBudget(None)
    budget.reserve(10**9)
    budget.settle(10**9, 7)
    assert (budget.spent, budget.reserved) == (7, 0)


def test_a_run_the_budget_stops_ends_cleanly_with_the_reason(
    engine: sa.Engine, tiny_student: TinyStudent, tmp_path: Path
) -> None:
    """Round 0 costs no teacher tokens (severity is scored by code, the anchor exam is already
    written); the first exam's worst case (4 questions of 400 tokens and the prompt) is over a
    1,000-token budget, so it is not asked."""
    anchor = [data.parse_example(SEVERITY, row, "anchor") for row in make_examples(4, seed=21)]
    data.write_jsonl(anchor_path(tmp_path / "fw", SEVERITY), anchor)
    with one_round(engine, tmp_path, tiny_student, []) as settings:
        budgeted = settings.model_copy(update={"flywheel_max_teacher_tokens": 1000})
        run = run_flywheel(budgeted, engine, Plan.from_settings(budgeted, Task.SEVERITY))
    assert run.status == RunStatus.DONE
    assert run.outcome is not None
    assert run.outcome.startswith(f"no round ran; {BASE} stays")
    assert "stopped in round 1: teacher-token budget: a call of up to" in run.outcome
    assert "(0 spent and 0 in flight of 1000)" in run.outcome  # nothing reached the teacher
    assert len(run.rounds) == 1  # round 0 only
    assert run.rounds[0]["anchor"] == 0.0  # the stored anchor, taken by the model in use (always wrong)
