"""Benchmark: the console on a busy installation's database. A migrated database gets a few projects,
reviews with 10,000 findings (most posted, most with reviewers' feedback: severity corrections and
confirmations, dismissals, reactions), adapter versions, flywheel runs and audit entries; the app
runs in-process (TestClient, signed in as a browser is) and every console page and main API call is
timed, the median of ``--repeat`` requests after a warm-up one, with ``/healthz`` (one ``SELECT 1``)
as the baseline in the same run. Prints a table: ms, and the ratio to ``/healthz``.

The health page and ``/api/v1/health`` run ``reviewbot doctor``'s checks, which call the model
servers and forges: here they are refused at once (nothing listens), so the figure is the checks'
own work, not a network's.

    .venv/bin/python bench/bench_console.py [--findings 10000] [--repeat 15] [--database-url URL]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support

import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlmodel import Session

from bot import audit, db
from bot.events import SignalKind
from bot.models import (
    Feedback,
    Finding,
    FindingStatus,
    FlywheelRun,
    ModelStatus,
    ModelVersion,
    Project,
    Review,
    ReviewStatus,
    RunStatus,
    Severity,
)
from tests.browser.world import run_rounds
from tests.support.console import Admin, console_app, sign_in
from tests.support.secrets import BOX, SECRET_KEY

PROJECTS = 4
FINDINGS_PER_REVIEW = 20
NOWHERE = "http://127.0.0.1:9"  # refused at once: the doctor's forge and model checks cost no wait
SEVERITIES = [s.value for s in Severity]
MODELS = ["base-student", "severity-v1", "severity-v2", "severity-v3"]


def fill(engine: sa.Engine, findings: int, seed: int = 7) -> dict[str, int]:
    """The database; returns the ids the timed paths name and the feedback rows made."""
    rng = random.Random(seed)
    with Session(engine) as session:
        projects = _projects(session)
        reviews = _reviews(session, projects, findings // FINDINGS_PER_REVIEW, rng)
        rows = _findings(session, reviews, findings, rng)
        feedback = _feedback(session, rows, rng)
        run = _trainer(session)
        for n in range(300):
            project = projects[n % PROJECTS]
            target = f"project {project.id} ({project.path})"
            audit.record(session, "admin token", "project.update", target, {"max_comments": n},
                         {"max_comments": n + 1}, project.id)  # fmt: skip
        session.commit()
        assert projects[0].id is not None
        return {"project": projects[0].id, "run": run, "feedback": feedback}


def _projects(session: Session) -> list[Project]:
    projects = [
        Project(forge="gitlab" if n % 2 else "github", forge_url=NOWHERE, path=f"team{n}/service-{n}",
                webhook_secret=BOX.seal(f"secret-{n}"), webhook_key=f"key{n:04d}", bot_username="reviewbot")
        for n in range(PROJECTS)
    ]  # fmt: skip
    session.add_all(projects)
    session.flush()
    return projects


def _reviews(session: Session, projects: list[Project], count: int, rng: random.Random) -> list[Review]:
    """Reviews five minutes apart, one in 50 failed, each with a report as the review job writes it."""
    now, rows = datetime.now(UTC), []
    for n in range(count):
        failed, queued = n % 50 == 49, now - timedelta(minutes=5 * (count - n))
        counts = {s: rng.randint(0, 8) for s in SEVERITIES}
        report = {"findings": counts, "posted": sum(counts.values()), "suppressed": 1, "listed": 0,
                  "skipped": [["vendor/lib.min.js", "generated"]], "skipped_total": 1, "failed": [],
                  "failed_total": 0, "stopped": None, "models": {"find": "base-student"}}  # fmt: skip
        rows.append(Review(
            project_id=_id(projects[n % PROJECTS]), mr_number=1 + n // 2, head_sha=f"{n:040x}",
            mr_author=f"dev{n % 9}", status=ReviewStatus.FAILED if failed else ReviewStatus.DONE,
            error="the model server was unreachable (connection refused)" if failed else None, report=report,
            created_at=queued, started_at=queued, finished_at=queued + timedelta(seconds=rng.uniform(5, 90)),
        ))  # fmt: skip
    session.add_all(rows)
    session.flush()
    return rows


def _findings(session: Session, reviews: list[Review], count: int, rng: random.Random) -> list[Finding]:
    """``FINDINGS_PER_REVIEW`` a review, nine in ten posted, made by four model versions in turn."""
    rows = [
        Finding(
            review_id=_id(reviews[n // FINDINGS_PER_REVIEW]), path=f"svc/m{n % 300}.py", line=1 + n % 200,
            severity=rng.choice(SEVERITIES), title=f"Issue {n % 40}", review=f"The call on line {n} leaks.",
            explanation="It matters here.", code=f"  {n % 200} +handle = open(path_{n})",
            fingerprint=f"{n:016x}", forge_comment_id=str(100_000 + n), confidence=rng.uniform(0.3, 1.0),
            model_version=MODELS[n * len(MODELS) // count], status=FindingStatus.LISTED if n % 10 == 0 else
            FindingStatus.POSTED, created_at=reviews[n // FINDINGS_PER_REVIEW].created_at,
        )
        for n in range(count)
    ]  # fmt: skip
    session.add_all(rows)
    session.flush()
    return rows


def _feedback(session: Session, findings: list[Finding], rng: random.Random) -> int:
    """On four findings in five, a trusted reviewer's signal: /severity (45%), /dismiss, a reaction."""
    made = 0
    for n, finding in enumerate(findings):
        roll = rng.random()
        if roll >= 0.8:
            continue
        kind, value = (
            (SignalKind.SEVERITY, rng.choice(SEVERITIES)) if roll < 0.45
            else (SignalKind.DISMISS, "not a problem here") if roll < 0.6
            else (SignalKind.REACTION, rng.choice(["+1", "-1"]))
        )  # fmt: skip
        session.add(Feedback(finding_id=_id(finding), kind=kind, value=value, author=f"rev{n % 7}",
                             role="developer" if n % 5 else "maintainer", source_event_id=f"bench:{n}",
                             created_at=finding.created_at))  # fmt: skip
        made += 1
    session.flush()
    return made


def _trainer(session: Session) -> int:
    """Eleven finished flywheel runs and one running; three adapter versions and a candidate. Returns
    the first run's id."""
    now = datetime.now(UTC)
    days = [now - timedelta(days=12 - n) for n in range(11)]
    runs = [
        FlywheelRun(task="severity", status=RunStatus.DONE, rounds=run_rounds(3), outcome="promoted",
                    started_at=day, finished_at=day + timedelta(hours=1))
        for day in days
    ] + [FlywheelRun(task="severity", status=RunStatus.RUNNING, rounds=run_rounds(1))]  # fmt: skip
    session.add_all(runs)
    for n, name in enumerate(MODELS[1:], 1):
        status = ModelStatus.ACTIVE if n == len(MODELS) - 1 else ModelStatus.RETIRED
        metrics = {"heldout": 0.6 + n / 20, "golden": 0.6, "golden_version": 1}
        session.add(ModelVersion(task="severity", adapter_name=name, path=f"/adapters/{name}",
                                 metrics=metrics, base_model="base-student", status=status,
                                 promoted_at=days[n]))  # fmt: skip
    session.add(ModelVersion(task="severity", adapter_name="severity-v4", path="/adapters/severity-v4",
                             base_model="base-student", metrics={"heldout": 0.8}))  # fmt: skip
    session.flush()
    assert runs[0].id is not None
    return runs[0].id


def _id(row: Project | Review | Finding) -> int:
    assert row.id is not None  # flushed
    return row.id


def timed(call: Callable[[], Any], repeat: int) -> float:
    """The median ms of ``repeat`` calls after a warm-up one; each must answer 2xx."""
    samples = []
    for n in range(repeat + 1):
        started = time.perf_counter()
        response = call()
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code >= 300:
            raise SystemExit(
                f"{response.request.method} {response.request.url}: {response.status_code} "
                f"{response.text[:300]}"
            )
        if n:
            samples.append(elapsed)
    return statistics.median(samples)


def paths(ids: dict[str, int]) -> tuple[list[str], list[str]]:
    project, run = ids["project"], ids["run"]
    shared = ["projects", f"projects/{project}", "reviews", f"reviews?project={project}", "verdicts",
              f"verdicts?project={project}", "models", "health", "audit"]  # fmt: skip
    pages = [f"/admin/{p}" for p in [*shared, "reviews?status=failed", "flywheel", f"flywheel/{run}"]]
    api = [f"/api/v1/{p}" for p in [*shared, "flywheel/runs", f"flywheel/runs/{run}"]]
    return pages, api


def measure(admin: Admin, ids: dict[str, int], repeat: int) -> list[tuple[str, float]]:
    client = admin.client
    pages, api = paths(ids)
    figures = [("GET /healthz", timed(lambda: client.get("/healthz"), repeat))]
    figures += [(f"GET {path}", timed(partial(client.get, path), repeat)) for path in pages + api]
    values = iter(range(1, 10_000))
    patch = f"/api/v1/projects/{ids['project']}"

    def change() -> Any:
        return admin.api("PATCH", patch, json={"max_comments": 10 + next(values) % 20})

    return [*figures, (f"PATCH {patch}", timed(change, repeat))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--findings", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--database-url", help="an empty database (default: a SQLite file of its own)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        engine = db.make_engine(args.database_url or f"sqlite:///{folder}/console.db")
        db.upgrade(engine)
        started = time.perf_counter()
        ids = fill(engine, args.findings)
        reviews, made_s = args.findings // FINDINGS_PER_REVIEW, time.perf_counter() - started
        print(f"{engine.url.get_backend_name()}: {PROJECTS} projects, {reviews} reviews, {args.findings} "
              f"findings, {ids['feedback']} feedback rows (made in {made_s:.1f} s); median of {args.repeat} "
              "requests each")  # fmt: skip
        models = {
            "student_base_url": f"{NOWHERE}/v1",
            "teacher_base_url": f"{NOWHERE}/v1",
            "teacher_model": "t",
        }
        app, _ = console_app(engine, secret_key=SECRET_KEY, flywheel_dir=Path(folder), **models)
        with TestClient(app) as client:
            figures = measure(sign_in(client), ids, args.repeat)
        engine.dispose()
    baseline = figures[0][1]
    width = max(len(name) for name, _ in figures)
    print(f"{'request':<{width}}  {'ms':>8}  {'× /healthz':>10}")
    for name, ms in figures:
        print(f"{name:<{width}}  {ms:8.1f}  {ms / baseline:10.1f}")


if __name__ == "__main__":
    main()
