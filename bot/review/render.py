"""A review result for people: the bodies of the bot's comments on a merge request (a finding, the
summary), and ``reviewbot review``'s output (a rich table in a terminal, or Markdown)."""

from __future__ import annotations

from itertools import groupby

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from bot.forges.base import SUMMARY_MARKER, MergeRequest, finding_marker
from bot.models import Severity
from bot.review.pipeline import ReviewFinding, ReviewResult

SEVERITY_STYLE = {
    Severity.CRITICAL: "bold white on red",
    Severity.MAJOR: "bold red",
    Severity.MINOR: "yellow",
    Severity.TRIVIAL: "dim",
}


def _where(finding: ReviewFinding) -> str:
    if finding.line is None:
        return "file"
    return f"{finding.line}" if finding.side == "new" else f"{finding.line} (old)"


def _by_file(result: ReviewResult) -> list[tuple[str, list[ReviewFinding]]]:
    return [(path, list(group)) for path, group in groupby(result.findings, key=lambda f: f.path)]


def _found(result: ReviewResult) -> str:
    """ "2 critical, 1 minor", or "no findings"."""
    return ", ".join(f"{n} {s.value}" for s, n in result.severity_counts().items() if n) or "no findings"


def _summary(result: ReviewResult) -> str:
    stats = result.stats
    return (
        f"{_found(result)} at or above {stats.threshold} in {stats.files} files "
        f"({stats.chunks} chunks, {stats.wall_seconds:.1f} s); "
        f"{len(result.skipped)} skipped, {len(result.failed)} failed"
    )


def comment_body(finding: ReviewFinding) -> str:
    """A finding's comment on the merge request, with its hidden fingerprint."""
    lines = [f"**{finding.severity.value}** · {finding.title}", "", finding.review]
    if finding.explanation:
        lines += ["", f"_Why {finding.severity.value}:_ {finding.explanation}"]
    if finding.anchor_note:
        lines += ["", f"<sub>{finding.anchor_note}</sub>"]
    lines += ["", finding_marker(finding.fingerprint)]
    return "\n".join(lines)


def summary_body(result: ReviewResult, mr: MergeRequest, posted: int, resolved: int) -> str:
    """The summary comment on the merge request, edited in place at each review."""
    lines = [
        f"**reviewbot** reviewed `{mr.head_sha[:12]}`: "
        f"{_found(result)} at or above {result.stats.threshold}.",
        f"{posted} new comment(s), {resolved} earlier comment(s) resolved as outdated.",
    ]
    if result.skipped:
        lines.append("Not reviewed: " + "; ".join(f"`{path}` ({reason})" for path, reason in result.skipped))
    if result.failed:
        lines.append("Could not review: " + "; ".join(f"`{f.path}`: {f.error}" for f in result.failed))
    return "\n\n".join([*lines, SUMMARY_MARKER])


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
