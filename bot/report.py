"""A review result for people: a rich table (terminal) or Markdown."""

from __future__ import annotations

from itertools import groupby

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from bot.models import Severity
from bot.review import Finding, ReviewResult

SEVERITY_STYLE = {
    Severity.CRITICAL: "bold white on red",
    Severity.MAJOR: "bold red",
    Severity.MINOR: "yellow",
    Severity.TRIVIAL: "dim",
}


def _where(finding: Finding) -> str:
    if finding.line is None:
        return "file"
    return f"{finding.line}" if finding.side == "new" else f"{finding.line} (old)"


def _by_file(result: ReviewResult) -> list[tuple[str, list[Finding]]]:
    return [(path, list(group)) for path, group in groupby(result.findings, key=lambda f: f.path)]


def _summary(result: ReviewResult) -> str:
    counts = {s: sum(f.severity == s for f in result.findings) for s in Severity}
    found = ", ".join(f"{n} {s.value}" for s, n in counts.items() if n) or "no findings"
    return (
        f"{found} at or above {result.stats['threshold']} in {result.stats['files']} files "
        f"({result.stats['chunks']} chunks, {result.stats['wall_seconds']:.1f} s); "
        f"{len(result.skipped)} skipped, {len(result.failed)} failed"
    )


def print_text(result: ReviewResult, console: Console) -> None:
    for path, findings in _by_file(result):
        table = Table(title=path, title_justify="left", title_style="bold", expand=True, show_lines=True)
        table.add_column("line", justify="right", no_wrap=True)
        table.add_column("severity", no_wrap=True)
        table.add_column("finding", ratio=1)
        for finding in findings:
            body = Group(
                Text(finding.title, style="bold"),
                Text(finding.review),
                Text(finding.explanation, style="italic"),
            )
            severity = Text(finding.severity.value, style=SEVERITY_STYLE[finding.severity])
            table.add_row(_where(finding), severity, body)
        console.print(table)
    for path, reason in result.skipped:
        console.print(f"[dim]skipped[/dim] {path}: {reason}", highlight=False)
    for failure in result.failed:
        console.print(f"[bold red]failed[/bold red] {failure.path}: {failure.error}", highlight=False)
    console.print(_summary(result), highlight=False)


def markdown(result: ReviewResult) -> str:
    lines = ["## Review", "", _summary(result), ""]
    for path, findings in _by_file(result):
        lines += [f"### `{path}`", ""]
        for f in findings:
            lines.append(f"- **{f.severity.value}** line {_where(f)}: **{f.title}** — {f.review}")
            if f.explanation:
                lines.append(f"  _{f.explanation}_")
        lines.append("")
    if result.skipped:
        lines += ["### Skipped", "", *(f"- `{path}`: {reason}" for path, reason in result.skipped), ""]
    if result.failed:
        lines += ["### Not reviewed", "", *(f"- `{f.path}`: {f.error}" for f in result.failed), ""]
    return "\n".join(lines)
