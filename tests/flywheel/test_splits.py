"""What judges the model stays apart from what trains it: only hard labels become examples, a finding
re-posted with shifted lines keeps its first copy's split, and near-copies of held-out questions
never reach the curriculum."""

from __future__ import annotations

import logging
import random

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from bot.diff import DiffLine, LineKind
from bot.events import SignalKind
from bot.feedback.signals import record_signal
from bot.models import ExampleSource, ExampleSplit, Finding, Task, TrainingExample
from bot.review.pipeline import fingerprint, render_line
from flywheel import data
from flywheel.curriculum import build_curriculum, without_near_copies
from flywheel.data import Example
from flywheel.dedupe import NEAR, NearCopies, jaccard, shingles
from flywheel.spec import spec_for
from tests.feedback.test_labels import add_finding
from tests.support.db import session_scope

SEVERITY, EXPLANATION = spec_for(Task.SEVERITY), spec_for(Task.EXPLANATION)
CODE = [
    "def load(path):",
    "    handle = open(path)",
    "    rows = [line.split(',') for line in handle]",
    "    return {row[0]: row[1:] for row in rows}",
]
REVIEW = "The file handle is never closed; use a with block so it is released on error too."


def snippet(first: int, lines: list[str] = CODE) -> str:
    """Code as the review pipeline renders it, numbered from ``first``."""
    return "\n".join(
        render_line(DiffLine(LineKind.ADDED, None, first + at, text)) for at, text in enumerate(lines)
    )


def question(first: int, review: str = REVIEW) -> dict[str, str]:
    return {"code": snippet(first), "review": review}


# --- labels: only hard ones become examples (Found: the held-out labels were the model's own) -----


def test_a_liked_or_addressed_finding_is_no_example_of_any_task(engine: sa.Engine) -> None:
    liked, addressed, confirmed = (add_finding(engine) for _ in range(3))
    with session_scope(engine) as session:
        for finding_id in (liked, addressed, confirmed):
            session.get(Finding, finding_id).explanation = "Explained."  # type: ignore[union-attr]
        record_signal(session, liked, SignalKind.REACTION, "+1", "ana", "l1", role="maintainer")
        record_signal(session, addressed, SignalKind.ADDRESSED, "", "", "p1")
        record_signal(session, confirmed, SignalKind.SEVERITY, "major", "bo", "s1", role="developer")
    for spec in (SEVERITY, EXPLANATION):
        assert [e.meta["finding_id"] for e in data.feedback_examples(engine, spec)] == [confirmed]


# --- splits by line-number-blind group (Found: near-duplicates leaked across the split) ----------


def test_the_group_is_blind_to_line_numbers_and_diff_markers() -> None:
    shifted = Example(question(40), {"issue_type": "major"})
    first = Example(question(12), {"issue_type": "major"})
    assert first.key != shifted.key  # still two questions ...
    assert first.group == shifted.group  # ... of one group, on one side
    removed = {"code": snippet(12).replace(" +", " -"), "review": REVIEW}
    assert data.group_key(removed, {}) == first.group
    other = {"code": snippet(12, [*CODE[:3], "    return rows"]), "review": REVIEW}
    assert data.group_key(other, {}) != first.group
    # A reviewer's finding is grouped by its fingerprint, whatever its question's text.
    assert data.group_key({"code": "a"}, {"fingerprint": "f1"}) == data.group_key(
        {"code": "b"}, {"fingerprint": "f1"}
    )


def add_posted(engine: sa.Engine, first: int, lines: list[str] = CODE) -> int:
    """A finding of the pipeline's on ``lines[1]``, posted with its code at line ``first``, and
    corrected by a reviewer."""
    finding_id = add_finding(engine)
    target = DiffLine(LineKind.ADDED, None, first + 1, lines[1])
    with session_scope(engine) as session:
        finding = session.get(Finding, finding_id)
        assert finding is not None
        finding.line, finding.code, finding.review = first + 1, snippet(first, lines), REVIEW
        finding.fingerprint = fingerprint(finding.path, target, REVIEW)
        record_signal(session, finding_id, SignalKind.SEVERITY, "minor", "bo", f"s{first}", role="developer")
    return finding_id


def test_a_finding_reposted_with_shifted_lines_lands_on_its_first_copys_side(engine: sa.Engine) -> None:
    def store(heldout_share: float) -> int:
        with Session(engine) as session:
            found = data.feedback_examples(engine, SEVERITY)
            return data.store(session, SEVERITY, found, ExampleSource.FEEDBACK, heldout_share=heldout_share)

    add_posted(engine, 12)
    assert store(heldout_share=1.0) == 1  # every new group held out ...
    # A re-review: the same finding, lines shifted, a line around it edited by the push.
    add_posted(engine, 40, [*CODE[:3], "    return dict(row for row in rows)"])
    assert store(heldout_share=0.0) == 1  # ... and none now: a question of its own (same key rule) ...
    with Session(engine) as session:
        rows = session.exec(select(TrainingExample).order_by(TrainingExample.id)).all()
    first, second = (Example(r.question, r.answer, meta=r.meta) for r in rows)
    assert first.key != second.key
    assert first.group == second.group  # ... recognised as the same group ...
    assert [r.split for r in rows] == [ExampleSplit.HELDOUT, ExampleSplit.HELDOUT]  # ... on its side


# --- near-copies of held-out items stay out of the curriculum ------------------------------------


def test_a_near_copy_of_a_held_out_item_never_reaches_the_curriculum(
    caplog: pytest.LogCaptureFixture,
) -> None:
    held_out = Example(question(12), {"issue_type": "major"})
    near_copy = Example(question(57, REVIEW.replace("released", "freed")), {"issue_type": "minor"})
    teachers_copy = Example(question(3, REVIEW.replace("never", "not")), {"issue_type": "minor"}, 1)
    unrelated = Example(
        {"code": snippet(8, ["x = eval(user_input)"]), "review": "eval runs whatever the user sends."},
        {"issue_type": "critical"},
    )
    assert jaccard(shingles(near_copy.question), shingles(held_out.question)) >= NEAR
    with caplog.at_level(logging.INFO, logger="flywheel.curriculum"):
        curriculum = build_curriculum([near_copy, unrelated], [teachers_copy], {held_out.key}, [held_out])
    assert curriculum.examples == [unrelated]
    assert "kept 2 near-copies" in caplog.text
    assert without_near_copies([near_copy, unrelated], [held_out]) == ([unrelated], 1)


def test_the_index_finds_every_pair_a_brute_force_comparison_finds() -> None:
    """The prefix filter only skips comparisons, never a near-copy: checked against all pairs."""
    rng = random.Random(7)
    words = [f"w{n}" for n in range(60)]

    def text(length: int) -> list[str]:
        return [rng.choice(words) for _ in range(length)]

    def edited(original: list[str], edits: int) -> list[str]:
        copy = list(original)
        for _ in range(edits):
            copy[rng.randrange(len(copy))] = rng.choice(words)
        return copy

    references = [text(rng.randint(5, 40)) for _ in range(30)]
    probes = [edited(rng.choice(references), rng.randint(0, 3)) for _ in range(300)]
    index = NearCopies({"review": " ".join(r)} for r in references)
    found = 0
    for probe in probes:
        tokens = shingles({"review": " ".join(probe)})
        expected = any(jaccard(tokens, shingles({"review": " ".join(r)})) >= NEAR for r in references)
        assert index.near({"review": " ".join(probe)}) is expected
        found += expected
    assert 30 < found < 270  # both answers well represented
