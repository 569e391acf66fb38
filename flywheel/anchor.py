"""The anchor exam: one fixed set of exam questions per task, kept in
``FLYWHEEL_DIR/anchors/TASK.jsonl``, that the model in use and every round's adapter take in every
run. A round's own exam is aimed at the student's latest weaknesses, so its score moves with the
questions; the anchor's moves with the student only: it is the trend. The first exam the teacher
writes for the task becomes the anchor (no extra teacher call); delete the file to start a new
trend. Its questions are never asked in a round's exam again nor trained on (the run keeps their
keys out like the golden set's)."""

from __future__ import annotations

from pathlib import Path

from flywheel import data
from flywheel.data import Example
from flywheel.spec import TaskSpec


def anchor_path(flywheel_dir: Path, spec: TaskSpec) -> Path:
    return flywheel_dir / "anchors" / f"{spec.task.value}.jsonl"


def read_anchor(flywheel_dir: Path, spec: TaskSpec) -> list[Example]:
    """The task's anchor questions; none before its first exam."""
    path = anchor_path(flywheel_dir, spec)
    return data.read_jsonl(path, spec) if path.is_file() else []


def keep_anchor(flywheel_dir: Path, spec: TaskSpec, exam: list[Example]) -> list[Example]:
    """Keep ``exam`` as the task's anchor, unless it has one (then that one)."""
    kept = read_anchor(flywheel_dir, spec)
    if kept:
        return kept
    data.write_jsonl(anchor_path(flywheel_dir, spec), exam)
    return exam
