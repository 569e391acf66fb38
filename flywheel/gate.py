"""The promotion gate: a paired comparison of a candidate with the model in use on the same items.

Each item has a loss per model — for severity, the cost of its error under the cost matrix
(``metrics``; 0 when right), else one minus the verdict. The gain is the model in use's mean loss
minus the candidate's; a paired bootstrap of it gives a one-sided lower confidence bound at level
``1 - alpha``, and a candidate is promoted only when that bound is above the margin. Also required:
at least ``min_items`` items (below it nothing is promoted automatically: a few dozen items cannot
tell a 2-point gain from noise), no recall drop on critical or major beyond ``RECALL_TOLERANCE``,
and no regression beyond the margin on the admin's golden set. The exact McNemar p-value (right vs
wrong, on the items where exactly one model is right) is reported beside it, for an accuracy view.

Explanations have no right answer: the judge compares the candidate's with the model in use's on
each item, in both orders (``evaluate.against_model``). There the bound is replaced by a one-sided
sign test on the decided pairs (p below alpha), a win rate of those above 0.5 + margin, and at
least ``MIN_DECIDED`` decided pairs; the item minimum and the golden check stay.

A run's held-out set is split here too, by example key: the dev part scores every round (choosing
the best one and stopping early); the test part is used once, at the end, by this gate.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bot.config import Settings
from flywheel.data import Example
from flywheel.evaluate import Duel, Score, sign_test_p

RECALL_TOLERANCE = 0.05  # the recall on critical or major a candidate may lose: one miss in 20
GUARDED = ("critical", "major")  # the classes whose misses are not posted as what they are
RESAMPLES = 2000
# Explanations: the decided pairs (won or lost in both orders) a promotion needs. Below 20 the win
# rate's 95% interval is wider than ±0.2, too coarse to read a margin from, however small p is.
MIN_DECIDED = 20


@dataclass(frozen=True)
class Rule:
    margin: float  # in loss units: cost per item for severity (1 = one one-step under-rating)
    alpha: float
    min_items: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Rule:
        return cls(settings.promotion_margin, settings.promotion_alpha, settings.promotion_min_items)


@dataclass(frozen=True)
class GoldenScores:
    """Both models' accuracy on one version of the golden set."""

    version: int
    candidate: float
    current: float


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str  # one line, for the run's outcome and the CLI
    figures: dict[str, Any]  # what the decision was made from, kept on the candidate's metrics


def split_heldout(examples: Sequence[Example]) -> tuple[list[Example], list[Example]]:
    """(dev, test), half each by a digest of the example's key (salted: the train/held-out split
    reads the key's own first digits), so an example stays in its part from run to run."""
    dev: list[Example] = []
    test: list[Example] = []
    for example in examples:
        digest = hashlib.sha256(f"test-split:{example.key}".encode()).digest()
        (test if digest[0] & 1 else dev).append(example)
    return dev, test


def mcnemar_p(candidate_only: int, current_only: int) -> float:
    """One-sided exact McNemar: the chance of at least ``candidate_only`` wins of the discordant
    items if either model were as likely to be the right one (a sign test on those items)."""
    return sign_test_p(candidate_only, current_only)


def lower_bound(gains: Sequence[float], alpha: float, seed: int = 0) -> float:
    """The ``alpha`` quantile of the mean gain over paired bootstrap resamples of the items."""
    rng, n = random.Random(seed), len(gains)
    means = sorted(sum(rng.choices(gains, k=n)) / n for _ in range(RESAMPLES))
    return means[int(alpha * RESAMPLES)]


def judge(
    candidate: tuple[str, Score],
    current: tuple[str, Score],
    rule: Rule,
    golden: GoldenScores | None,
) -> Verdict:
    """Whether ``candidate`` (name, score) may replace ``current`` (name, score on the same items)."""
    (name, mine), (other, theirs) = candidate, current
    if sorted(mine.keys) != sorted(theirs.keys):
        raise ValueError("the gate compares two models on the same items")
    figures = _figures(mine, theirs, rule.alpha)
    n, bound, gain = figures["items"], figures["gain_lower_bound"], figures["gain"]
    said = (
        f"{name} gains {gain:.3f} in mean {figures['loss']} per item over {other} on {n} test items "
        f"(lower {1 - rule.alpha:.0%} bound {bound:.3f}, margin {rule.margin:g}; "
        f"McNemar p={figures['mcnemar_p']:.3f})"
    )
    if mine.duel is not None:  # explanations: judged pairwise against the model in use
        figures["duel"] = mine.duel.to_json()
        said += (
            f"; pairs won {mine.duel.wins}, lost {mine.duel.losses}, tied {mine.duel.ties} "
            f"(win rate {mine.duel.win_rate:.3f} of the decided, sign test p={mine.duel.p_value:.3f})"
        )
    if n < rule.min_items:
        return Verdict(
            False,
            f"only {n} test items, and automatic promotion needs {rule.min_items} "
            f"(REVIEWBOT_PROMOTION_MIN_ITEMS): nothing is promoted automatically; {said}",
            figures,
        )
    if mine.duel is not None:
        refused = _pairwise_refusal(mine.duel, rule)
        if refused:
            return Verdict(False, f"{refused}: {said}", figures)
    elif bound <= rule.margin:
        return Verdict(False, f"not better beyond chance: {said}", figures)
    dropped = _recall_drops(mine, theirs)
    if dropped:
        return Verdict(False, f"{name} loses recall on {dropped}; {said}", figures)
    if golden is not None and golden.candidate < golden.current - rule.margin:
        return Verdict(
            False,
            f"{name} scores {golden.candidate:.3f} on golden set v{golden.version}; {other} scores "
            f"{golden.current:.3f}, and promotion needs {golden.current - rule.margin:.3f} "
            f"(a regression of margin {rule.margin:g} at most)",
            figures,
        )
    if golden is not None:
        said += f"; golden set v{golden.version} {golden.candidate:.3f}, was {golden.current:.3f}"
    return Verdict(True, said, figures)


def _figures(mine: Score, theirs: Score, alpha: float) -> dict[str, Any]:
    theirs_by_key = dict(zip(theirs.keys, zip(theirs.losses, theirs.verdicts, strict=True), strict=True))
    gains, candidate_only, current_only = [], 0, 0
    for key, loss, verdict in zip(mine.keys, mine.losses, mine.verdicts, strict=True):
        their_loss, their_verdict = theirs_by_key[key]
        gains.append(their_loss - loss)
        candidate_only += verdict > their_verdict
        current_only += their_verdict > verdict
    return {
        "items": len(gains),
        "loss": "cost" if mine.severity else "loss",
        "gain": round(sum(gains) / len(gains), 4) if gains else 0.0,
        "gain_lower_bound": round(lower_bound(gains, alpha), 4) if gains else 0.0,
        "alpha": alpha,
        "candidate_only_right": candidate_only,
        "current_only_right": current_only,
        "mcnemar_p": round(mcnemar_p(candidate_only, current_only), 4),
        "candidate": {
            "score": mine.value,
            **({"severity": mine.severity.to_json()} if mine.severity else {}),
        },
        "current": {
            "score": theirs.value,
            **({"severity": theirs.severity.to_json()} if theirs.severity else {}),
        },
    }


def _pairwise_refusal(duel: Duel, rule: Rule) -> str:
    """Why a candidate's pairwise comparison with the model in use does not promote it, or ""."""
    if duel.decided < MIN_DECIDED:
        return f"only {duel.decided} pairs decided (in both orders alike), and promotion needs {MIN_DECIDED}"
    if duel.p_value >= rule.alpha:
        return f"not better beyond chance (sign test p={duel.p_value:.3f}, alpha {rule.alpha:g})"
    if duel.win_rate <= 0.5 + rule.margin:
        return f"a win rate of {duel.win_rate:.3f} is not above 0.5 + margin {rule.margin:g}"
    return ""


def _recall_drops(mine: Score, theirs: Score) -> str:
    """The guarded classes where the candidate's recall falls more than the tolerance, said."""
    if mine.severity is None or theirs.severity is None:
        return ""
    drops = []
    for label in GUARDED:
        new, old = mine.severity.recall[label], theirs.severity.recall[label]
        if new is not None and old is not None and new < old - RECALL_TOLERANCE:
            drops.append(f"{label} ({old:.2f} -> {new:.2f})")
    return ", ".join(drops)
