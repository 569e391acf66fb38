"""A review result for people: the bodies of the bot's comments on a merge request (a finding, the
summary), and ``reviewbot review``'s output (a rich table in a terminal, or Markdown).

Every value the bot's own code did not write (the model's words, file names, skip reasons) goes
through ``bot.untrusted`` on its way into Markdown, and each body ends with the bot's marker, alone
on its last line, within the forge's length limit."""

from __future__ import annotations

from itertools import groupby

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from bot import untrusted
from bot.forges.base import SUMMARY_MARKER, MergeRequest, finding_marker
from bot.models import Severity
from bot.review.pipeline import ReviewFinding, ReviewResult

LISTED = 50  # skipped or failed files named in the summary at most; the rest are counted
WHERE_ERRORS_ARE = "see `reviewbot project reviews`"  # the review's row holds every failure in full

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


def comment_body(finding: ReviewFinding, limit: int) -> str:
    """A finding's comment on the merge request, with its hidden fingerprint; at most ``limit``
    characters (``untrusted.body_limit`` of the forge)."""
    severity = finding.severity.value
    lines = [f"**{severity}** · {untrusted.inline(finding.title)}", "", untrusted.text(finding.review)]
    if finding.explanation:
        lines += ["", f"_Why {severity}:_ {untrusted.text(finding.explanation)}"]
    if finding.anchor_note:
        lines += ["", f"<sub>{untrusted.inline(finding.anchor_note)}</sub>"]
    return untrusted.fit("\n".join(lines), finding_marker(finding.fingerprint), limit)


def _listed(entries: list[str], room: int, more: str) -> str:
    """As many ``entries`` as fit in ``room`` characters (``LISTED`` at most), then how many are
    left, in words that end with ``more``: a long list is collapsed, never cut mid-entry."""
    shown: list[str] = []
    used = len(f"; and {len(entries):,} {more}")  # the tail's room, kept whether it is needed or not
    for entry in entries[:LISTED]:
        used += len(entry) + 2
        if used > room:
            break
        shown.append(entry)
    left = len(entries) - len(shown)
    return "; ".join(shown + ([f"and {left:,} {more}"] if left else []))


def settings_line(source: str | None, problem: str | None, refused: tuple[str, ...] = ()) -> str | None:
    """The summary's line on the repository's settings file: which one was used (and which of its keys
    the project does not let it set), or why it was not (its problem quotes the file: untrusted);
    None when there is none."""
    if problem:
        return (
            f"The repository's settings file was not used: {untrusted.inline(problem, 600)}. "
            "The project's settings applied."
        )
    if source:
        ignored = f" Keys the project does not let it set, ignored: {', '.join(refused)}." if refused else ""
        return f"Settings: {untrusted.code(source)} at the target branch.{ignored}"
    return None


def summary_body(
    result: ReviewResult,
    mr: MergeRequest,
    posted: int,
    resolved: int,
    limit: int,
    *,
    settings: str | None = None,
) -> str:
    """The summary comment on the merge request, edited in place at each review, within ``limit``
    characters: long lists of files are collapsed to a count. Failures are told in plain words
    (``Failure.public``); the full errors are in the review's row (``reviewbot project reviews``).
    ``settings`` is ``settings_line``'s, already safe."""
    lines = [
        f"**reviewbot** reviewed {untrusted.code(mr.head_sha[:12])}: "
        f"{_found(result)} at or above {result.stats.threshold}.",
        f"{posted} new comment(s), {resolved} earlier comment(s) resolved as outdated.",
        *([settings] if settings else []),
    ]
    if result.stopped:
        lines.append(
            f"The review stopped early: {result.stopped}. What it did not reach is "
            "listed as not reviewed, and is reviewed again at the next push."
        )
    lists = []
    if result.skipped:
        skipped = [f"{untrusted.code(path)} ({untrusted.inline(why)})" for path, why in result.skipped]
        lists.append((f"Not reviewed ({len(skipped):,}): ", skipped, "more files"))
    if result.failed:
        failed = [f"{untrusted.code(f.path)}: {untrusted.inline(f.public)}" for f in result.failed]
        lists.append((f"Could not review ({len(failed):,}): ", failed, f"more, {WHERE_ERRORS_ARE}"))
    fixed = sum(len(line) + 2 for line in lines) + sum(len(title) + 2 for title, _, _ in lists)
    room = (limit - len(SUMMARY_MARKER) - 2 - fixed) // max(len(lists), 1)
    lines += [title + _listed(entries, room, more) for title, entries, more in lists]
    return untrusted.fit("\n\n".join(lines), SUMMARY_MARKER, limit)


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
        lines += [f"### {untrusted.code(path)}", ""]
        for f in findings:
            title, review = untrusted.inline(f.title), untrusted.inline(f.review, untrusted.TEXT_LIMIT)
            lines.append(f"- **{f.severity.value}** line {_where(f)}: **{title}** — {review}")
            if f.explanation:
                lines.append(f"  _{untrusted.inline(f.explanation, untrusted.TEXT_LIMIT)}_")
        lines.append("")
    if result.skipped:
        skipped = (f"- {untrusted.code(path)}: {untrusted.inline(why)}" for path, why in result.skipped)
        lines += ["### Skipped", "", *skipped, ""]
    if result.failed:
        failed = (
            f"- {untrusted.code(f.path)}: {untrusted.inline(f.error, untrusted.TEXT_LIMIT)}"
            for f in result.failed
        )
        lines += ["### Not reviewed", "", *failed, ""]
    return "\n".join(lines)
