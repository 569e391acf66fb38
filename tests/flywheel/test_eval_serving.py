"""Serving for evaluation: with ``REVIEWBOT_EVAL_BASE_URL`` a run loads and scores its candidates on
that vLLM while the production one only receives the winner at promotion; at the end of a run the
candidates not promoted are unloaded from the server that evaluated them, and a failed unload does
not change the run's outcome."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import HttpUrl
from sqlmodel import Session

from bot.models import ModelStatus, RunStatus, Task
from bot.serving import SERVED
from flywheel import golden, registry
from flywheel.cycle import Plan, run_flywheel
from tests.flywheel.test_flywheel import Student, golden_examples, one_round
from tests.support.scripted_server import Reply, Script, scripted_server
from tests.support.tiny_model import TinyStudent


class Evaluator(Student):
    """The student double of ``test_flywheel`` (every adapter right, the base model wrong), which
    also answers ``unload_lora_adapter`` with ``unload_status``."""

    def __init__(self, unload_status: int = 200) -> None:
        super().__init__([])
        self.unload_status = unload_status

    def next_reply(self, request: dict[str, Any]) -> Reply:
        if str(request["path"]).endswith("/unload_lora_adapter"):
            Script.next_reply(self, request)  # recorded
            return Reply(self.unload_status, {})
        return super().next_reply(request)


def posted(script: Script, endpoint: str) -> list[str]:
    return [str(r["lora_name"]) for r in script.requests if str(r["path"]).endswith(endpoint)]


def test_candidates_are_evaluated_on_the_eval_server_and_the_winner_loaded_into_production(
    engine: sa.Engine, tiny_student: TinyStudent, tmp_path: Path
) -> None:
    with Session(engine) as session:
        golden.add(session, Task.SEVERITY, golden_examples(4), "golden.jsonl")
    evaluator, production = Evaluator(), Script([], default=Reply(200, {}))
    with (
        one_round(engine, tmp_path, tiny_student, [], evaluator) as settings,
        scripted_server(production) as url,
    ):
        # one_round's student double is the evaluation server; production is another one
        settings = settings.model_copy(
            update={"eval_base_url": settings.student_base_url, "student_base_url": HttpUrl(url)}
        )
        run = run_flywheel(settings, engine, Plan.from_settings(settings, Task.SEVERITY))
    assert run.outcome is not None
    assert run.outcome.startswith("promoted severity-v1"), run.outcome
    assert [r["path"] for r in production.requests] == ["/v1/load_lora_adapter"]  # no evaluation there
    assert posted(production, "/load_lora_adapter") == ["severity-v1"]
    assert posted(evaluator, "/load_lora_adapter") == ["severity-v1"]
    assert any("messages" in r for r in evaluator.requests)
    assert posted(evaluator, "/unload_lora_adapter") == []  # promoted: reviews use it
    with Session(engine) as session:
        assert registry.find(session, "severity-v1").status in SERVED  # active, or a canary first


@pytest.mark.parametrize("unload_status", [200, 500])
def test_a_candidate_not_promoted_is_unloaded_and_a_failed_unload_is_not_fatal(
    engine: sa.Engine, tiny_student: TinyStudent, tmp_path: Path, unload_status: int
) -> None:
    evaluator = Evaluator(unload_status)
    with one_round(engine, tmp_path, tiny_student, [], evaluator) as settings:  # no golden set: no promotion
        run = run_flywheel(settings, engine, Plan.from_settings(settings, Task.SEVERITY))
    assert run.status == RunStatus.DONE
    assert run.outcome is not None
    assert "severity-v1 is registered but not promoted" in run.outcome
    assert posted(evaluator, "/unload_lora_adapter") == ["severity-v1"]
    unloaded = max(
        i for i, r in enumerate(evaluator.requests) if str(r["path"]).endswith("/unload_lora_adapter")
    )
    assert all("messages" not in r for r in evaluator.requests[unloaded:])  # after its last answer
    with Session(engine) as session:
        assert registry.find(session, "severity-v1").status == ModelStatus.CANDIDATE
