"""The blind audit set: each ISO week, a sample of the bot's findings — posted ones and those rated
below the threshold, which no reviewer ever sees — labelled by a trusted auditor who is not shown the
model's severity, its explanation or whether it was posted.

- **When it is drawn**: lazily, when an auditor asks for the next item (``reviewbot feedback audit``,
  the console's audit page): every complete ISO week of the last ``LOOKBACK_WEEKS`` that has no
  sample yet gets one. Only complete weeks, so a week is drawn once from all its findings; the draw
  is seeded by the week, so it is the same whoever asks first, and needs no periodic job.
- **How**: ``REVIEWBOT_AUDIT_PER_WEEK`` findings, one per fingerprint (a finding re-posted on a later
  push is one finding; one audited before is not drawn again), stratified by the model's severity and
  by whether it was rated below the threshold: every non-empty stratum gets one item first (the
  smallest strata first, when there are more strata than items), the rest in proportion to each
  stratum's size (largest remainder). Rare severities and below-threshold findings are therefore in
  every week's sample, over-represented against their share: per-stratum figures, not a pooled rate,
  describe the population.
- **Labels are held apart**: in ``audititem``, not ``feedback``; a reviewer's reaction or command on
  an audited finding changes neither its audit label nor, from then on, any training example
  (``not_audited``: the flywheel reads no example, and shows the teacher no complaint, of a finding
  whose fingerprint is in the audit set). A label is final once given.
- **Who**: whoever reaches the command line on the server or the console with the admin token: both
  are the admin's. No forge command labels an audit item.

The labelled items, as severity examples (``golden_examples``), join the admin's golden file in the
flywheel's golden set, which promotion is judged on.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from bot import audit
from bot.models import AuditItem, Finding, FindingStatus, Project, Review, Severity

LOOKBACK_WEEKS = 8  # complete weeks drawn at most, newest first: older code is stale context
DRAWN_STATUSES = (FindingStatus.POSTED, FindingStatus.LISTED, FindingStatus.SUPPRESSED, FindingStatus.BELOW)


class AuditLabel(StrEnum):
    CRITICAL = Severity.CRITICAL.value
    MAJOR = Severity.MAJOR.value
    MINOR = Severity.MINOR.value
    TRIVIAL = Severity.TRIVIAL.value
    NOT_AN_ISSUE = "not_an_issue"  # the finding is wrong: no severity fits
    SKIP = "skip"  # the auditor cannot judge it: out of the set, no label


class AuditError(ValueError):
    """An audit label that cannot be recorded; the message says why."""


def iso_week(day: date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def week_start(week: str) -> datetime:
    """Monday 00:00 UTC of an ISO week (``2026-W48``)."""
    return datetime.fromisocalendar(int(week[:4]), int(week[6:]), 1).replace(tzinfo=UTC)


def complete_weeks(now: datetime) -> list[str]:
    """The last ``LOOKBACK_WEEKS`` complete ISO weeks before ``now``'s, newest first."""
    today = now.astimezone(UTC).date()
    return [iso_week(today - timedelta(weeks=back)) for back in range(1, LOOKBACK_WEEKS + 1)]


def stratum(finding: Finding) -> str:
    return f"{finding.severity}/{'below' if finding.status == FindingStatus.BELOW else 'above'}"


def allocate(sizes: dict[str, int], size: int) -> dict[str, int]:
    """How many items each stratum gives: one for each non-empty stratum first (the smallest first),
    then the rest in proportion to what each has left, by largest remainder."""
    if sum(sizes.values()) <= size:
        return dict(sizes)
    taken = dict.fromkeys(sizes, 0)
    for name in sorted((n for n in sizes if sizes[n]), key=lambda n: (sizes[n], n))[:size]:
        taken[name] = 1
    rest = size - sum(taken.values())
    room = {name: sizes[name] - taken[name] for name in sizes}
    total = sum(room.values())
    if rest <= 0 or total <= 0:
        return taken
    exact = {name: rest * room[name] / total for name in sizes}
    for name in sizes:
        taken[name] += int(exact[name])
    left = size - sum(taken.values())
    for name in sorted(sizes, key=lambda n: (-(exact[n] - int(exact[n])), n))[:left]:
        taken[name] += 1
    return taken


def draw(engine: sa.Engine, week: str, size: int) -> int:
    """Draw ``week``'s sample into the audit set, once; how many items it added (0 when the week was
    drawn already, by this call's caller or another process)."""
    start = week_start(week)
    with Session(engine) as session:
        if session.exec(select(AuditItem.id).where(AuditItem.week == week)).first() is not None:
            return 0
        audited = select(AuditItem.fingerprint)
        rows = session.exec(
            select(Finding)
            .where(col(Finding.created_at) >= start, col(Finding.created_at) < start + timedelta(weeks=1))
            .where(col(Finding.status).in_(DRAWN_STATUSES), col(Finding.code) != "")
            .where(col(Finding.fingerprint).not_in(audited))
            .order_by(col(Finding.id))
        ).all()
        first: dict[str, Finding] = {}
        for row in rows:
            first.setdefault(row.fingerprint, row)  # a re-posted finding is one finding: its first copy
        strata: dict[str, list[Finding]] = defaultdict(list)
        for row in first.values():
            strata[stratum(row)].append(row)
        rng = random.Random(f"audit {week}")  # the same sample whoever draws it
        chosen = [
            (name, row)
            for name, count in sorted(allocate({n: len(r) for n, r in strata.items()}, size).items())
            for row in rng.sample(strata[name], count)
        ]
        rng.shuffle(chosen)  # drawn stratum by stratum: in that order, the queue would tell the severity
        for name, row in chosen:
            assert row.id is not None
            session.add(AuditItem(finding_id=row.id, fingerprint=row.fingerprint, week=week, stratum=name))
        try:
            session.commit()
        except sa.exc.IntegrityError:  # another auditor's call drew it at the same time
            session.rollback()
            return 0
    return len(chosen)


def draw_due(engine: sa.Engine, per_week: int, now: datetime | None = None) -> int:
    """Draw every complete week of the lookback that has no sample yet; items added."""
    if per_week <= 0:
        return 0
    return sum(draw(engine, week, per_week) for week in complete_weeks(now or datetime.now(UTC)))


@dataclass(frozen=True)
class BlindItem:
    """What an auditor is shown: where the finding is and what it says, never what the model rated it,
    its explanation (written to argue that rating) or whether it was posted."""

    id: int
    week: str
    project: str
    mr_number: int
    path: str
    line: int | None
    title: str
    review: str
    code: str


def next_item(
    engine: sa.Engine, per_week: int, exclude: Sequence[int] = (), now: datetime | None = None
) -> BlindItem | None:
    """The next unlabelled item (the newest week first, then drawn order), past ``exclude``; the due
    weeks are drawn first. None when every item is labelled."""
    draw_due(engine, per_week, now)
    with Session(engine) as session:
        query = (
            select(AuditItem, Finding, Review.mr_number, Project.path)
            .join(Finding, col(AuditItem.finding_id) == col(Finding.id))
            .join(Review, col(Finding.review_id) == col(Review.id))
            .join(Project, col(Review.project_id) == col(Project.id))
            .where(col(AuditItem.label).is_(None), col(AuditItem.id).not_in(list(exclude)))
            .order_by(col(AuditItem.week).desc(), col(AuditItem.id))
        )
        found = session.exec(query).first()
    if found is None:
        return None
    item, finding, mr_number, project = found
    assert item.id is not None
    return BlindItem(item.id, item.week, project, mr_number, finding.path, finding.line, finding.title,
                     finding.review, finding.code)  # fmt: skip


@dataclass(frozen=True)
class Recorded:
    """A label as recorded, and only now what the model had said."""

    item_id: int
    label: AuditLabel
    model_severity: Severity
    agreement: str  # agreed, over-rated, under-rated, not an issue, skipped

    def words(self) -> str:
        if self.label in (AuditLabel.NOT_AN_ISSUE, AuditLabel.SKIP):
            return f"recorded {self.label.value}; the model had rated it {self.model_severity.value}"
        return (
            f"recorded {self.label.value}; the model had said {self.model_severity.value}: {self.agreement}"
        )


def agreement(model: Severity, label: AuditLabel) -> str:
    """How the model's severity compares with the audit label: over-rated means the model said more
    severe than the auditor."""
    if label == AuditLabel.NOT_AN_ISSUE:
        return "not an issue"
    if label == AuditLabel.SKIP:
        return "skipped"
    difference = model.rank - Severity(label.value).rank
    return "agreed" if difference == 0 else "over-rated" if difference > 0 else "under-rated"


def record(engine: sa.Engine, item_id: int, label: AuditLabel, auditor: str) -> Recorded:
    """Record an auditor's label of item ``item_id``, with its audit log entry; a label is final
    (``AuditError`` says so)."""
    with Session(engine) as session:
        item = session.get(AuditItem, item_id)
        if item is None:
            raise AuditError(f"no audit item {item_id}")
        if item.label is not None:
            raise AuditError(
                f"audit item {item_id} was labelled {item.label} by {item.auditor} already; labels are final"
            )
        # Only the unlabelled row is updated: of two auditors labelling at once, one wins.
        done = session.execute(
            sa.update(AuditItem)
            .where(col(AuditItem.id) == item_id, col(AuditItem.label).is_(None))
            .values(label=label.value, auditor=auditor[:256], labelled_at=datetime.now(UTC))
        )
        if not done.rowcount:  # type: ignore[attr-defined]
            raise AuditError(f"audit item {item_id} was labelled by someone else just now; labels are final")
        finding = session.get(Finding, item.finding_id)
        assert finding is not None
        model = Severity(finding.severity)
        target = f"audit item {item_id} (finding {item.finding_id}, week {item.week})"
        audit.record(session, auditor, "audit_set.label", target, after={"label": label.value})
        session.commit()
    return Recorded(item_id, label, model, agreement(model, label))


@dataclass(frozen=True)
class AuditStats:
    week: str  # the current ISO week
    labelled_this_week: int
    waiting: int  # drawn, not labelled yet
    labelled: int  # every label, all weeks
    agreement: dict[str, int]  # agreed, over-rated, under-rated, not an issue, skipped
    matrix: dict[str, dict[str, int]]  # the model's severity -> the auditors' label -> count
    strata: dict[str, int]  # labelled items per stratum


AGREEMENTS = ("agreed", "over-rated", "under-rated", "not an issue", "skipped")


def stats(engine: sa.Engine, now: datetime | None = None) -> AuditStats:
    """How far the audit is, and — of labelled items only — how the model's severity compared."""
    week = iso_week((now or datetime.now(UTC)).astimezone(UTC).date())
    start = week_start(week)
    with Session(engine) as session:
        rows = session.exec(
            select(AuditItem, Finding.severity).join(Finding, col(AuditItem.finding_id) == col(Finding.id))
        ).all()
    labelled = [(item, severity) for item, severity in rows if item.label is not None]
    matrix = {s.value: dict.fromkeys([*(label.value for label in AuditLabel)], 0) for s in Severity}
    said: Counter[str] = Counter()
    strata: Counter[str] = Counter()
    for item, severity in labelled:
        label = AuditLabel(item.label or "")
        matrix[severity][label.value] += 1
        said[agreement(Severity(severity), label)] += 1
        strata[item.stratum] += 1
    this_week = sum(1 for item, _ in labelled if item.labelled_at and _aware(item.labelled_at) >= start)
    return AuditStats(
        week=week,
        labelled_this_week=this_week,
        waiting=len(rows) - len(labelled),
        labelled=len(labelled),
        agreement={name: said[name] for name in AGREEMENTS},
        matrix=matrix,
        strata=dict(sorted(strata.items())),
    )


@dataclass(frozen=True)
class LabelledItem:
    id: int
    week: str
    stratum: str
    path: str
    line: int | None
    title: str
    label: str
    model_severity: str
    auditor: str
    labelled_at: datetime


def labelled_items(engine: sa.Engine, limit: int = 100) -> list[LabelledItem]:
    """The newest labelled items, with the model's severity beside the label."""
    with Session(engine) as session:
        rows = session.exec(
            select(AuditItem, Finding)
            .join(Finding, col(AuditItem.finding_id) == col(Finding.id))
            .where(col(AuditItem.label).is_not(None))
            .order_by(col(AuditItem.labelled_at).desc(), col(AuditItem.id).desc())
            .limit(limit)
        ).all()
    return [
        LabelledItem(item.id or 0, item.week, item.stratum, finding.path, finding.line, finding.title,
                     item.label or "", finding.severity, item.auditor or "", _aware(item.labelled_at))
        for item, finding in rows
    ]  # fmt: skip


def golden_examples(session: Session) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The items labelled with a severity, as the severity task's (question, answer) pairs, built as
    reviewers' examples are (``bot.feedback.labels.severity_examples``): the code the model judged and
    its review. Not-an-issue and skipped items have no severity to be judged by."""
    severities = [s.value for s in Severity]
    rows = session.exec(
        select(Finding.code, Finding.review, AuditItem.label)
        .join(Finding, col(AuditItem.finding_id) == col(Finding.id))
        .where(col(AuditItem.label).in_(severities))
        .order_by(col(AuditItem.id))
    ).all()
    return [({"code": code, "review": review}, {"issue_type": label}) for code, review, label in rows]


def not_audited(fingerprint: Any) -> sa.ColumnElement[bool]:
    """A query condition: the finding (by its ``fingerprint`` column) is not in the audit set, drawn or
    labelled. Its reviewers' signals then never make a training example or teacher material."""
    return ~sa.exists().where(col(AuditItem.fingerprint) == fingerprint)


def _aware(when: datetime | None) -> datetime:
    """SQLite gives naive datetimes back; they were stored in UTC."""
    assert when is not None
    return when if when.tzinfo else when.replace(tzinfo=UTC)
