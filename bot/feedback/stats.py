"""Acceptance figures: per project, model version and severity, how reviewers received the findings;
for ``reviewbot feedback stats``, the console and, cached, ``/metrics``. And the severity confusion
matrix (``reviewbot feedback confusion``): what each model version said against what reviewers said."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlmodel import col

from bot.events import UP, SignalKind
from bot.feedback.labels import LabelledFinding, LabelState, labelled_findings, posted
from bot.models import Feedback, Finding, FindingStatus, Project, Review, Severity

RATES = ("with_feedback", "thumbs_up", "corrected", "dismissed", "addressed")
MAX_AGE_S = 60.0  # /metrics' figures are at most this old; Prometheus scrapes every 15-60 s


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


def acceptance(engine: sa.Engine, project_path: str | None = None) -> list[dict[str, Any]]:
    """``feedback_stats`` of every posted finding, counted by the database: a grouped count over
    findings and their signals, and labels worked out only for the findings a command judged (the
    only ones that can be corrected or dismissed). The same rows, however many findings there are;
    each also counts the findings not posted for being like dismissed ones (``suppressed``)."""
    kinds, values = col(Feedback.kind), col(Feedback.value)
    said = (
        sa.select(
            col(Feedback.finding_id).label("finding_id"),
            sa.func.max(sa.case((sa.and_(kinds == SignalKind.REACTION, values == UP), 1), else_=0))
            .label("thumbs_up"),
            sa.func.max(sa.case((kinds == SignalKind.ADDRESSED, 1), else_=0)).label("addressed"),
        )
        .group_by(col(Feedback.finding_id))
        .subquery()
    )  # fmt: skip
    group = (col(Project.path), col(Finding.model_version), col(Finding.severity))
    query = posted(
        sa.select(
            *group,
            sa.func.count(col(Finding.id)),
            sa.func.count(said.c.finding_id),
            sa.func.coalesce(sa.func.sum(said.c.thumbs_up), 0),
            sa.func.coalesce(sa.func.sum(said.c.addressed), 0),
        ).select_from(Finding),
        project_path,
    ).outerjoin(said, said.c.finding_id == col(Finding.id))
    counts: dict[tuple[str, str, str], dict[str, int]] = {}
    with engine.connect() as connection:
        for path, model, severity, findings, with_feedback, thumbs_up, addressed in connection.execute(
            query.group_by(*group)
        ).all():
            counts[(path, model, severity)] = {
                "findings": findings, "with_feedback": with_feedback, "thumbs_up": int(thumbs_up),
                "corrected": 0, "dismissed": 0, "addressed": int(addressed),
            }  # fmt: skip
    held = (
        sa.select(*group, sa.func.count(col(Finding.id)))
        .select_from(Finding)
        .join(Review, col(Finding.review_id) == col(Review.id))
        .join(Project, col(Review.project_id) == col(Project.id))
        .where(col(Finding.status) == FindingStatus.SUPPRESSED)
    )
    if project_path is not None:
        held = held.where(col(Project.path) == project_path)
    with engine.connect() as connection:
        for path, model, severity, suppressed in connection.execute(held.group_by(*group)).all():
            row = counts.setdefault((path, model, severity), dict.fromkeys(("findings", *RATES), 0))
            row["suppressed"] = suppressed
    judged = (SignalKind.SEVERITY, SignalKind.DISMISS)
    for item in labelled_findings(engine, project_path, with_signal_of=judged):
        state = item.label.state
        if state in (LabelState.CORRECTED, LabelState.DISMISSED):
            key = (item.project.path, item.finding.model_version, item.finding.severity)
            counts[key][state.value] += 1
    return [
        {
            "project": project,
            "model_version": model,
            "severity": severity,
            "findings": row["findings"],
            "suppressed": row.get("suppressed", 0),
            **{f"{name}_rate": round(row[name] / max(row["findings"], 1), 3) for name in RATES},
        }
        for (project, model, severity), row in sorted(counts.items())
    ]


DISMISSED = "dismissed"
VERDICTS = (*(s.value for s in Severity), DISMISSED)  # the confusion matrix's columns


@dataclass
class Confusion:
    """One model version's severities against the reviewers' verdicts on them: a ``/severity`` that
    confirmed or corrected it, or ``/dismiss``. Findings whose trusted reviewers disagree (disputed)
    are counted apart: they have no verdict."""

    model_version: str
    counts: dict[str, dict[str, int]] = field(
        default_factory=lambda: {s.value: dict.fromkeys(VERDICTS, 0) for s in Severity}
    )  # the model's severity -> the verdict (a severity, or "dismissed") -> findings
    disputed: int = 0

    def _sum(self, keep: Callable[[Severity, Severity], bool]) -> int:
        return sum(
            n
            for said, row in self.counts.items()
            for given, n in row.items()
            if given != DISMISSED and keep(Severity(said), Severity(given))
        )

    @property
    def judged(self) -> int:
        return sum(sum(row.values()) for row in self.counts.values())

    @property
    def agreed(self) -> int:
        return self._sum(lambda said, given: said == given)

    @property
    def over_rated(self) -> int:
        """The model said more severe than the reviewers."""
        return self._sum(lambda said, given: said.rank > given.rank)

    @property
    def under_rated(self) -> int:
        return self._sum(lambda said, given: said.rank < given.rank)

    @property
    def dismissed(self) -> int:
        return sum(row[DISMISSED] for row in self.counts.values())

    def words(self) -> str:
        """The matrix in a sentence: what an admin wants to know first."""
        if not self.judged:
            return f"{self.model_version}: no finding has a reviewer's verdict yet."
        disputed = f"; {self.disputed} disputed (reviewers disagree)" if self.disputed else ""
        return (
            f"{self.model_version}: of {self.judged} findings with a verdict, {self.agreed} rated right, "
            f"{self.over_rated} over-rated (the model said more severe than the reviewers), "
            f"{self.under_rated} under-rated (less severe), {self.dismissed} dismissed{disputed}."
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version, "counts": self.counts, "judged": self.judged,
            "agreed": self.agreed, "over_rated": self.over_rated, "under_rated": self.under_rated,
            "dismissed": self.dismissed, "disputed": self.disputed, "words": self.words(),
        }  # fmt: skip


def severity_confusion(engine: sa.Engine, project_path: str | None = None) -> list[Confusion]:
    """Per model version (in the order of their first findings), the confusion matrix of the posted
    findings a reviewer judged with a command: only those can be confirmed, corrected or dismissed."""
    matrices: dict[str, Confusion] = {}
    judged = (SignalKind.SEVERITY, SignalKind.DISMISS)
    for item in labelled_findings(engine, project_path, with_signal_of=judged):
        version = item.finding.model_version
        matrix = matrices.setdefault(version, Confusion(version))
        said, label = item.finding.severity, item.label
        if said not in matrix.counts:
            continue  # not a severity this bot knows: nothing to compare
        if label.state == LabelState.DISMISSED:
            matrix.counts[said][DISMISSED] += 1
        elif label.severity is not None:  # confirmed or corrected
            matrix.counts[said][label.severity.value] += 1
        elif label.state == LabelState.DISPUTED and any(s.kind in judged for s in item.trusted):
            matrix.disputed += 1  # trusted commands that disagree
    return list(matrices.values())


class FeedbackCollector(Collector):
    """Acceptance figures per project, model version and severity (``acceptance``: the same numbers
    as ``reviewbot feedback stats``), computed at most once every ``max_age_s``: a scrape between
    reads the cached figures, so scrapes cost the database nothing however often they come."""

    def __init__(
        self, engine: sa.Engine, max_age_s: float = MAX_AGE_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.engine, self.max_age_s, self.clock = engine, max_age_s, clock
        self._lock = threading.Lock()
        self._rows: list[dict[str, Any]] = []
        self._computed_at: float | None = None

    def rows(self) -> list[dict[str, Any]]:
        with self._lock:  # concurrent scrapes wait for one computation rather than each running one
            now = self.clock()
            if self._computed_at is None or now - self._computed_at >= self.max_age_s:
                self._rows, self._computed_at = acceptance(self.engine), now
            return self._rows

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["project", "model_version", "severity"]
        findings = GaugeMetricFamily("reviewbot_findings", "Findings posted", labels=labels)
        suppressed = GaugeMetricFamily(
            "reviewbot_findings_suppressed",
            "Findings not posted: like ones reviewers dismissed",
            labels=labels,
        )
        rates = {
            name: GaugeMetricFamily(
                f"reviewbot_feedback_{name}_ratio", f"Share of findings: {name}", labels=labels
            )
            for name in RATES
        }
        for row in self.rows():
            key = [row["project"], row["model_version"], row["severity"]]
            findings.add_metric(key, row["findings"])
            suppressed.add_metric(key, row["suppressed"])
            for name, family in rates.items():
                family.add_metric(key, row[f"{name}_rate"])
        yield findings
        yield suppressed
        yield from rates.values()
