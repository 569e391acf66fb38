"""A review result for people: the bodies of the bot's comments on a merge request (a finding, the
summary), and ``reviewbot review``'s output (a rich table in a terminal, or Markdown).

Every value the bot's own code did not write (the model's words, file names, skip reasons) goes
through ``bot.untrusted`` on its way into Markdown, and each body ends with the bot's marker, alone
on its last line, within the forge's length limit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from bot import untrusted
from bot.forges.base import SUMMARY_MARKER, MergeRequest, finding_marker
from bot.models import ForgeKind, Severity
from bot.review.noise import Suppressed
from bot.review.pipeline import UNCHANGED, ReviewFinding, ReviewResult

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


BADGES = {Severity.CRITICAL: "🔴", Severity.MAJOR: "🟠", Severity.MINOR: "🟡", Severity.TRIVIAL: "⚪"}
COLLAPSE_OVER = 5  # a list longer than this is folded in a <details> block
COMMANDS = "reply `/severity LEVEL [reason]` or `/dismiss [reason]`"  # in code spans: never a quick action


def badge(severity: Severity) -> str:
    """The severity as an emoji and its word: readable without colour."""
    return f"{BADGES[severity]} **{severity.value}**"


def reference(forge: ForgeKind | str, number: int) -> str:
    """How the forge writes a merge request's number (!12, #12), made inert: no cross-reference
    notes on that merge request each time a summary names it."""
    return untrusted.inline(f"{'!' if ForgeKind(forge) == ForgeKind.GITLAB else '#'}{number}")


def comment_body(finding: ReviewFinding, limit: int, model: str) -> str:
    """A finding's comment on the merge request, with its hidden fingerprint; at most ``limit``
    characters (``untrusted.body_limit`` of the forge): a badge and the title, the review, the
    explanation folded, and how to teach the bot, naming the model that rated it."""
    lines = [
        f"{badge(finding.severity)} · {untrusted.inline(finding.title)}",
        "",
        untrusted.text(finding.review),
    ]
    if finding.explanation:
        why = f"Why {finding.severity.value}"
        lines += [
            "",
            f"<details><summary>{why}</summary>",
            "",
            untrusted.text(finding.explanation),
            "",
            "</details>",
        ]
    if finding.anchor_note:
        lines += ["", f"<sub>{untrusted.inline(finding.anchor_note)}</sub>"]
    lines += [
        "",
        f"<sub>Teach reviewbot: 👍 or 👎 this comment, or {COMMANDS} · model {untrusted.code(model)}</sub>",
    ]
    return untrusted.fit("\n".join(lines), finding_marker(finding.fingerprint), limit)


def _listed(entries: list[str], room: int, more: str) -> list[str]:
    """As many ``entries`` as fit in ``room`` characters (``LISTED`` at most), then how many are
    left, in words that end with ``more``: a long list is collapsed, never cut mid-entry."""
    shown: list[str] = []
    used = len(f"- and {len(entries):,} {more}\n")  # the tail's room, kept whether it is needed or not
    for entry in entries[:LISTED]:
        used += len(entry) + 3
        if used > room:
            break
        shown.append(entry)
    left = len(entries) - len(shown)
    return shown + ([f"and {left:,} {more}"] if left else [])


def _block(title: str, entries: list[str], fold: bool) -> str:
    """A titled list; folded in a <details> block when ``fold`` or when it is long."""
    items = "\n".join(f"- {entry}" for entry in entries)
    if fold or len(entries) > COLLAPSE_OVER:
        return f"<details><summary>{title}</summary>\n\n{items}\n\n</details>"
    return f"{title}:\n\n{items}"


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


@dataclass(frozen=True)
class Outcome:
    """What a review did on its merge request besides finding: for the summary. Its texts are the
    bot's own (``settings`` is ``settings_line``'s, already safe); findings are rendered here."""

    posted: int = 0  # new comments
    resolved: int = 0  # earlier comments resolved as outdated
    suppressed: Sequence[Suppressed] = ()
    listed: Sequence[ReviewFinding] = ()  # past the cap
    cap: int | None = None
    gate: Severity | None = None  # the project's block_on
    blocking: int = 0  # findings of this review at or above the gate
    settings: str | None = None
    console: str | None = None  # this review's page in the admin console

    def has_news(self, result: ReviewResult) -> bool:
        """Whether a summary would say anything but "nothing found" (``project set --quiet``)."""
        return bool(
            result.findings or result.failed or result.stopped or self.suppressed or self.resolved
            or (self.settings and "not used" in self.settings)
            or any(why != UNCHANGED for _, why in result.skipped)
        )  # fmt: skip


def _counts_table(result: ReviewResult) -> list[str]:
    """Findings per severity, as a small table; severities below the threshold show a dash."""
    threshold = Severity(result.stats.threshold)
    counts = result.severity_counts()
    head = " | ".join(f"{BADGES[s]} {s.value}" for s in Severity)
    cells = " | ".join(str(counts[s]) if s.rank >= threshold.rank else "—" for s in Severity)
    return [f"| {head} |", "|" + ":-:|" * len(Severity), f"| {cells} |"]


def _finding_entry(finding: ReviewFinding) -> str:
    where = f"{untrusted.code(finding.path)} line {_where(finding)}"
    return f"{badge(finding.severity)} {where}: {untrusted.inline(finding.title)}"


def _suppressed_entry(item: Suppressed, forge: ForgeKind | str) -> str:
    like = f"like a finding {item.like.how} on {reference(forge, item.like.mr_number)}"
    by = f" by {untrusted.inline('@' + item.like.by)}" if item.like.by else ""
    return f"{_finding_entry(item.finding)} — {like}{by} (similarity {item.similarity:.2f})"


def summary_body(
    result: ReviewResult, mr: MergeRequest, outcome: Outcome, limit: int, forge: ForgeKind | str
) -> str:
    """The summary comment on the merge request, edited in place at each review, within ``limit``
    characters: counts by severity, what was held back (past the cap, suppressed) and why, what was
    not reviewed, the models, and a link to the console. Long lists are folded and collapsed to a
    count. Failures are told in plain words (``Failure.public``); the full errors are in the
    review's row (``reviewbot project reviews``)."""
    stats = result.stats
    suppressed = len(outcome.suppressed)
    lines = [
        f"**reviewbot** reviewed {untrusted.code(mr.head_sha[:12])} "
        f"(findings at or above {stats.threshold}):",
        "\n".join(_counts_table(result)),
        f"{outcome.posted} new comment(s), {outcome.resolved} earlier comment(s) resolved as outdated"
        + (f", {suppressed} suppressed" if suppressed else "")
        + ".",
    ]
    if outcome.gate is not None:
        state = f"{outcome.blocking} finding(s) block" if outcome.blocking else "nothing blocks"
        lines.append(
            f"Merge gate: findings at {outcome.gate.value} or above block the `reviewbot` status; {state} "
            "until a reviewer replies `/dismiss` or `/severity` below the gate."
        )
    if outcome.settings:
        lines.append(outcome.settings)
    if result.stopped:
        lines.append(
            f"The review stopped early: {result.stopped}. What it did not reach is "
            "listed as not reviewed, and is reviewed again at the next push."
        )
    lists: list[tuple[str, list[str], str, bool]] = []  # title, entries, what the rest are, folded
    if outcome.listed:
        listed = [_finding_entry(f) for f in outcome.listed]
        title = f"Not posted inline, past the cap of {outcome.cap} comments ({len(listed):,})"
        lists.append((title, listed, "more findings", False))
    if outcome.suppressed:
        entries = [_suppressed_entry(item, forge) for item in outcome.suppressed]
        title = f"Suppressed, like findings reviewers dismissed ({len(entries):,})"
        lists.append((title, entries, "more", True))
    if result.skipped:
        skipped = [f"{untrusted.code(path)}: {untrusted.inline(why)}" for path, why in result.skipped]
        lists.append((f"Not reviewed ({len(skipped):,})", skipped, "more files", False))
    if result.failed:
        failed = [f"{untrusted.code(f.path)}: {untrusted.inline(f.public)}" for f in result.failed]
        lists.append((f"Could not review ({len(failed):,})", failed, f"more, {WHERE_ERRORS_ARE}", False))
    models = ", ".join(f"{task} {untrusted.code(name)}" for task, name in sorted(stats.models.items()))
    footer = f"<sub>Models: {models or 'none'}"
    if outcome.console:
        footer += f" · [this review in the console]({outcome.console})"
    footer += f" · Teach reviewbot on a finding's comment: 👍 or 👎, or {COMMANDS}.</sub>"
    fixed = sum(len(line) + 2 for line in [*lines, footer]) + sum(len(t) + 60 for t, _, _, _ in lists)
    room = (limit - len(SUMMARY_MARKER) - 2 - fixed) // max(len(lists), 1)
    lines += [_block(title, _listed(entries, room, more), fold) for title, entries, more, fold in lists]
    lines.append(footer)
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
