"""Severity metrics that weigh harm, from (gold, predicted) pairs: a confusion matrix, recall per
class, macro-F1, quadratically weighted Cohen's kappa and the expected cost of the errors under a
cost matrix. Accuracy treats every error alike; a critical issue rated trivial is never posted as
one, while a trivial one rated critical only costs a reader a minute, and the cost says so.

A failed call (no answer) is a prediction of ``None``: a miss for recall, the costliest error of its
row for the cost, and left out of precision and kappa, which need a predicted class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bot.models import Severity

LABELS = [s.value for s in Severity]  # most severe first
Costs = dict[str, dict[str, float]]  # gold label -> predicted label -> cost

# Over-rating costs 0.5 a step (a reader's time); under-rating 1 a step, and far more when a
# critical or major issue falls to minor or trivial (below the line reviewers act on): it is missed.
DEFAULT_COSTS: Costs = {
    "critical": {"critical": 0.0, "major": 1.0, "minor": 5.0, "trivial": 8.0},
    "major": {"critical": 0.5, "major": 0.0, "minor": 3.0, "trivial": 5.0},
    "minor": {"critical": 1.0, "major": 0.5, "minor": 0.0, "trivial": 1.0},
    "trivial": {"critical": 1.5, "major": 1.0, "minor": 0.5, "trivial": 0.0},
}

Pair = tuple[str, str | None]  # (gold, predicted; None when the call failed)


def cost_matrix(overrides: Mapping[str, Mapping[str, float]]) -> Costs:
    """The default matrix with the given cells replaced (``REVIEWBOT_SEVERITY_COSTS``); raises
    ValueError on an unknown label, a negative cost or a cost for a right answer."""
    costs = {gold: dict(row) for gold, row in DEFAULT_COSTS.items()}
    for gold, row in overrides.items():
        for predicted, value in row.items():
            if gold not in costs or predicted not in costs:
                raise ValueError(f"unknown severity in cost {gold!r} -> {predicted!r}; labels: {LABELS}")
            if value < 0 or (gold == predicted and value != 0):
                raise ValueError(f"cost {gold} -> {predicted} must be >= 0, and 0 when right (got {value})")
            costs[gold][predicted] = float(value)
    return costs


def item_cost(costs: Costs, gold: str, predicted: str | None) -> float:
    row = costs[gold]
    return row[predicted] if predicted in row else max(row.values())


@dataclass(frozen=True)
class SeverityMetrics:
    size: int
    confusion: dict[str, dict[str, int]]  # gold -> predicted -> count (answered items)
    recall: dict[str, float | None]  # None: no item of that class
    macro_f1: float
    kappa: float | None  # quadratically weighted; None when undefined (one class only)
    cost: float  # mean cost per item

    def to_json(self) -> dict[str, Any]:
        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, 4)

        return {
            "size": self.size,
            "cost": rounded(self.cost),
            "macro_f1": rounded(self.macro_f1),
            "kappa": rounded(self.kappa),
            "recall": {label: rounded(value) for label, value in self.recall.items()},
            "confusion": self.confusion,
        }


def severity_metrics(pairs: Sequence[Pair], costs: Costs) -> SeverityMetrics:
    confusion = {gold: dict.fromkeys(LABELS, 0) for gold in LABELS}
    for gold, predicted in pairs:
        if predicted is not None:
            confusion[gold][predicted] += 1
    gold_counts = {label: sum(g == label for g, _ in pairs) for label in LABELS}
    recall = {
        label: confusion[label][label] / gold_counts[label] if gold_counts[label] else None
        for label in LABELS
    }
    cost = sum(item_cost(costs, g, p) for g, p in pairs) / len(pairs) if pairs else 0.0
    return SeverityMetrics(
        len(pairs), confusion, recall, _macro_f1(confusion, gold_counts), _kappa(confusion), cost
    )


def _macro_f1(confusion: dict[str, dict[str, int]], gold_counts: dict[str, int]) -> float:
    """Mean F1 over the classes that occur as gold or as prediction (scikit-learn's convention)."""
    scores = []
    for label in LABELS:
        predicted = sum(row[label] for row in confusion.values())
        if not predicted and not gold_counts[label]:
            continue
        right = confusion[label][label]
        scores.append(2 * right / (predicted + gold_counts[label]))  # F1 = 2TP / (2TP + FP + FN)
    return sum(scores) / len(scores) if scores else 0.0


def _kappa(confusion: dict[str, dict[str, int]]) -> float | None:
    """Cohen's kappa with quadratic weights on the severity ranks: a two-step error weighs four
    times a one-step one; 1 is perfect agreement, 0 what chance gives."""
    n = sum(sum(row.values()) for row in confusion.values())
    if not n:
        return None
    k = len(LABELS)
    rows = [sum(confusion[g].values()) for g in LABELS]
    cols = [sum(confusion[g][p] for g in LABELS) for p in LABELS]
    observed = expected = 0.0
    for i, gold in enumerate(LABELS):
        for j, predicted in enumerate(LABELS):
            weight = (i - j) ** 2 / (k - 1) ** 2
            observed += weight * confusion[gold][predicted]
            expected += weight * rows[i] * cols[j] / n
    return 1 - observed / expected if expected else None
