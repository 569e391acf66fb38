"""Step 4: the curriculum — the training set grown by the teacher's new examples, one example per
question, the held-out set and near-copies of what judges the model kept out, ordered easy to hard
where the teacher gave a difficulty."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from flywheel.data import Example
from flywheel.dedupe import NearCopies

log = logging.getLogger(__name__)

UNRATED = 3  # an example without a difficulty (reviewers' data) sits in the middle


def build_curriculum(
    existing: Iterable[Example],
    new: Iterable[Example],
    heldout_keys: set[str],
    judges: Iterable[Example] = (),
) -> list[Example]:
    """Existing examples win over new ones with the same question: a reviewer's label outranks the
    teacher's. An example too like one of ``judges`` (the held-out and golden examples; see
    ``flywheel.dedupe``) stays out too, and the log says how many did."""
    merged, near = without_near_copies(_deduped(existing, new, heldout_keys), judges)
    if near:
        log.info("kept %d near-copies of held-out or golden examples out of the curriculum", near)
    return sorted(merged, key=lambda e: e.difficulty if e.difficulty is not None else UNRATED)


def _deduped(existing: Iterable[Example], new: Iterable[Example], heldout_keys: set[str]) -> list[Example]:
    seen = set(heldout_keys)
    merged = []
    for example in [*existing, *new]:
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
