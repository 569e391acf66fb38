"""What the console shows, made as the product makes it: a project on the fake GitLab whose merge
requests the real review job reviewed (with the scripted student) and reviewers labelled, a second
project with hostile names, adapter versions and flywheel runs. Hostile text is script that would
run, or be blocked by the CSP with a console error, if a page rendered it raw."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bot import audit
from bot.events import SignalKind
from bot.feedback.signals import record_signal
from bot.models import FlywheelRun, ModelStatus, ModelVersion, Project, Review, ReviewStatus, RunStatus, Task
from flywheel.cycle import RoundRecord, TrainStats, round_zero
from flywheel.data import parse_example
from flywheel.evaluate import Score, accuracy
from flywheel.spec import spec_for
from flywheel.take import Attempt
from tests.review.test_review_flow import SECRET
from tests.support.db import session_scope
from tests.support.reviewed_site import QUERY, SERVICE, Site
from tests.support.secrets import BOX
from tests.support.severity_task import make_examples

HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>"
SEVERITY = spec_for(Task.SEVERITY)


@dataclass(frozen=True)
class World:
    project_id: int
    hostile_project_id: int
    done_run: int
    live_run: int


def seal_secret(site: Site) -> None:
    """The site's project with the webhook secret ``deliver`` signs with, sealed as ``project add``
    seals it (with the tests' secret key)."""
    site.project(webhook_secret=BOX.seal(SECRET))


def fill(site: Site, adapters: Path) -> World:
    seal_secret(site)
    reviewed(site)
    hostile = hostile_project(site.engine)
    done, live = runs(site.engine)
    versions(site.engine, adapters, done)
    with session_scope(site.engine) as session:
        audit.record(session, "admin token", "project.update", f"project {hostile} ({HOSTILE})",
                     {"severity_threshold": "minor"}, {"severity_threshold": HOSTILE}, hostile)  # fmt: skip
    return World(site.project_id, hostile, done, live)


def reviewed(site: Site) -> None:
    """Two merge requests reviewed for real; a trusted reviewer corrects one severity and dismisses a
    finding (with hostile words); a hostile-named reviewer reacts."""
    first = site.open_mr({"svc/query.py": QUERY, "svc/client.py": SERVICE})
    site.review(first)
    site.command(site.finding(first, "SQL"), "bob", SignalKind.SEVERITY, "major")
    site.command(site.finding(first, "timeout"), "bob", SignalKind.DISMISS, f"we retry {HOSTILE}")
    second = site.open_mr({f"svc/{HOSTILE}.py": QUERY})
    site.review(second)
    with session_scope(site.engine) as session:
        finding = site.finding(second, "SQL").id
        assert finding is not None
        record_signal(session, finding, SignalKind.REACTION, "+1", HOSTILE, "award:1", role="developer")


def hostile_project(engine: sa.Engine) -> int:
    """A project (on no live forge) with hostile names and a failed review with a hostile error."""
    with session_scope(engine) as session:
        project = Project(forge="gitlab", forge_url="http://127.0.0.1:9", path=f"evil/{HOSTILE}",
                          webhook_secret=BOX.seal("x"), ignore_globs=[f"{HOSTILE}/**"])  # fmt: skip
        session.add(project)
        session.flush()
        assert project.id is not None
        session.add(Review(project_id=project.id, mr_number=7, head_sha="b" * 40, status=ReviewStatus.FAILED,
                           error=f"the forge said {HOSTILE}", mr_author=HOSTILE))  # fmt: skip
        return project.id


def _score(right: int) -> Score:
    """The score of a model that rates the first ``right`` of eight examples right."""
    examples = [parse_example(SEVERITY, e, "browser") for e in make_examples(8)]
    answers = [e.answer["issue_type"] if i < right else "trivial" for i, e in enumerate(examples)]
    return accuracy([Attempt(e, {"issue_type": a}) for e, a in zip(examples, answers, strict=True)])


def run_rounds(trained: int) -> list[dict[str, Any]]:
    """Round 0 and ``trained`` rounds, in the format a run stores them (``RoundRecord``)."""
    rounds = [round_zero("base-student", _score(3), _score(4), 1, test_size=3)]
    for number in range(1, trained + 1):
        held = _score(3 + 2 * number)
        rounds.append(RoundRecord(
            number=number, model=f"severity-v{number}", exam_size=12, exam_malformed=1, exam_duplicates=0,
            exam_score=0.5, teacher_score=6, feedback=f"Confuses minor and trivial {HOSTILE}",
            new_examples=10, new_dropped=1, curriculum=40 * number, heldout=held.value, detail=held.summary(),
            train=TrainStats(4000, 900.0, 512.0, 0.4 / number), teacher_tokens=20_000 * number,
            timings={"exam": 1.0, "finetune": 9.5}, golden=0.6, golden_version=1,
        ).to_json())  # fmt: skip
    return rounds


def runs(engine: sa.Engine) -> tuple[int, int]:
    """A finished run (promoted its second round's adapter) and one still running."""
    started = datetime.now(UTC) - timedelta(hours=2)
    with session_scope(engine) as session:
        done = FlywheelRun(task="severity", status=RunStatus.DONE, rounds=run_rounds(2),
                           outcome="promoted severity-v2: severity-v2 gains 0.250", started_at=started,
                           finished_at=started + timedelta(minutes=30))  # fmt: skip
        live = FlywheelRun(task="severity", status=RunStatus.RUNNING, rounds=run_rounds(1))
        session.add_all([done, live])
        session.flush()
        assert done.id is not None
        assert live.id is not None
        return done.id, live.id


def versions(engine: sa.Engine, adapters: Path, run_id: int | None = None) -> None:
    """severity-v1 retired, severity-v2 active, severity-v3 a candidate; each with its adapter folder."""
    promoted = datetime.now(UTC) - timedelta(days=3)
    with session_scope(engine) as session:
        for number, status in enumerate((ModelStatus.RETIRED, ModelStatus.ACTIVE, ModelStatus.CANDIDATE), 1):
            name = f"severity-v{number}"
            folder = adapters / name
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "adapter_config.json").write_text('{"r": 4}\n')
            metrics = {"heldout": 0.5 + number / 10, "baseline": 0.5, "golden": 0.55 + number / 20,
                       "golden_version": 1, "run_id": run_id}  # fmt: skip
            when = None if status == ModelStatus.CANDIDATE else promoted + timedelta(days=number)
            session.add(ModelVersion(task="severity", adapter_name=name, path=str(folder), metrics=metrics,
                                     base_model="base-student", status=status, promoted_at=when))  # fmt: skip
