"""The harm-weighted severity metrics and the statistical promotion gate, on hand-made and simulated
paired answers (no model server: the gate reads scores, whatever answered)."""

from __future__ import annotations

import random
from math import comb

import pytest

from flywheel.data import Example
from flywheel.evaluate import Score, accuracy
from flywheel.gate import GoldenScores, Rule, judge, mcnemar_p
from flywheel.metrics import DEFAULT_COSTS, LABELS, cost_matrix, severity_metrics
from flywheel.take import Attempt

RULE = Rule(margin=0.02, alpha=0.05, min_items=200)


def items(golds: list[str]) -> list[Example]:
    return [
        Example({"code": f"x = {i}", "review": f"Item {i}."}, {"issue_type": g}) for i, g in enumerate(golds)
    ]


def answered(examples: list[Example], predicted: list[str]) -> Score:
    return accuracy(
        [Attempt(e, {"issue_type": p}) for e, p in zip(examples, predicted, strict=True)], DEFAULT_COSTS
    )


def test_metrics_match_hand_computed_values() -> None:
    pairs = [("critical", "critical"), ("critical", "major"), ("major", "major"), ("minor", "trivial"),
             ("trivial", "trivial"), ("minor", None)]  # fmt: skip
    m = severity_metrics(pairs, DEFAULT_COSTS)
    assert m.confusion["critical"] == {"critical": 1, "major": 1, "minor": 0, "trivial": 0}
    assert m.recall == {"critical": 0.5, "major": 1.0, "minor": 0.0, "trivial": 1.0}
    # F1: critical 2·1/(1+2)=2/3, major 2·1/(2+1)=2/3, minor 0, trivial 2·1/(2+1)=2/3
    assert m.macro_f1 == pytest.approx((2 / 3 * 3) / 4)
    # Quadratic kappa over the 5 answered pairs, ranks critical 0 … trivial 3, weights (i-j)²/9:
    # observed = (1·1 + 1·1)/9 = 2/9; rows (2,1,1,1), columns (1,2,0,2) → expected Σ w·r·c/n = 74/45.
    assert m.kappa == pytest.approx(1 - (2 / 9) / (74 / 45))
    # Costs: critical→major 1, minor→trivial 1, a failed call costs its row's worst (minor: 1).
    assert m.cost == pytest.approx(3 / 6)


def test_the_default_costs_weigh_under_rating_most() -> None:
    for gold in LABELS:
        for i, predicted in enumerate(LABELS):
            mirror = LABELS[LABELS.index(gold) * 2 - i] if 0 <= LABELS.index(gold) * 2 - i < 4 else None
            if mirror and i > LABELS.index(gold):  # under-rated by k steps vs over-rated by k
                assert DEFAULT_COSTS[gold][predicted] > DEFAULT_COSTS[gold][mirror]
    worst = max((c, g, p) for g, row in DEFAULT_COSTS.items() for p, c in row.items())
    assert worst[1:] == ("critical", "trivial")
    assert cost_matrix({"critical": {"trivial": 20}})["critical"]["trivial"] == 20
    with pytest.raises(ValueError, match="unknown severity"):
        cost_matrix({"blocker": {"minor": 1}})
    with pytest.raises(ValueError, match="0 when right"):
        cost_matrix({"minor": {"minor": 1}})


def test_mcnemar_is_the_binomial_tail() -> None:
    assert mcnemar_p(5, 0) == pytest.approx(1 / 32)
    assert mcnemar_p(6, 2) == pytest.approx(sum(comb(8, k) for k in range(6, 9)) / 256)
    assert mcnemar_p(0, 0) == 1.0


def paired(rng: random.Random, n: int, disagree: float, candidate_wins: float) -> tuple[Score, Score]:
    """Two models on ``n`` items, right on the same items except a share ``disagree`` where exactly
    one is right (the candidate with chance ``candidate_wins``); a wrong answer is one step off."""
    golds = [rng.choice(LABELS) for _ in range(n)]
    examples = items(golds)
    wrong = {g: LABELS[(LABELS.index(g) + rng.choice((1, -1))) % 4] for g in LABELS}
    mine, theirs = [], []
    for g in golds:
        both = rng.random() < 0.7  # right together on most items
        if rng.random() < disagree:
            win = rng.random() < candidate_wins
            mine.append(g if win else wrong[g])
            theirs.append(wrong[g] if win else g)
        else:
            mine.append(g if both else wrong[g])
            theirs.append(g if both else wrong[g])
    return answered(examples, mine), answered(examples, theirs)


def test_a_candidate_no_better_passes_no_more_often_than_alpha() -> None:
    rng, runs = random.Random(19), 200
    passes = sum(
        judge(("c", m), ("u", t), RULE, None).passed
        for m, t in (paired(rng, 200, 0.1, 0.5) for _ in range(runs))
    )
    # Binomial(200, 0.05): mean 10, sd ≈ 3.1; three sd above is 19.
    assert passes <= runs * RULE.alpha + 3 * (runs * RULE.alpha * (1 - RULE.alpha)) ** 0.5


def test_a_truly_better_candidate_with_enough_items_passes() -> None:
    rng = random.Random(2)
    passes = sum(
        judge(("c", m), ("u", t), RULE, None).passed
        for m, t in (paired(rng, 600, 0.15, 0.9) for _ in range(20))
    )
    assert passes >= 18


def test_below_the_minimum_size_nothing_is_promoted() -> None:
    mine, theirs = paired(random.Random(3), 150, 0.5, 1.0)  # far better, on too few items
    verdict = judge(("c", mine), ("u", theirs), RULE, None)
    assert not verdict.passed
    assert verdict.reason.startswith("only 150 test items, and automatic promotion needs 200")
    assert judge(("c", mine), ("u", theirs), Rule(0.02, 0.05, 150), None).passed


def test_under_rating_a_critical_issue_loses_to_the_mirrored_over_rating() -> None:
    # Same accuracy: one model rates 30 critical issues trivial, the other 30 trivial ones critical.
    golds = ["critical"] * 130 + ["trivial"] * 130
    examples = items(golds)
    under = answered(examples, ["trivial"] * 30 + ["critical"] * 100 + ["trivial"] * 130)
    over = answered(examples, ["critical"] * 130 + ["critical"] * 30 + ["trivial"] * 100)
    assert under.value == over.value
    assert judge(("over", over), ("under", under), RULE, None).passed
    refused = judge(("under", under), ("over", over), RULE, None)
    assert not refused.passed
    assert refused.figures["gain"] == pytest.approx(30 * (1.5 - 8) / 260, abs=1e-4)
    assert refused.figures["mcnemar_p"] > 0.5  # by accuracy alone the two are alike


def test_critical_recall_and_the_golden_set_guard_promotion() -> None:
    golds = ["critical"] * 20 + ["minor"] * 200
    examples = items(golds)
    # Much cheaper on the minor issues, but misses two more critical ones than the model in use.
    mine = answered(examples, ["critical"] * 18 + ["major"] * 2 + ["minor"] * 200)
    theirs = answered(examples, ["critical"] * 20 + ["trivial"] * 100 + ["minor"] * 100)
    refused = judge(("c", mine), ("u", theirs), RULE, None)
    assert refused.reason.startswith("c loses recall on critical (1.00 -> 0.90)")
    fair = answered(examples, ["critical"] * 20 + ["minor"] * 200)
    assert judge(("c", fair), ("u", theirs), RULE, GoldenScores(1, 0.79, 0.80)).passed  # within the margin
    worse = judge(("c", fair), ("u", theirs), RULE, GoldenScores(1, 0.70, 0.80))
    assert worse.reason == (
        "c scores 0.700 on golden set v1; u scores 0.800, and promotion needs 0.780 "
        "(a regression of margin 0.02 at most)"
    )
