"""A promoted adapter's canary: it first serves a share of merge requests (``bot.serving.in_canary``)
beside the version in use, and a periodic check compares how reviewers received both sides' findings
over the same period. A canary worse beyond chance is rolled back; otherwise it takes all traffic
after ``REVIEWBOT_CANARY_DAYS``, or earlier once no rate can be much worse.

The sides: the posted findings created since the canary began, each on the side of the model its
review used for the canary's task (``Review.report["models"]``: exact even for a review that began
before the canary), counted among those a trusted reviewer reacted to ("judged": the label of
``bot.feedback.labels`` is not unlabelled). Four rates: a standing 👍 and an addressing push (higher
is better); a dismissal (``/dismiss`` or a standing 👎) and a correction (``/severity`` of another
severity) (lower is better).

The decision, at "looks" spaced by evidence (the fewer side's judged findings reaching
``REVIEWBOT_CANARY_MIN_FINDINGS`` × 1, 2, 4, …) and at the end of the period:

- rolled back when a rate is worse by a one-sided two-proportion z-test at level α / 2^k / 4 at the
  k-th look (Bonferroni over the four rates; the levels of all looks sum to α, so a canary no worse
  than the version in use is rolled back with probability at most α however long it runs);
- takes all traffic early when, at that look's level, every rate's upper confidence bound of how much
  worse the canary is stays below ``REVIEWBOT_CANARY_MARGIN`` (each rate shown no worse than the
  margin: an intersection-union test, which needs no correction);
- otherwise it waits, and at the end of the period takes all traffic (it passed the offline gate and
  reviewers' reactions showed no harm), saying so when there was too little feedback to compare.

Every end is written on the version's row (``canary_reason``, with the figures) and in the audit log
(actor ``canary``, or the admin who ended it).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from bot import audit
from bot.config import Settings
from bot.events import DOWN, UP, SignalKind
from bot.feedback.labels import LabelledFinding, LabelState, labelled_findings
from bot.feedback.proportions import worse_p_value, worse_upper_bound
from bot.models import ModelStatus, ModelVersion, Review, Task, utcnow

log = logging.getLogger(__name__)

ACTOR = "canary"  # the audit log's actor of the check's own decisions
HIGHER_IS_BETTER = {"thumbs_up": True, "addressed": True, "dismissed": False, "corrected": False}


class Verdict(StrEnum):
    WAIT = "wait"
    ROLL_BACK = "roll back"
    TAKE_ALL = "take all traffic"


@dataclass(frozen=True)
class Rule:
    min_findings: int
    alpha: float
    margin: float
    days: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Rule:
        return cls(settings.canary_min_findings, settings.canary_alpha, settings.canary_margin,
                   settings.canary_days)  # fmt: skip

    def look_level(self, look: int) -> float:
        """The error level of the ``look``-th look (1, 2, …): α/2, α/4, …, which sum to at most α."""
        return self.alpha * 0.5**look


@dataclass
class Side:
    """One side's judged findings, and how many of them had each outcome."""

    judged: int = 0
    thumbs_up: int = 0
    addressed: int = 0
    dismissed: int = 0
    corrected: int = 0

    def add(self, item: LabelledFinding) -> None:
        if item.label.state == LabelState.UNLABELLED:
            return
        standing = _standing_reactions(item)
        self.judged += 1
        self.thumbs_up += UP in standing
        self.addressed += any(s.kind == SignalKind.ADDRESSED for s in item.trusted)
        self.dismissed += item.label.state == LabelState.DISMISSED or DOWN in standing
        self.corrected += item.label.state == LabelState.CORRECTED

    def bad(self, rate: str) -> int:
        """Findings with the bad outcome of ``rate``: without it when higher is better."""
        count: int = getattr(self, rate)
        return self.judged - count if HIGHER_IS_BETTER[rate] else count

    def rate(self, rate: str) -> float:
        return getattr(self, rate) / self.judged if self.judged else 0.0


def _standing_reactions(item: LabelledFinding) -> set[str]:
    """The trusted reviewers' reactions still in place: each one's latest (a withdrawn one is "")."""
    latest: dict[str, str] = {}
    for signal in sorted(item.trusted, key=lambda s: (s.created_at, s.id or 0)):
        if signal.kind == SignalKind.REACTION:
            latest[signal.author] = signal.value
    return set(latest.values())


@dataclass(frozen=True)
class Comparison:
    """One rate on both sides: the one-sided p-value that the canary is worse, and how much worse
    (as a difference of bad-outcome rates) it could be at the look's level."""

    rate: str
    canary: float
    baseline: float
    p_value: float
    worse_by_at_most: float

    def words(self) -> str:
        return f"{self.rate} {self.canary:.0%} vs {self.baseline:.0%} (p = {self.p_value:.2g})"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str
    looks: int  # looks taken so far, this one included
    comparisons: tuple[Comparison, ...] = ()


def judge(canary: Side, baseline: Side, looks: int, rule: Rule, *, period_over: bool) -> Decision:
    """What to do with a canary after ``looks`` looks, given both sides' findings now."""
    evidence = min(canary.judged, baseline.judged)
    sizes = f"{canary.judged} judged findings on the canary, {baseline.judged} on the version in use"
    if evidence < rule.min_findings * 2**looks and not period_over:
        return Decision(
            Verdict.WAIT, f"waiting: {sizes}; next look at {rule.min_findings * 2**looks} each", looks
        )
    if evidence < rule.min_findings:
        return Decision(
            Verdict.TAKE_ALL,
            f"took all traffic after {rule.days:g} days with too little feedback to compare: {sizes} "
            f"(at least {rule.min_findings} each are needed); nothing showed it worse",
            looks,
        )
    look = looks + 1
    level = rule.look_level(look)
    comparisons = tuple(
        Comparison(
            rate,
            canary.rate(rate),
            baseline.rate(rate),
            worse_p_value(canary.bad(rate), canary.judged, baseline.bad(rate), baseline.judged),
            worse_upper_bound(canary.bad(rate), canary.judged, baseline.bad(rate), baseline.judged, level),
        )
        for rate in HIGHER_IS_BETTER
    )
    per_rate = level / len(HIGHER_IS_BETTER)
    worse = [c for c in comparisons if c.p_value < per_rate]
    test = f"one-sided two-proportion z-test, look {look}, level {per_rate:.2g} per rate"
    if worse:
        said = "; ".join(c.words() for c in worse)
        return Decision(
            Verdict.ROLL_BACK, f"rolled back: worse on {said}; {sizes} ({test})", look, comparisons
        )
    bound = max(c.worse_by_at_most for c in comparisons)
    if bound < rule.margin:
        return Decision(
            Verdict.TAKE_ALL,
            f"took all traffic: no rate can be worse by {rule.margin:.0%} (at most {bound:.1%} at level "
            f"{level:.2g}); {sizes}",
            look,
            comparisons,
        )
    if period_over:
        said = "; ".join(c.words() for c in comparisons)
        return Decision(
            Verdict.TAKE_ALL,
            f"took all traffic after {rule.days:g} days, no rate worse beyond chance: {said}; {sizes} "
            f"({test})",
            look,
            comparisons,
        )
    return Decision(Verdict.WAIT, f"look {look}: no rate worse beyond chance yet; {sizes}", look, comparisons)


# --- the canary's life --------------------------------------------------------------------------


def running(session: Session, task: Task) -> ModelVersion | None:
    return session.exec(
        select(ModelVersion).where(ModelVersion.task == task.value, ModelVersion.status == ModelStatus.CANARY)
    ).first()


def start(session: Session, version: ModelVersion, share: float) -> ModelVersion:
    """``version`` serves ``share`` of merge requests from now, beside the active version."""
    end_undecided(session, version)
    now = utcnow()
    version.status, version.canary_share, version.canary_started_at = ModelStatus.CANARY, share, now
    version.canary_ended_at, version.canary_reason, version.canary_figures = None, None, {}
    session.add(version)
    session.commit()
    session.refresh(version)
    return version


def end_undecided(session: Session, promoted: ModelVersion) -> None:
    """A canary of ``promoted``'s task still running ends undecided: a candidate again (nothing showed
    it worse). Flushed; the caller commits with the promotion."""
    earlier = running(session, Task(promoted.task))
    if earlier is not None and earlier.id != promoted.id:
        earlier.status, earlier.canary_ended_at = ModelStatus.CANDIDATE, utcnow()
        earlier.canary_reason = f"ended undecided: {promoted.adapter_name} was promoted while it ran"
        session.add(earlier)
        session.flush()


def take_all_traffic(
    session: Session, version: ModelVersion, reason: str, actor: str | None = ACTOR
) -> ModelVersion:
    """End the canary: ``version`` becomes its task's active version, the one before it retires. With
    ``actor``, the audit entry is written in the change's transaction."""
    current = _active(session, version.task)
    if current is not None:
        current.status = ModelStatus.RETIRED
        session.add(current)
        session.flush()  # at most one active version per task, at every moment
    now = utcnow()
    version.status, version.promoted_at, version.canary_ended_at = ModelStatus.ACTIVE, now, now
    version.canary_reason = reason
    session.add(version)
    if actor is not None:
        before = {"active": current.adapter_name if current else None, "canary": version.adapter_name}
        after = {"active": version.adapter_name, "canary": None, "reason": reason}
        audit.record(session, actor, "model.promote", f"{version.task} model", before, after)
    session.commit()
    session.refresh(version)
    return version


def roll_back(
    session: Session, version: ModelVersion, reason: str, actor: str | None = ACTOR
) -> ModelVersion:
    """End the canary: ``version`` is rolled back, never served again; the active version keeps all
    traffic. With ``actor``, the audit entry is written in the change's transaction."""
    version.status, version.canary_ended_at, version.canary_reason = ModelStatus.ROLLED_BACK, utcnow(), reason
    session.add(version)
    if actor is not None:
        current = _active(session, version.task)
        after = {"active": current.adapter_name if current else None, "canary": None,
                 "rolled_back": version.adapter_name, "reason": reason}  # fmt: skip
        audit.record(session, actor, "model.rollback", f"{version.task} model",
                     {"canary": version.adapter_name}, after)  # fmt: skip
    session.commit()
    session.refresh(version)
    return version


def _active(session: Session, task: str) -> ModelVersion | None:
    return session.exec(
        select(ModelVersion).where(ModelVersion.task == task, ModelVersion.status == ModelStatus.ACTIVE)
    ).first()


# --- the periodic check -------------------------------------------------------------------------


def live_sides(engine: sa.Engine, version: ModelVersion) -> tuple[Side, Side]:
    """The canary's side and the version in use's side, since the canary began."""
    assert version.canary_started_at is not None
    since = _aware(version.canary_started_at)
    with Session(engine) as session:
        reports = session.exec(
            select(col(Review.id), col(Review.report)).where(col(Review.finished_at) >= since)
        ).all()
    model_of = {review_id: (report.get("models") or {}).get(version.task) for review_id, report in reports}
    canary, baseline = Side(), Side()
    for item in labelled_findings(engine, since=since):
        model = model_of.get(item.finding.review_id)
        if model is not None:  # None: its review is still running, or is of before reports named models
            (canary if model == version.adapter_name else baseline).add(item)
    return canary, baseline


def check(engine: sa.Engine, settings: Settings, now: datetime | None = None) -> list[str]:
    """Judge every running canary (the periodic job); what happened to each, in words."""
    now = now or datetime.now(UTC)
    rule = Rule.from_settings(settings)
    with Session(engine) as session:
        canaries = session.exec(select(ModelVersion).where(ModelVersion.status == ModelStatus.CANARY)).all()
    outcomes = []
    for version in canaries:
        assert version.canary_started_at is not None
        canary, baseline = live_sides(engine, version)
        looks = int((version.canary_figures or {}).get("looks", 0))
        period_over = now >= _aware(version.canary_started_at) + timedelta(days=rule.days)
        decision = judge(canary, baseline, looks, rule, period_over=period_over)
        outcomes.append(
            f"{version.adapter_name}: {_apply(engine, version, decision, (canary, baseline), now)}"
        )
    return outcomes


def _apply(
    engine: sa.Engine, version: ModelVersion, decision: Decision, sides: tuple[Side, Side], now: datetime
) -> str:
    with Session(engine) as session:
        row = session.exec(select(ModelVersion).where(ModelVersion.id == version.id).with_for_update()).one()
        if row.status != ModelStatus.CANARY:
            return "ended while it was checked"  # an admin promoted or rolled it back meanwhile
        row.canary_figures = _figures(decision, sides, now)
        if decision.verdict == Verdict.ROLL_BACK:
            log.warning("canary %s %s", row.adapter_name, decision.reason)
            roll_back(session, row, decision.reason)
        elif decision.verdict == Verdict.TAKE_ALL:
            log.info("canary %s %s", row.adapter_name, decision.reason)
            take_all_traffic(session, row, decision.reason)
        else:
            session.add(row)
            session.commit()
    return decision.reason


def _figures(decision: Decision, sides: tuple[Side, Side], now: datetime) -> dict[str, Any]:
    """The check's figures, for the console and ``models list``; ``looks`` is the state the next check
    reads (the levels already spent)."""
    return {
        "looks": decision.looks,
        "checked_at": now.isoformat(),
        "canary": asdict(sides[0]),
        "baseline": asdict(sides[1]),
        "comparisons": [asdict(c) for c in decision.comparisons],
        "said": decision.reason,
    }


def describe(version: ModelVersion) -> str:
    """The version's canary in a line: running (share, since, last check) or why it ended; "" if none."""
    if version.canary_started_at is None:
        return ""
    if version.status != ModelStatus.CANARY:
        return version.canary_reason or ""
    began = _aware(version.canary_started_at).strftime("%Y-%m-%d %H:%M UTC")
    said = (version.canary_figures or {}).get("said") or "not checked yet"
    return f"canary on {version.canary_share or 0:.0%} of merge requests since {began}: {said}"


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo else when.replace(tzinfo=UTC)  # SQLite gives naive UTC back
