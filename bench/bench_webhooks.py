"""Benchmark: webhook acknowledgement time through the real app (verify, dedupe, record, enqueue).

    .venv/bin/python bench/bench_webhooks.py [--deliveries 200] [--database-url URL]

Compares a pull_request delivery that queues a review (into a SQLite Huey queue) against a
"labeled" one that is only recorded and ignored (the baseline), in the same run; forges allow 10 s.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support

from fastapi.testclient import TestClient

from bot import db
from bot.api import create_app
from bot.queue import Queue
from tests.support import fixtures
from tests.support.db import session_scope
from tests.support.secrets import project_row, settings_with_key

FIXTURES = fixtures.FIXTURES / "github" / "webhooks"
SECRET = "bench-secret"


def timings(client: TestClient, body: bytes, event: str, count: int, expected: int) -> list[float]:
    seconds = []
    for _ in range(count):
        headers = {
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest(),
        }
        started = time.perf_counter()
        status = client.post("/webhooks/github", content=body, headers=headers).status_code
        seconds.append(time.perf_counter() - started)
        assert status == expected, status
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--deliveries", type=int, default=200)
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine = db.make_engine(args.database_url or f"sqlite:///{tmp}/bench.db")
        db.upgrade(engine)
        with session_scope(engine) as session:
            session.add(project_row(SECRET, forge="github", forge_url="x", path="Codertocat/Hello-World"))
        settings = settings_with_key(queue_url=f"sqlite:///{tmp}/queue.db")
        queue = Queue(settings, engine)  # the real enqueue
        with TestClient(create_app(engine, queue, settings)) as client:
            labeled = (FIXTURES / "pull_request.labeled.1.json").read_bytes()
            opened = (FIXTURES / "pull_request.opened.1.json").read_bytes()
            timings(client, opened, "pull_request", 20, 202)  # warm-up
            base = timings(client, labeled, "pull_request", args.deliveries, 200)
            review = timings(client, opened, "pull_request", args.deliveries, 202)
        for label, values in (
            ("labeled (recorded, ignored)", base),
            ("pull_request (review queued)", review),
        ):
            ms = sorted(v * 1000 for v in values)
            print(f"{label:>30}: median {statistics.median(ms):.2f} ms, p95 {ms[int(len(ms) * 0.95)]:.2f} ms")
        ratio = statistics.median(review) / statistics.median(base)
        print(f"queued review / ignored delivery, median: {ratio:.2f}x")


if __name__ == "__main__":
    main()
