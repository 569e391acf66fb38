"""The anchor exam (flywheel.anchor): the task's first exam is kept and taken again by the model in
use and every adapter, in every run, so its score is a trend; its questions are never asked again."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from bot.models import Task
from flywheel import data
from flywheel.anchor import anchor_path, keep_anchor, read_anchor
from flywheel.cycle import Plan, run_flywheel
from tests.flywheel.test_flywheel import SEVERITY, one_round
from tests.support.severity_task import make_examples
from tests.support.tiny_model import TinyStudent


def test_the_first_exam_is_kept_and_later_ones_are_not(tmp_path: Path) -> None:
    first = [data.parse_example(SEVERITY, row, "t") for row in make_examples(3, seed=1)]
    later = [data.parse_example(SEVERITY, row, "t") for row in make_examples(3, seed=2)]
    assert read_anchor(tmp_path, SEVERITY) == []
    assert keep_anchor(tmp_path, SEVERITY, first) == first
    assert keep_anchor(tmp_path, SEVERITY, later) == first
    assert read_anchor(tmp_path, SEVERITY) == first
    assert anchor_path(tmp_path, SEVERITY) == tmp_path / "anchors" / "severity.jsonl"


def test_every_round_takes_the_anchor_the_first_exam_became(
    engine: sa.Engine, tiny_student: TinyStudent, tmp_path: Path
) -> None:
    """(A later run's round 0 takes the stored anchor: tests/flywheel/test_budget.py.)"""
    with one_round(engine, tmp_path, tiny_student, []) as settings:
        two = settings.model_copy(update={"flywheel_max_rounds": 2})
        run = run_flywheel(two, engine, Plan.from_settings(two, Task.SEVERITY))
    anchor = read_anchor(tmp_path / "fw", SEVERITY)
    rounds = tmp_path / "fw" / "runs" / str(run.id)
    assert anchor == data.read_jsonl(rounds / "round-1" / "exam.jsonl", SEVERITY)  # the task's first exam
    # The Student double: the model in use is wrong on every question, each adapter right.
    assert [r["anchor"] for r in run.rounds] == [None, 1.0, 1.0]  # none before the first exam
    later = data.read_jsonl(rounds / "round-2" / "exam.jsonl", SEVERITY)
    assert later
    assert not {e.key for e in anchor} & {e.key for e in later}  # never asked again
