"""Reviewers' reactions as data: stored signals, each finding's label state, and the labelled
examples the flywheel trains on.

A signal is one feedback row, unique on its source (an award id, a comment id, a poll snapshot);
seeing the same source again — a revoked award, an edited reply — updates that row.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from bot.models import Feedback, Finding, Project, Review, Severity, utcnow

_COMMAND = re.compile(r"^\s*/(severity|dismiss)\b[ \t]*(.*)$", re.IGNORECASE | re.MULTILINE)
_QUOTE = re.compile(r"^[ \t]*>(.*)$", re.MULTILINE)
_MARKUP = re.compile(r"[*_`]")  # emphasis and code marks: a quote may carry them or lose them
UP, DOWN = "+1", "-1"
MIN_QUOTE_CHARS = 20  # a shorter quoted line ("> ok", "> +1") says too little to pick out one finding


class SignalKind(StrEnum):
    REACTION = "reaction"  # value "+1", "-1", or "" once revoked
    REPLY = "reply"  # value: the reply's text
    SEVERITY = "severity"  # value: the corrected severity (a "/severity X" reply)
    DISMISS = "dismiss"  # value: the reason given, may be "" (a "/dismiss" reply)
    RESOLVED = "resolved"  # value "true" or "false"
    ADDRESSED = "addressed"  # a later push changed the lines the finding pointed at


class LabelState(StrEnum):
    CONFIRMED = "confirmed"
    CORRECTED = "corrected"
    DISMISSED = "dismissed"
    DISPUTED = "disputed"
    UNLABELLED = "unlabelled"


@dataclass(frozen=True)
class Command:
    kind: SignalKind  # SEVERITY or DISMISS
    value: str  # the severity, or the dismissal's reason


class CommandError(ValueError):
    """A reply that starts like a command but is not a valid one; the message says how to write it."""


def parse_command(text: str) -> Command | None:
    """``/severity critical|major|minor|trivial [reason]`` or ``/dismiss [reason]`` on a line of its
    own; None when the reply holds no command."""
    match = _COMMAND.search(text or "")
    if match is None:
        return None
    name, rest = match[1].lower(), match[2].strip()
    if name == "dismiss":
        return Command(SignalKind.DISMISS, rest)
    level = rest.split(maxsplit=1)[0].lower() if rest else ""
    if level not in {s.value for s in Severity}:
        raise CommandError(
            f"/severity needs one of {', '.join(s.value for s in Severity)}; got {level or 'nothing'!r}"
        )
    return Command(SignalKind.SEVERITY, level)


def quoted_text(text: str) -> str:
    """The quoted (``> ``) lines of a comment, without their quote marks; "" when it quotes nothing."""
    lines = (line.lstrip("> \t").rstrip() for line in _QUOTE.findall(text or ""))
    return "\n".join(line for line in lines if line)


@dataclass(frozen=True)
class Label:
    state: LabelState
    severity: Severity | None  # the label for training: None unless confirmed or corrected


def label_state(finding_severity: str, signals: Sequence[Feedback]) -> Label:
    """The label a finding's signals give it. The rule, in order:

    1. The reviewers' latest command wins: ``/dismiss`` → dismissed; ``/severity X`` → corrected to
       X (confirmed, when X is the severity the bot gave).
    2. Otherwise, a finding whose lines a later push changed (addressed) is confirmed.
    3. Otherwise reactions that stand (not revoked): 👎 → disputed (whatever 👍 there are beside
       it); 👍 alone → confirmed.
    4. Otherwise — no signal, or only replies and thread resolution — unlabelled.
    """
    commands = [s for s in signals if s.kind in (SignalKind.SEVERITY, SignalKind.DISMISS)]
    if commands:
        latest = max(commands, key=lambda s: (s.created_at, s.id or 0))
        if latest.kind == SignalKind.DISMISS:
            return Label(LabelState.DISMISSED, None)
        corrected = Severity(latest.value)
        state = LabelState.CONFIRMED if corrected == finding_severity else LabelState.CORRECTED
        return Label(state, corrected)
    if any(s.kind == SignalKind.ADDRESSED for s in signals):
        return Label(LabelState.CONFIRMED, Severity(finding_severity))
    reactions = {s.value for s in signals if s.kind == SignalKind.REACTION}
    if DOWN in reactions:
        return Label(LabelState.DISPUTED, None)
    if UP in reactions:
        return Label(LabelState.CONFIRMED, Severity(finding_severity))
    return Label(LabelState.UNLABELLED, None)


def record_signal(
    session: Session,
    finding_id: int,
    kind: SignalKind,
    value: str,
    author: str,
    source_event_id: str,
    when: datetime | None = None,
) -> Feedback:
    """Store a signal once; the same source again (revoke, edit, next poll) updates its row."""
    row = session.exec(select(Feedback).where(Feedback.source_event_id == source_event_id)).first()
    if row is None:
        row = Feedback(finding_id=finding_id, kind=kind, source_event_id=source_event_id)
    row.kind, row.value, row.author = kind, value, author
    row.created_at = when or utcnow()
    session.add(row)
    session.flush()
    return row


@dataclass(frozen=True)
class Signal:
    """A reaction seen on a forge, before it is tied to its finding: by the bot comment it answers, by
    the GitLab discussion it was written in, or (a GitHub pull request comment) by the text of the
    finding it quotes."""

    kind: SignalKind
    value: str
    author: str
    source_event_id: str
    comment_id: str | None = None
    thread_id: str | None = None
    reply_id: str | None = None  # the reviewer's own comment, for replies and commands
    mr_number: int | None = None  # with ``quote``: the merge request whose findings it may quote
    quote: str | None = None  # the quoted lines, when no comment or discussion names the finding

    @property
    def is_command(self) -> bool:
        return self.kind in (SignalKind.SEVERITY, SignalKind.DISMISS)

    def acknowledgement(self) -> str:
        """The bot's answer to a command, so the reviewer knows it was heard."""
        if self.kind == SignalKind.SEVERITY:
            done = f"severity corrected to **{self.value}**"
        else:
            done = "dismissed as not an issue" + (f" ({self.value})" if self.value else "")
        return f"Noted: {done}. Thank you — this goes into the training data of the next model."

    def describe(self) -> str:
        if self.comment_id:
            target = f"comment {self.comment_id}"
        elif self.thread_id:
            target = f"discussion {self.thread_id}"
        else:
            target = f"the finding quoted on #{self.mr_number}"
        return f"{self.kind} {self.value!r} by {self.author or 'someone'} on {target}"


def signal_from_reply(
    text: str,
    author: str,
    source_event_id: str,
    reply_id: str,
    *,
    comment_id: str | None = None,
    thread_id: str | None = None,
    mr_number: int | None = None,
    quote: str | None = None,
) -> Signal:
    """A reply to a bot comment: a command when it holds one (an invalid one counts as a plain reply)."""
    try:
        command = parse_command(text)
    except CommandError:
        command = None
    kind, value = (command.kind, command.value) if command else (SignalKind.REPLY, text)
    return Signal(kind, value, author, source_event_id, comment_id, thread_id, reply_id, mr_number, quote)


def _plain(text: str) -> str:
    return " ".join(_MARKUP.sub("", text).split())


def _quotes(line: str, text: str) -> bool:
    """A quoted line (plain, long enough) that is part of ``text``, or holds all of it (a line of the
    bot's comment quoted whole, with what the comment puts around the text: "Why major: …")."""
    plain = _plain(text)
    return bool(plain) and (line in plain or (len(plain) >= MIN_QUOTE_CHARS and plain in line))


def quoted_findings(session: Session, project_id: int, mr_number: int, quote: str) -> list[Finding]:
    """The bot's posted findings on that merge request (the newest row of each comment) that ``quote``
    quotes: one of its lines of at least ``MIN_QUOTE_CHARS`` is part of the finding's title, review or
    explanation, or holds one of them whole (whitespace and emphasis marks aside)."""
    lines = [plain for line in quote.splitlines() if len(plain := _plain(line)) >= MIN_QUOTE_CHARS]
    if not lines:
        return []
    rows = session.exec(
        select(Finding)
        .join(Review, col(Finding.review_id) == col(Review.id))
        .where(col(Review.project_id) == project_id, col(Review.mr_number) == mr_number)
        .where(col(Finding.forge_comment_id).is_not(None))
        .order_by(col(Finding.id))
    ).all()
    newest = {finding.forge_comment_id: finding for finding in rows}  # a re-review adds rows per comment
    return [
        finding
        for finding in newest.values()
        if any(
            _quotes(line, text)
            for line in lines
            for text in (finding.title, finding.review, finding.explanation)
        )
    ]


def find_finding(session: Session, project_id: int, signal: Signal) -> Finding | None:
    """The newest finding of ``project_id`` posted as that comment or in that discussion, or else the
    one finding of the merge request that the signal quotes (none when it quotes several)."""
    if signal.comment_id is not None:
        where = col(Finding.forge_comment_id) == signal.comment_id
    elif signal.thread_id is not None:
        where = col(Finding.forge_thread_id) == signal.thread_id
    elif signal.quote and signal.mr_number is not None:
        quoted = quoted_findings(session, project_id, signal.mr_number, signal.quote)
        return quoted[0] if len(quoted) == 1 else None
    else:
        return None
    query = (
        select(Finding)
        .join(Review, col(Finding.review_id) == col(Review.id))
        .where(where, col(Review.project_id) == project_id)
        .order_by(col(Finding.id).desc())
    )
    return session.exec(query).first()


def apply_signal(session: Session, project_id: int, signal: Signal) -> tuple[Finding, bool] | None:
    """Record ``signal`` on its finding: the finding, and whether the signal is new or changed (an
    edit that changes nothing, or a redelivery, is not); None when no finding matches (yet)."""
    finding = find_finding(session, project_id, signal)
    if finding is None or finding.id is None:
        return None
    before = session.exec(select(Feedback).where(Feedback.source_event_id == signal.source_event_id)).first()
    changed = before is None or (before.kind, before.value) != (signal.kind, signal.value)
    record_signal(session, finding.id, signal.kind, signal.value, signal.author, signal.source_event_id)
    return finding, changed


def record_reaction_counts(session: Session, project_id: int, counts: dict[str, tuple[int, int]]) -> int:
    """Store a poll of (👍, 👎) counts per bot comment: one row per comment and reaction, updated as
    the counts move (a count back to 0 empties the row). Returns how many rows changed."""
    changed = 0
    for comment_id, (up, down) in counts.items():
        for value, count in ((UP, up), (DOWN, down)):
            source = f"poll:{comment_id}:{value}"
            exists = session.exec(select(Feedback).where(Feedback.source_event_id == source)).first()
            if exists is None and not count:
                continue  # nothing to say yet
            signal = Signal(SignalKind.REACTION, value if count else "", "", source, comment_id=comment_id)
            applied = apply_signal(session, project_id, signal)
            changed += bool(applied and applied[1])
    return changed


def record_thread_states(session: Session, project_id: int, resolved: dict[str, bool]) -> int:
    """Store a poll of whether each bot thread is resolved (GitLab sends no webhook for it): one row
    per thread, written once it is first resolved and updated after. Returns how many rows changed."""
    changed = 0
    for thread_id, is_resolved in resolved.items():
        source = f"poll:{thread_id}:resolved"
        exists = session.exec(select(Feedback).where(Feedback.source_event_id == source)).first()
        if exists is None and not is_resolved:
            continue
        value = "true" if is_resolved else "false"
        applied = apply_signal(
            session, project_id, Signal(SignalKind.RESOLVED, value, "", source, thread_id=thread_id)
        )
        changed += bool(applied and applied[1])
    return changed


@dataclass(frozen=True)
class LabelledFinding:
    finding: Finding
    project: Project
    label: Label
    signals: list[Feedback]


def labelled_findings(
    engine: sa.Engine, project_path: str | None = None, since: datetime | None = None
) -> Iterator[LabelledFinding]:
    """Every finding (of one project, created since a date) with its signals and label."""
    with Session(engine) as session:
        query = (
            select(Finding, Project)
            .join(Review, col(Finding.review_id) == col(Review.id))
            .join(Project, col(Review.project_id) == col(Project.id))
            .order_by(col(Finding.id))
        )
        if project_path is not None:
            query = query.where(Project.path == project_path)
        if since is not None:
            query = query.where(col(Finding.created_at) >= since)
        rows = session.exec(query).all()
        ids = [finding.id for finding, _ in rows]
        signals: dict[int, list[Feedback]] = defaultdict(list)
        for signal in session.exec(select(Feedback).where(col(Feedback.finding_id).in_(ids))).all():
            signals[signal.finding_id].append(signal)
    for finding, project in rows:
        assert finding.id is not None
        found = signals.get(finding.id, [])
        yield LabelledFinding(finding, project, label_state(finding.severity, found), found)


def severity_examples(findings: Iterable[LabelledFinding]) -> Iterator[dict[str, Any]]:
    """The flywheel's format for the severity task: confirmed and corrected findings only."""
    for item in findings:
        if item.label.severity is None:
            continue
        yield {
            "question": {"code": item.finding.code, "review": item.finding.review},
            "answer": {"issue_type": item.label.severity.value},
            "meta": {
                "finding_id": item.finding.id,
                "project": item.project.path,
                "model_version": item.finding.model_version,
                "label_state": item.label.state.value,
                "signals": [{"kind": s.kind, "value": s.value, "author": s.author} for s in item.signals],
            },
        }


RATES = ("with_feedback", "thumbs_up", "corrected", "dismissed", "addressed")


def feedback_stats(findings: Iterable[LabelledFinding]) -> list[dict[str, Any]]:
    """Per project, model version and severity: findings, and the share of them with any feedback,
    a standing 👍, a correction, a dismissal, an addressing push."""
    groups: dict[tuple[str, str, str], list[LabelledFinding]] = defaultdict(list)
    for item in findings:
        groups[(item.project.path, item.finding.model_version, item.finding.severity)].append(item)
    table = []
    for (project, model, severity), items in sorted(groups.items()):
        counts = {
            "with_feedback": sum(bool(i.signals) for i in items),
            "thumbs_up": sum(
                any(s.kind == SignalKind.REACTION and s.value == UP for s in i.signals) for i in items
            ),
            "corrected": sum(i.label.state == LabelState.CORRECTED for i in items),
            "dismissed": sum(i.label.state == LabelState.DISMISSED for i in items),
            "addressed": sum(any(s.kind == SignalKind.ADDRESSED for s in i.signals) for i in items),
        }
        table.append(
            {
                "project": project,
                "model_version": model,
                "severity": severity,
                "findings": len(items),
                **{f"{name}_rate": round(count / len(items), 3) for name, count in counts.items()},
            }
        )
    return table
