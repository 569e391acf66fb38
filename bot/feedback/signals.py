"""Recording reviewers' signals: each one a feedback row tied to the finding it is about.

A signal is one row, unique on its source (an award id, a comment id, a user's polled reaction);
seeing the same source again — a revoked award, an edited reply, the next poll — updates that row. A
signal finds its finding by the bot comment it answers, the GitLab discussion it was written in, or
(a GitHub pull request comment) the text of the finding it quotes — among the findings of the merge
request it was written on, when it says which. Its author's role is filled in later
(``bot.feedback.roles``).
"""

from __future__ import annotations

import re
from datetime import datetime

from sqlmodel import Session, col, select

from bot.events import Signal, SignalKind
from bot.models import GATE_OFF, Feedback, Finding, Project, Review, utcnow
from bot.outbox import Job, stage

_MARKUP = re.compile(r"[*_`]")  # emphasis and code marks: a quote may carry them or lose them


MIN_QUOTE_CHARS = 20  # a shorter quoted line ("> ok", "> +1") says too little to pick out one finding


def record_signal(
    session: Session,
    finding_id: int,
    kind: SignalKind,
    value: str,
    author: str,
    source_event_id: str,
    when: datetime | None = None,
    role: str | None = None,
) -> Feedback:
    """Store a signal once; the same source again (revoke, edit, next poll) updates its row. ``role``
    None: not known here — the row keeps the role it has when its author is the same, else ''."""
    row = session.exec(select(Feedback).where(Feedback.source_event_id == source_event_id)).first()
    if row is None:
        row = Feedback(finding_id=finding_id, kind=kind, source_event_id=source_event_id)
    if role is not None or row.author != author:
        row.role = role or ""
    row.kind, row.value, row.author = kind, value, author
    row.created_at = when or utcnow()
    session.add(row)
    session.flush()
    return row


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
    one finding of the merge request that the signal quotes (none when it quotes several). A signal
    that names its merge request finds only that one's findings: a link to a finding of another
    merge request labels nothing."""
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
    if signal.mr_number is not None:
        query = query.where(col(Review.mr_number) == signal.mr_number)
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


def stage_follow_ups(
    session: Session, project_id: int, finding: Finding, signal: Signal, changed: bool
) -> None:
    """The jobs a recorded signal calls for, in its transaction: its author's role, read from the
    forge (until then the signal labels nothing); for a new or changed command, the reviewer's
    acknowledgement and the merge request's status (a dismissal may clear the gate)."""
    stage(session, Job.ROLES, project_id)
    if changed and signal.is_command and finding.id is not None:
        stage(session, Job.ACKNOWLEDGE, finding.id, signal)
        review = session.get(Review, finding.review_id)
        project = session.get(Project, project_id)
        if review is not None and project is not None and project.block_on != GATE_OFF:
            stage(session, Job.GATE, project_id, review.mr_number)


def record_reactions(
    session: Session, project_id: int, reactions: dict[str, frozenset[tuple[str, str]]]
) -> int:
    """Store a poll of who reacted 👍/👎 to each bot comment: one row per comment, user and reaction;
    a reaction no longer there empties its row. Returns how many rows changed."""
    changed = 0
    for comment_id, standing in reactions.items():
        prefix = f"poll:reaction:{comment_id}:"
        seen = session.exec(
            select(Feedback).where(col(Feedback.source_event_id).startswith(prefix), Feedback.value != "")
        ).all()
        stood = {(row.author, row.value) for row in seen}
        for user, content in sorted(standing | stood):
            value = content if (user, content) in standing else ""  # gone since the last poll
            signal = Signal(
                SignalKind.REACTION, value, user, f"{prefix}{user}:{content}", comment_id=comment_id
            )
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
