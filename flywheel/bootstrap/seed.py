"""``reviewbot flywheel bootstrap``: seed the flywheel from a repository's own code on day one —
analyzer findings as labelled examples, stored as the analyzer's (a reviewer's later label of the
same question replaces them) and/or written as JSONL, with the counts per level and side."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlmodel import Session

from bot.config import Settings
from bot.models import ExampleSource, ExampleSplit, Severity, Task
from flywheel import data
from flywheel.bootstrap.dataset import Built, Report, build
from flywheel.spec import spec_for

SKIPPED_SHOWN = 8  # the loudest skipped rules named in the summary


@dataclass(frozen=True)
class Seeded:
    built: Built
    stored: int | None  # new rows; None when nothing was stored
    written: int | None  # lines of the JSONL file; None without one


def seed(
    settings: Settings,
    engine: sa.Engine | None,
    root: Path,
    task: Task,
    *,
    out_file: Path | None,
    limit: int | None,
    balance: float,
    exclude: Sequence[str],
    console: Console,
) -> Seeded:
    """Build ``task``'s examples from ``root``; store them when an ``engine`` is given (never for
    ``find``, which the flywheel does not train), write them to ``out_file`` when given."""
    with Progress(
        TextColumn("analyzing"), BarColumn(), MofNCompleteColumn(), TextColumn("files"),
        TimeElapsedColumn(), console=console, transient=True,
    ) as progress:  # fmt: skip
        bar = progress.add_task("analyzing", total=None)
        built = build(
            root,
            task,
            heldout_share=settings.flywheel_heldout_share,
            balance=balance,
            limit=limit,
            chunk_tokens=settings.review_chunk_tokens,
            exclude=exclude,
            on_files=lambda total: progress.update(bar, total=total),
            on_progress=lambda done: progress.advance(bar, done),
        )
    written = data.write_jsonl(out_file, built.examples) if out_file else None
    stored = None
    if engine is not None and task != Task.FIND:
        with Session(engine) as session:
            stored = data.store(
                session, spec_for(task), built.examples, ExampleSource.ANALYZER,
                heldout_share=settings.flywheel_heldout_share,
            )  # fmt: skip
    return Seeded(built, stored, written)


def summary(console: Console, task: Task, seeded: Seeded, out_file: Path | None) -> None:
    report = seeded.built.report

    def say(text: str) -> None:
        console.print(text, markup=False, highlight=False)  # file names and rule messages are data

    findings = ", ".join(f"{count} {name}" for name, count in sorted(report.findings.items()))
    say(f"{report.files} Python files analyzed; findings: {findings or 'none'}")
    if report.unparsed:
        shown = ", ".join(repr(path) for path in report.unparsed[:3])
        say(f"{len(report.unparsed)} files could not be parsed by an analyzer (e.g. {shown})")
    skipped = sum(report.skipped.values())
    if skipped:
        loudest = ", ".join(f"{rule} {n}" for rule, n in report.skipped.most_common(SKIPPED_SHOWN))
        table = f"severity table v{report.table_version}"
        say(f"{skipped} findings skipped ({table}: no entry, a skipped test, or bandit unsure): {loudest}")
    say(
        f"left out: {report.duplicates} duplicate questions, {report.unusable} unusable "
        f"(no rationale, or too long a question), {report.capped} to balance the levels"
    )
    console.print(_counts(task, report))
    if seeded.written is not None:
        say(f"{seeded.written} examples written to {out_file}")
    if task == Task.FIND:
        say("the flywheel does not train the find task yet: its examples are only written to the file")
    elif seeded.stored is not None:
        known = report.total - seeded.stored
        say(f"{seeded.stored} new {task.value} examples stored as analyzer-labelled ({known} known already)")


def _counts(task: Task, report: Report) -> Table:
    labels = ["chunks"] if task == Task.FIND else [level.value for level in Severity]
    table = Table("label", "train", "held out", "total")
    for label in [*labels, "total"]:
        cells = [
            sum(report.kept[side].values()) if label == "total" else report.kept[side][label]
            for side in (ExampleSplit.TRAIN, ExampleSplit.HELDOUT)
        ]
        table.add_row(label, *map(str, cells), str(sum(cells)))
    return table
