"""The flywheel's examples: read from reviewers' feedback and data files, kept in the database with
a split decided once (a held-out example stays held out), written as JSONL for each run.

An example is ``{"question": {...}, "answer": {...}, "difficulty": 1-5 (optional), "meta": {...}}``,
the format of ``reviewbot feedback export``. Its key is a digest of its question, so the same
question is one example however often it is seen. Its split is decided by its group
(``group_key``), blind to line numbers, so a finding re-posted with shifted lines lands on the same
side as its first copy.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError
from sqlmodel import Session, col, select

from bot.events import SignalKind
from bot.feedback.labels import HARD_LABEL_KINDS, LabelState, labelled_findings, severity_examples
from bot.llm import validation_problems
from bot.models import ExampleSource, ExampleSplit, Task, TrainingExample
from flywheel.dedupe import line_blind_text
from flywheel.spec import TaskSpec

# Reviewers' and models' texts reach the teacher cut to these lengths (and inside data blocks, see
# prompts.data_block), so no one text can fill its prompt or pass for its instructions.
FIELD_CHARS = 2000  # any one text: a question's code or review, an answer, a student's error
COMPLAINT_CODE_CHARS = 1500  # enough context for the teacher, without flooding its prompt
REASON_CHARS = 500  # a reviewer's /dismiss reason or reply
REASONS_SHOWN = 5  # per rejected finding, the latest


class DataError(ValueError):
    """An example that does not fit its task; the message says where and what is wrong."""


def question_key(question: Mapping[str, Any]) -> str:
    """Digest of a question, blind to differences in whitespace."""
    normal = {name: " ".join(str(value).split()) for name, value in sorted(question.items())}
    return hashlib.sha256(json.dumps(normal, ensure_ascii=False).encode()).hexdigest()[:32]


def group_key(question: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    """What decides an example's split: a reviewer's finding's fingerprint (its path, anchored code
    and review: stable when a push shifts lines), an analyzer's example's source file (a whole file
    on one side), else its question read blind to line numbers."""
    fingerprint, source_file = meta.get("fingerprint"), meta.get("source_file")
    if fingerprint:
        identity = f"finding {fingerprint}"
    elif source_file:
        identity = f"file {source_file}"
    else:
        identity = f"question {line_blind_text(question)}"
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Example:
    question: dict[str, Any]
    answer: dict[str, Any]
    difficulty: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return question_key(self.question)

    @property
    def group(self) -> str:
        return group_key(self.question, self.meta)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"question": self.question, "answer": self.answer}
        if self.difficulty is not None:
            out["difficulty"] = self.difficulty
        if self.meta:
            out["meta"] = self.meta
        return out


def parse_example(spec: TaskSpec, value: Any, where: str) -> Example:
    """Check one example against its task's question and answer types."""
    if not isinstance(value, dict):
        raise DataError(
            f"{where}: expected a JSON object with question and answer, got {type(value).__name__}"
        )
    parts = {}
    for part, model in (("question", spec.question_type), ("answer", spec.answer_type)):
        try:
            # JSON values (a severity as its string, not the enum): examples are stored and sent as JSON
            parts[part] = model.model_validate(value.get(part)).model_dump(mode="json")
        except ValidationError as exc:
            raise DataError(
                f"{where}: {part} is not a {spec.task} {part}: {validation_problems(exc)}"
            ) from None
    difficulty = value.get("difficulty")
    if difficulty is not None and (not isinstance(difficulty, int) or not 1 <= difficulty <= 5):
        raise DataError(f"{where}: difficulty must be an integer from 1 to 5, got {difficulty!r}")
    meta = value.get("meta") or {}
    if not isinstance(meta, dict):
        raise DataError(f"{where}: meta must be a JSON object")
    return Example(parts["question"], parts["answer"], difficulty, meta)


def read_jsonl(path: Path, spec: TaskSpec) -> list[Example]:
    """All examples of a JSONL file; the first bad line stops it with its line number."""
    examples = []
    with path.open(encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not JSON ({exc.msg})") from None
            examples.append(parse_example(spec, value, where))
    return examples


def write_jsonl(path: Path, examples: Iterable[Example]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as file:
        for example in examples:
            file.write(json.dumps(example.to_json(), ensure_ascii=False) + "\n")
            count += 1
    return count


def feedback_examples(engine: sa.Engine, spec: TaskSpec) -> list[Example]:
    """Labelled examples from reviewers' feedback: findings whose severity a ``/severity`` command
    confirmed or corrected (a 👍 or an addressing push judges no severity, nor endorses an explanation)."""
    findings = list(labelled_findings(engine, with_signal_of=HARD_LABEL_KINDS, include_audited=False))
    if spec.task == Task.SEVERITY:
        return [
            parse_example(spec, value, f"finding {value['meta']['finding_id']}")
            for value in severity_examples(findings)
        ]
    # An explicitly confirmed finding endorses its explanation too; a corrected one's argued a wrong severity.
    return [
        parse_example(
            spec,
            {
                "question": {
                    "code": i.finding.code,
                    "review": i.finding.review,
                    "issue_type": i.finding.severity,
                },
                "answer": {"explanation": i.finding.explanation},
                "meta": {
                    "finding_id": i.finding.id,
                    "fingerprint": i.finding.fingerprint,
                    "model_version": i.finding.model_version,
                    "settings_digest": i.finding.settings_digest,  # the repository's settings in force
                    "instructions": i.finding.instructions,
                },
            },
            f"finding {i.finding.id}",
        )
        for i in findings
        if i.label.state == LabelState.CONFIRMED and i.finding.explanation and i.finding.code
    ]


def clipped(value: Any, limit: int = FIELD_CHARS) -> Any:
    """``value`` with every string in it (in lists and objects too) cut to ``limit`` characters,
    visibly."""
    if isinstance(value, str):
        return value if len(value) <= limit else f"{value[:limit]} [… {len(value) - limit} characters cut]"
    if isinstance(value, dict):
        return {name: clipped(item, limit) for name, item in value.items()}
    if isinstance(value, list):
        return [clipped(item, limit) for item in value]
    return value


def complaints(engine: sa.Engine, limit: int = 20) -> list[dict[str, Any]]:
    """The latest findings reviewers dismissed or disputed, with their reasons: what the bot got
    wrong, for the teacher to aim questions at. Only the reasons of reviewers who may label are
    given, and every text is cut to length: the prompt still puts them in a data block."""
    rejected = [
        i
        for i in labelled_findings(
            engine,
            with_signal_of={SignalKind.DISMISS, SignalKind.SEVERITY, SignalKind.REACTION},
            include_audited=False,  # the blind audit set's findings never reach the teacher
        )
        if i.label.state in (LabelState.DISMISSED, LabelState.DISPUTED)
    ]
    return [
        {
            "code": clipped(i.finding.code, COMPLAINT_CODE_CHARS),
            "review": clipped(i.finding.review),
            "severity_given": i.finding.severity,
            "reviewers": i.label.state.value,
            "reasons": [
                clipped(s.value, REASON_CHARS)
                for s in i.trusted
                if s.kind in ("dismiss", "reply") and s.value
            ][-REASONS_SHOWN:],
        }
        for i in rejected[-limit:]
    ]


def split_for(key: str, heldout_share: float) -> ExampleSplit:
    """Decided by the (group) key alone, so an example lands in the same split on every machine and run."""
    return ExampleSplit.HELDOUT if int(key[:8], 16) / 0xFFFFFFFF < heldout_share else ExampleSplit.TRAIN


def store(
    session: Session,
    spec: TaskSpec,
    examples: Iterable[Example],
    source: ExampleSource,
    *,
    split: ExampleSplit | None = None,
    heldout_share: float = 0.2,
    run_id: int | None = None,
    round_number: int | None = None,
) -> int:
    """Add the examples not stored yet; returns how many were new. The split is ``split`` if given,
    train for the teacher's (it saw the answers), else that of the example's group when one of the
    group is stored (held out if any is), else by group key.
    A reviewer's later correction of a stored example replaces its answer."""
    rows = session.exec(select(TrainingExample).where(TrainingExample.task == spec.task.value)).all()
    existing = {row.key: row for row in rows}
    sides = _group_sides(rows)
    added = 0
    for example in examples:
        row = existing.get(example.key)
        if row is not None:
            # A reviewer's label replaces any other source's (an analyzer's, a seed file's), and
            # the row becomes the reviewer's; its split stays.
            if source == ExampleSource.FEEDBACK and (row.answer != example.answer or row.source != source):
                row.answer, row.meta, row.source = example.answer, example.meta, source
                session.add(row)
            continue
        chosen: str
        if split is not None:
            chosen = split
        elif source == ExampleSource.TEACHER:
            chosen = ExampleSplit.TRAIN
        else:
            chosen = sides.get(example.group) or split_for(example.group, heldout_share)
        sides.setdefault(example.group, chosen)
        row = TrainingExample(
            task=spec.task.value,
            key=example.key,
            split=chosen,
            source=source,
            question=example.question,
            answer=example.answer,
            meta=example.meta,
            difficulty=example.difficulty,
            run_id=run_id,
            round=round_number,
        )
        session.add(row)
        existing[example.key] = row
        added += 1
    session.commit()
    return added


def _group_sides(rows: Iterable[TrainingExample]) -> dict[str, str]:
    """The split of each stored group: held out if any of its examples is (rows stored before splits
    went by group may sit on both sides)."""
    sides: dict[str, str] = {}
    for row in rows:
        group = group_key(row.question, row.meta)
        if sides.get(group) != ExampleSplit.HELDOUT:
            sides[group] = row.split
    return sides


@dataclass(frozen=True)
class TaskData:
    train: list[Example]
    heldout: list[Example]

    @property
    def keys(self) -> set[str]:
        return {e.key for e in self.train} | {e.key for e in self.heldout}

    @property
    def reviewers(self) -> list[Example]:
        """The training examples not written by the teacher: reviewers' labels and seed files, the
        only ones shown to the teacher as real data."""
        return [e for e in self.train if not is_synthetic(e)]


def is_synthetic(example: Example) -> bool:
    """Written by the teacher (``meta.source``, as ``task_data`` reads it)."""
    return example.meta.get("source") == ExampleSource.TEACHER


def synthetic_runs(session: Session, spec: TaskSpec, count: int) -> set[int]:
    """The ids of the latest ``count`` runs that stored teacher examples of the task: theirs are
    trained on, older runs' retire (they stay in the table)."""
    runs = session.exec(
        select(TrainingExample.run_id)
        .where(TrainingExample.task == spec.task.value, TrainingExample.source == ExampleSource.TEACHER)
        .where(col(TrainingExample.run_id).is_not(None))
        .distinct()
        .order_by(col(TrainingExample.run_id).desc())
        .limit(count)
    ).all()
    return {run for run in runs if run is not None}


def task_data(session: Session, spec: TaskSpec) -> TaskData:
    rows = session.exec(
        select(TrainingExample)
        .where(TrainingExample.task == spec.task.value)
        .order_by(col(TrainingExample.id))
    ).all()
    examples = {
        split: [
            Example(r.question, r.answer, r.difficulty, {**r.meta, "source": r.source, "run_id": r.run_id})
            for r in rows
            if r.split == split
        ]
        for split in ExampleSplit
    }
    return TaskData(examples[ExampleSplit.TRAIN], examples[ExampleSplit.HELDOUT])
