"""Acceptance figures: per project, model version and severity, how reviewers received the findings;
for ``reviewbot feedback stats`` and, read at each scrape, for ``/metrics``."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

import sqlalchemy as sa
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from bot.events import UP, SignalKind
from bot.feedback.labels import LabelledFinding, LabelState, labelled_findings

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


class FeedbackCollector(Collector):
    """Acceptance figures per project, model version and severity, read from the database at each
    scrape (the same numbers as ``reviewbot feedback stats``)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["project", "model_version", "severity"]
        findings = GaugeMetricFamily("reviewbot_findings", "Findings posted", labels=labels)
        rates = {
            name: GaugeMetricFamily(
                f"reviewbot_feedback_{name}_ratio", f"Share of findings: {name}", labels=labels
            )
            for name in RATES
        }
        for row in feedback_stats(labelled_findings(self.engine)):
            key = [row["project"], row["model_version"], row["severity"]]
            findings.add_metric(key, row["findings"])
            for name, family in rates.items():
                family.add_metric(key, row[f"{name}_rate"])
        yield findings
        yield from rates.values()
