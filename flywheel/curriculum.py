"""Step 4: the curriculum — reviewers' examples and the teacher's, one example per question, with
the held-out set and near-copies of what judges the model kept out, and the teacher's share held
down: its examples from runs older than the latest few retire, the newest are kept up to a share of
the curriculum, and each reviewer's correction of the model's severity is trained on more than once.
Training shuffles the curriculum, so its order means nothing."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from bot.feedback.labels import LabelState
from bot.models import ExampleSource
from flywheel.data import Example, is_synthetic
from flywheel.dedupe import NearCopies

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Mix:
    """How much of the curriculum the teacher's examples may be, and how reviewers' corrections weigh."""

    max_synthetic_share: float = 1.0  # of the curriculum's rows, copies included; 1: no cap
    correction_weight: int = 1  # rows per reviewer's correction
    live_runs: Collection[int] | None = None  # runs whose teacher examples are trained on; None: all


@dataclass(frozen=True)
class Curriculum:
    examples: list[Example]
    retired: int  # the teacher's examples of older runs, left out
    capped: int  # the teacher's examples beyond the share, left out (the oldest go first)
    upsampled: int  # extra rows of reviewers' corrections
    near: int  # near-copies of held-out or golden examples, left out

    @property
    def synthetic(self) -> int:
        return sum(map(is_synthetic, self.examples))

    def to_json(self) -> dict[str, int]:
        return {
            "size": len(self.examples),
            "synthetic": self.synthetic,
            "retired": self.retired,
            "capped": self.capped,
            "upsampled": self.upsampled,
            "near_copies": self.near,
        }


def build_curriculum(
    existing: Iterable[Example],
    new: Iterable[Example],
    heldout_keys: set[str],
    judges: Iterable[Example] = (),
    mix: Mix = Mix(),
) -> Curriculum:
    """``existing`` is the stored training set (oldest first, as ``data.task_data`` reads it),
    ``new`` the teacher's examples of this round. Existing examples win over new ones with the same
    question: a reviewer's label outranks the teacher's. An example too like one of ``judges`` (the
    held-out and golden examples; see ``flywheel.dedupe``) stays out too."""
    fresh = [_as_synthetic(example) for example in new]
    stored = list(existing)
    live = [e for e in stored if not is_synthetic(e) or _is_live(e, mix.live_runs)]
    merged, near = without_near_copies(_deduped([*live, *fresh], heldout_keys), judges)
    if near:
        log.info("kept %d near-copies of held-out or golden examples out of the curriculum", near)
    reviewers = [row for e in merged if not is_synthetic(e) for row in [e] * _weight(e, mix)]
    synthetic = [e for e in merged if is_synthetic(e)]  # oldest first
    kept = _newest(synthetic, len(reviewers), mix.max_synthetic_share)
    unique_reviewers = len(merged) - len(synthetic)
    return Curriculum(
        [*reviewers, *kept],
        retired=len(stored) - len(live),
        capped=len(synthetic) - len(kept),
        upsampled=len(reviewers) - unique_reviewers,
        near=near,
    )


def _as_synthetic(example: Example) -> Example:
    """A new teacher example, marked as the teacher's whatever meta its writer put on it."""
    return Example(
        example.question,
        example.answer,
        example.difficulty,
        {**example.meta, "source": ExampleSource.TEACHER},
    )


def _is_live(example: Example, live_runs: Collection[int] | None) -> bool:
    return live_runs is None or example.meta.get("run_id") in live_runs


def _weight(example: Example, mix: Mix) -> int:
    """A reviewer's ``/severity`` correction (a label that differs from the model's) counts
    ``correction_weight`` times: it is where the model was wrong, and the rarest label there is."""
    corrected = (
        example.meta.get("source") == ExampleSource.FEEDBACK
        and example.meta.get("label_state") == LabelState.CORRECTED
    )
    return mix.correction_weight if corrected else 1


def _newest(synthetic: list[Example], reviewers: int, share: float) -> list[Example]:
    """The newest of the teacher's examples (``synthetic`` is oldest first) that keep their share of
    a curriculum with ``reviewers`` rows of reviewers' examples at most ``share``: the newest were
    aimed at the student's latest weaknesses."""
    if share >= 1:
        return synthetic
    room = int(reviewers * share / (1 - share) + 1e-9)  # s / (r + s) <= share
    return synthetic[len(synthetic) - room :] if room < len(synthetic) else synthetic


def _deduped(examples: Iterable[Example], heldout_keys: set[str]) -> list[Example]:
    seen = set(heldout_keys)
    merged = []
    for example in examples:
        if example.key in seen:
            continue
        seen.add(example.key)
        merged.append(example)
    return merged


def without_near_copies(examples: list[Example], judges: Iterable[Example]) -> tuple[list[Example], int]:
    """``examples`` without the near-copies of ``judges``, and how many those were."""
    index = NearCopies(judge.question for judge in judges)
    kept = [example for example in examples if not index.near(example.question)]
    return kept, len(examples) - len(kept)
