"""Two proportions compared one-sidedly: is the first group's rate of a bad outcome higher than the
second's beyond chance, and how much higher could it be. The canary's decisions (``bot.feedback.canary``)
are made of these."""

from __future__ import annotations

import math
from statistics import NormalDist

_NORMAL = NormalDist()


def worse_p_value(bad_a: int, n_a: int, bad_b: int, n_b: int) -> float:
    """One-sided p-value of "A's bad rate is higher than B's": the two-proportion z-test with the
    pooled rate under the null hypothesis of equal rates. 1.0 when either group is empty or the pooled
    rate is 0 or 1 (nothing can differ)."""
    if n_a == 0 or n_b == 0:
        return 1.0
    pooled = (bad_a + bad_b) / (n_a + n_b)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if spread == 0:
        return 1.0
    z = (bad_a / n_a - bad_b / n_b) / spread
    return 1 - _NORMAL.cdf(z)


def worse_upper_bound(bad_a: int, n_a: int, bad_b: int, n_b: int, level: float) -> float:
    """One-sided upper confidence bound, at error ``level``, of A's bad rate minus B's: how much worse
    A could be. Agresti–Caffo: one bad and one good outcome added to each group, which keeps the
    interval's coverage near its level for small groups and rates near 0, where the plain (Wald)
    interval collapses to a point."""
    p_a, p_b = (bad_a + 1) / (n_a + 2), (bad_b + 1) / (n_b + 2)
    spread = math.sqrt(p_a * (1 - p_a) / (n_a + 2) + p_b * (1 - p_b) / (n_b + 2))
    return p_a - p_b + _NORMAL.inv_cdf(1 - level) * spread
