"""Acceptance per model version as a picture: does each new adapter get more 👍 and fewer corrections?"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SHOWN = ("thumbs_up", "corrected", "dismissed", "addressed")


def plot_acceptance(rows: Iterable[dict[str, Any]], out: Path) -> Path:
    """Bars of the 👍, corrected, dismissed and addressed rates per model version (in the order the
    versions first appear), from ``feedback_stats`` rows, weighted by their findings."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a server
    import matplotlib.pyplot as plt

    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for row in rows:
        version = totals[row["model_version"]]
        version["findings"] += row["findings"]
        for name in SHOWN:
            version[name] += row[f"{name}_rate"] * row["findings"]
    versions = list(totals)
    figure, axes = plt.subplots(figsize=(max(5, 1.6 * len(versions) + 2), 4))
    width = 0.8 / len(SHOWN)
    for index, name in enumerate(SHOWN):
        rates = [totals[v][name] / max(totals[v]["findings"], 1) for v in versions]
        positions = [i + (index - (len(SHOWN) - 1) / 2) * width for i in range(len(versions))]
        axes.bar(positions, rates, width, label=name.replace("_", " "))
    axes.set_xticks(range(len(versions)))
    axes.set_xticklabels([f"{v}\n({int(totals[v]['findings'])} findings)" for v in versions], fontsize=8)
    axes.set_ylabel("share of findings")
    axes.set_ylim(0, 1)
    axes.set_title("Reviewers' reactions per model version")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out
