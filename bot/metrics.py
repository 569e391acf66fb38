"""Prometheus metrics, served on ``/metrics`` by the API process.

Reviews run by ``reviewbot worker`` processes count in those processes; with the embedded
consumer of ``reviewbot serve`` they show here too.
"""

from __future__ import annotations

from collections.abc import Iterator

import sqlalchemy as sa
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

DELIVERIES = Counter(
    "reviewbot_webhook_deliveries_total", "Webhook deliveries by forge and outcome", ["forge", "outcome"]
)
ACK_SECONDS = Histogram(
    "reviewbot_webhook_ack_seconds",
    "Time to answer a webhook delivery",
    ["forge"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0),
)
REVIEWS = Counter("reviewbot_reviews_total", "Review jobs by final status", ["status"])
REVIEW_SECONDS = Histogram(
    "reviewbot_review_seconds",
    "Wall time of a review job that ran to the end",
    buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1800),
)
FINDINGS = Counter("reviewbot_findings_total", "Findings of finished reviews by severity", ["severity"])


class FeedbackCollector(Collector):
    """Acceptance figures per project, model version and severity, read from the database at each
    scrape (the same numbers as ``reviewbot feedback stats``)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from bot.feedback import RATES, feedback_stats, labelled_findings

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
