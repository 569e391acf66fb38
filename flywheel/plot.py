"""A flywheel run as a picture: held-out and golden scores, exam score and the teacher's grade per round."""

from __future__ import annotations

from pathlib import Path

from bot.models import FlywheelRun


def plot_run(run: FlywheelRun, out: Path) -> Path:
    """Write a PNG of the run's scores per round to ``out``."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a server
    import matplotlib.pyplot as plt

    rounds = [r for r in run.rounds if r.get("round", 0) > 0]
    baseline = run.rounds[0] if run.rounds else None
    figure, axes = plt.subplots(figsize=(7, 4))
    if baseline is not None:
        axes.axhline(baseline["heldout"], color="grey", linestyle="--", label=f"before: {baseline['model']}")
    numbers = [r["round"] for r in rounds]
    held = [r for r in run.rounds if "heldout" in r]  # round 0 too: where the run started from
    axes.plot([r["round"] for r in held], [r["heldout"] for r in held], "o-", label="dev score (held-out)")
    gold = [r for r in run.rounds if r.get("golden") is not None]  # runs with a golden set
    if gold:
        label = f"golden set v{gold[0]['golden_version']}"
        axes.plot([r["round"] for r in gold], [r["golden"] for r in gold], "D-", label=label)
    axes.plot(numbers, [r["exam_score"] for r in rounds], "s--", label="exam score")
    axes.plot(numbers, [r["teacher_score"] / 10 for r in rounds], "^:", label="teacher's grade / 10")
    for entry in rounds:
        point = (entry["round"], entry["heldout"])
        axes.annotate(entry["model"], point, xytext=(0, 6), textcoords="offset points", ha="center", size=8)
    axes.set_xlabel("round")
    axes.set_ylabel("score")
    axes.set_ylim(0, 1.05)
    axes.set_xticks([r["round"] for r in held])
    axes.set_title(f"flywheel run {run.id}: {run.task} ({run.status})")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out
