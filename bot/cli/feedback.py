"""``reviewbot feedback …``: the reviewers' signals, the labels they give, and the training data."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import sqlalchemy as sa
import typer
from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from bot.cli.common import Format, FormatOption, ProjectFilter, cli_actor, command_group, fail, open_engine
from bot.feedback import audit_set
from bot.feedback.audit_set import AuditError, AuditLabel, BlindItem
from bot.feedback.labels import HARD_LABEL_KINDS, LabelledFinding, labelled_findings, severity_examples
from bot.feedback.stats import RATES, VERDICTS, acceptance, severity_confusion
from bot.feedback.suppression import suppressed_findings, unsuppress
from bot.models import Feedback
from bot.untrusted import terminal, terminal_lines

feedback_app = command_group(
    "feedback",
    "Reviewers' reactions: list them, export them as training data, see acceptance rates.",
    "reviewbot feedback stats --plot acceptance.png",
)


class ExportTask(StrEnum):
    SEVERITY = "severity"


def _findings(ctx: typer.Context, project: str | None, since: datetime | None) -> list[LabelledFinding]:
    _, engine = open_engine(ctx)
    return list(labelled_findings(engine, project, since))


@feedback_app.command("list")
def list_feedback(
    ctx: typer.Context,
    project: ProjectFilter = None,
    since: Annotated[
        datetime | None, typer.Option(metavar="DATE", help="Only findings created since this date.")
    ] = None,
    output: FormatOption = Format.TABLE,
) -> None:
    """Findings with their signals (author, role, and whether it counts) and label state."""
    items = _findings(ctx, project, since)
    if output is Format.JSON:
        rows = [
            {
                "finding_id": i.finding.id, "project": i.project.path,
                "path": i.finding.path, "line": i.finding.line,
                "severity": i.finding.severity, "model_version": i.finding.model_version,
                "label_state": i.label.state.value,
                "label": i.label.severity.value if i.label.severity else None,
                "signals": [
                    {"kind": s.kind, "value": s.value, "author": s.author, "role": s.role,
                     "labels": s in i.trusted}
                    for s in i.signals
                ],
            }
            for i in items
        ]  # fmt: skip
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("id", "project", "where", "severity", "label", "signals")
    for i in items:
        label = i.label.state.value + (
            f" → {i.label.severity.value}" if i.label.state == "corrected" and i.label.severity else ""
        )
        signals = ", ".join(_signal(s, s in i.trusted) for s in i.signals)
        table.add_row(
            str(i.finding.id),
            i.project.path,
            f"{i.finding.path}:{i.finding.line or '-'}",
            i.finding.severity,
            label,
            signals,
        )
    Console().print(table)


def _signal(signal: Feedback, labels: bool) -> str:
    """``severity:minor by ana (developer)``; struck through when it does not count towards the label."""
    said = f"{signal.kind}:{signal.value}" if signal.value else signal.kind
    by = f" by {signal.author} ({signal.role or 'role not known yet'})" if signal.author else ""
    text = escape(said + by)  # reviewers' text and names ("ci[bot]") are not markup
    return text if labels else f"[strike]{text}[/strike]"


@feedback_app.command("export")
def export(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(metavar="FILE.jsonl", help="The JSONL file to write.", dir_okay=False)],
    task: Annotated[
        ExportTask, typer.Option(metavar="TASK", help="Which task's examples.")
    ] = ExportTask.SEVERITY,
    project: ProjectFilter = None,
) -> None:
    """Write the labelled examples (confirmed and corrected findings) in the flywheel's JSONL format."""
    _, engine = open_engine(ctx)
    found = labelled_findings(engine, project, with_signal_of=HARD_LABEL_KINDS, include_audited=False)
    examples = list(severity_examples(found))
    with out.open("w", encoding="utf-8") as file:
        for example in examples:
            file.write(json.dumps(example, ensure_ascii=False) + "\n")
    typer.echo(f"{len(examples)} {task.value} examples written to {out}")


@feedback_app.command("stats")
def stats(
    ctx: typer.Context,
    project: ProjectFilter = None,
    output: FormatOption = Format.TABLE,
    plot: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE.png", dir_okay=False, help="Also write a PNG of the rates per model version."
        ),
    ] = None,
) -> None:
    """Per project, model version and severity: share of findings with feedback, 👍, corrected,
    dismissed, addressed."""
    _, engine = open_engine(ctx)
    rows = acceptance(engine, project)
    if plot is not None:
        from bot.feedback.plot import plot_acceptance

        if rows:
            typer.echo(f"plot written to {plot_acceptance(rows, plot)}", err=True)
        else:
            typer.echo("no findings yet: nothing to plot", err=True)
    if output is Format.JSON:
        typer.echo(json.dumps(rows, indent=2))
        return
    names = (name.replace("_", " ") for name in RATES)
    table = Table("project", "model", "severity", "findings", *names, "suppressed")
    for row in rows:
        rates = [f"{row[f'{name}_rate']:.0%}" for name in RATES]
        counts = (str(row["findings"]), *rates, str(row["suppressed"]))
        table.add_row(row["project"], row["model_version"], row["severity"], *counts)
    Console().print(table)


@feedback_app.command("confusion")
def confusion(ctx: typer.Context, project: ProjectFilter = None, output: FormatOption = Format.TABLE) -> None:
    """Per model version, its severities (rows) against the reviewers' verdicts (columns): the
    severity a /severity command confirmed or corrected, or /dismiss; then how often it over- and
    under-rated."""
    _, engine = open_engine(ctx)
    matrices = severity_confusion(engine, project)
    if output is Format.JSON:
        typer.echo(json.dumps([m.as_dict() for m in matrices], indent=2))
        return
    if not matrices:
        typer.echo("no finding has a reviewer's /severity or /dismiss yet")
        return
    for matrix in matrices:
        columns = (f"→ {verdict}" for verdict in VERDICTS)
        table = Table("model said", *columns, title=escape(matrix.model_version))
        for said, row in matrix.counts.items():
            table.add_row(said, *(str(row[verdict]) for verdict in VERDICTS))
        Console().print(table)
        Console().print(escape(matrix.words()))


@feedback_app.command("suppressed")
def suppressed(
    ctx: typer.Context,
    project: ProjectFilter = None,
    output: FormatOption = Format.TABLE,
    limit: Annotated[int, typer.Option(metavar="N", help="How many, newest first.")] = 50,
) -> None:
    """Findings not posted because they were like ones trusted reviewers dismissed or 👎'd: which
    finding each was like, and how similar. Undo one with ``reviewbot feedback unsuppress ID``."""
    _, engine = open_engine(ctx)
    rows = suppressed_findings(engine, project, limit)
    if output is Format.JSON:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("id", "project", "MR", "where", "severity", "title", "like", "similarity")
    for row in rows:
        like = f"{row['like_finding_id']} on !{row['like_mr']}"
        where = f"{row['path']}:{row['line'] or '-'}"
        cells = (row["project"], f"!{row['mr']}", where, row["severity"], row["title"], like)
        table.add_row(
            str(row["finding_id"]), *(escape(terminal(c)) for c in cells), f"{row['similarity']:.2f}"
        )
    Console().print(table)


@feedback_app.command("unsuppress")
def unsuppress_finding(
    ctx: typer.Context,
    finding_id: Annotated[
        int, typer.Argument(metavar="ID", help="A suppressed finding's id (feedback suppressed).")
    ],
) -> None:
    """Post a suppressed finding after all (while its merge request is still at the reviewed head),
    and stop the dismissed finding it was like from suppressing others."""
    _, engine = open_engine(ctx)
    try:
        done = unsuppress(engine, finding_id)
    except LookupError as exc:
        fail(str(exc))
    typer.echo(done)


QUIT = "quit"
AUDIT_CHOICES = [label.value.replace("_", "-") for label in AuditLabel] + [QUIT]


@feedback_app.command("audit")
def audit(
    ctx: typer.Context,
    list_: Annotated[
        bool,
        typer.Option("--list", help="The labelled items, newest first, each beside the model's severity."),
    ] = False,
    show_stats: Annotated[
        bool,
        typer.Option(
            "--stats", help="Labelled this week, waiting, and the labels against the model's severities."
        ),
    ] = False,
    output: FormatOption = Format.TABLE,
) -> None:
    """Label the blind audit set, item by item: a finding's file, code and review, never the model's
    severity or explanation; answer critical, major, minor, trivial, not-an-issue or skip (quit stops).
    The model's severity is shown once the label is recorded. Labels are final and go to the golden set
    the flywheel's promotions are judged on."""
    settings, engine = open_engine(ctx)
    if show_stats:
        figures = audit_set.stats(engine)
        if output is Format.JSON:
            typer.echo(json.dumps(asdict(figures), indent=2))
            return
        _print_stats(figures)
        return
    if list_:
        items = audit_set.labelled_items(engine)
        if output is Format.JSON:
            typer.echo(json.dumps([asdict(i) for i in items], indent=2, default=str))
            return
        table = Table("id", "week", "where", "title", "label", "model said", "auditor")
        for i in items:
            where = Text(terminal(f"{i.path}:{i.line or '-'}"))
            table.add_row(str(i.id), i.week, where, Text(terminal(i.title)), i.label, i.model_severity,
                          Text(terminal(i.auditor)))  # fmt: skip
        Console().print(table)
        return
    _label_items(engine, settings.audit_per_week)


def _label_items(engine: sa.Engine, per_week: int) -> None:
    console, auditor, labelled = Console(highlight=False), cli_actor(), 0
    shown: list[int] = []  # once per session: an item whose label failed is not asked again
    while (item := audit_set.next_item(engine, per_week, shown)) is not None:
        shown.append(item.id)
        console.print(_blind(item))
        answer = _ask()
        if answer == QUIT:
            break
        try:
            done = audit_set.record(engine, item.id, AuditLabel(answer.replace("-", "_")), auditor)
        except AuditError as exc:
            console.print(Text(str(exc)))
            continue
        labelled += 1
        console.print(Text(done.words()), "")
    left = "" if item is not None else "; nothing is waiting"
    typer.echo(f"{labelled} labelled as {auditor}{left}")


def _ask() -> str:
    """One of ``AUDIT_CHOICES``, asked until given; quit at the end of input."""
    while True:
        try:
            answer = str(typer.prompt(f"label ({', '.join(AUDIT_CHOICES)})")).strip().lower()
        except typer.Abort:
            return QUIT
        if answer in AUDIT_CHOICES:
            return answer
        typer.echo(f"answer one of {', '.join(AUDIT_CHOICES)}")


def _blind(item: BlindItem) -> Group:
    """An item as the auditor sees it: every text of the model's and the forge's as plain text (a
    ``Text`` is never read as markup), control characters dropped."""
    where = f"{item.project} !{item.mr_number} {item.path}:{item.line or '-'}"
    return Group(
        Text.assemble((f"audit item {item.id}", "bold"), f" · week {item.week} · ", terminal(where)),
        Text(terminal(item.title), style="bold"),
        Text(terminal_lines(item.review)),
        Text(terminal_lines(item.code), style="dim"),
    )


def _print_stats(figures: audit_set.AuditStats) -> None:
    console = Console(highlight=False)
    console.print(
        f"week {figures.week}: {figures.labelled_this_week} labelled this week, {figures.waiting} waiting, "
        f"{figures.labelled} labelled in all"
    )
    console.print(", ".join(f"{count} {name}" for name, count in figures.agreement.items()))
    table = Table(
        "model said", *(f"→ {label.value}" for label in AuditLabel), title="labels against the model"
    )
    for said, row in figures.matrix.items():
        table.add_row(said, *(str(row[label.value]) for label in AuditLabel))
    console.print(table)
