"""Prometheus metrics, served on ``/metrics`` by the API process.

Reviews run by ``reviewbot worker`` processes count in those processes; with the embedded
consumer of ``reviewbot serve`` they show here too. Acceptance figures per model version come from
``bot.feedback.stats.FeedbackCollector``, which reads the database at each scrape.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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
SUPPRESSED = Counter(
    "reviewbot_findings_suppressed_total", "Findings not posted: too like one trusted reviewers dismissed"
)
