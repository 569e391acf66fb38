"""Step 4: the curriculum — the training set grown by the teacher's new examples, one example per
question, the held-out set kept out, ordered easy to hard where the teacher gave a difficulty."""

from __future__ import annotations

from collections.abc import Iterable

from flywheel.data import Example

UNRATED = 3  # an example without a difficulty (reviewers' data) sits in the middle


def build_curriculum(
    existing: Iterable[Example], new: Iterable[Example], heldout_keys: set[str]
) -> list[Example]:
    """Existing examples win over new ones with the same question: a reviewer's label outranks the
    teacher's."""
    seen = set(heldout_keys)
    merged = []
    for example in [*existing, *new]:
        if example.key in seen:
            continue
        seen.add(example.key)
        merged.append(example)
    return sorted(merged, key=lambda e: e.difficulty if e.difficulty is not None else UNRATED)
