"""The trainer queue: a Huey queue of its own (one worker, beside the GPU), with a periodic job that
starts a flywheel run once reviewers have labelled enough new examples since the last run."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from huey import Huey, crontab
from sqlmodel import Session, col, select

from bot.config import Settings
from bot.models import ExampleSource, FlywheelRun, RunStatus, Task, TrainingExample
from bot.queue import make_huey
from bot.secrets import secret_box
from flywheel.cycle import Plan, run_flywheel
from flywheel.data import feedback_examples
from flywheel.spec import spec_for

log = logging.getLogger(__name__)
TRAINER_QUEUE = "reviewbot-trainer"
STALE_RUN = timedelta(hours=24)  # without a wall-time budget, a run older than this is presumed dead
TRAINED_TASKS = (Task.SEVERITY,)  # the explanation task needs a reference model's answers first


def new_feedback_examples(engine: sa.Engine, task: Task) -> int:
    """Reviewer-labelled examples not yet stored by a run (each run stores all there are)."""
    spec = spec_for(task)
    with Session(engine) as session:
        stored = set(
            session.exec(
                select(TrainingExample.key).where(
                    TrainingExample.task == task.value, TrainingExample.source == ExampleSource.FEEDBACK
                )
            ).all()
        )
    return sum(1 for example in feedback_examples(engine, spec) if example.key not in stored)


def abandon_stale_runs(engine: sa.Engine, older_than: timedelta, now: datetime | None = None) -> int:
    """Mark failed the runs still "running" long after they started: their process died (a killed
    worker, a lost machine) and would otherwise block every later run."""
    cutoff = (now or datetime.now(UTC)) - older_than
    with Session(engine) as session:
        stale = session.exec(
            select(FlywheelRun).where(
                col(FlywheelRun.status) == RunStatus.RUNNING, col(FlywheelRun.started_at) < cutoff
            )
        ).all()
        for run in stale:
            log.warning("flywheel run %s was abandoned (started %s)", run.id, run.started_at)
            run.status = RunStatus.FAILED
            run.error = f"abandoned: still running {older_than} after it started; its process is gone"
            run.finished_at = datetime.now(UTC)
            session.add(run)
        session.commit()
    return len(stale)


def running(engine: sa.Engine) -> bool:
    with Session(engine) as session:
        return (
            session.exec(select(FlywheelRun.id).where(col(FlywheelRun.status) == RunStatus.RUNNING)).first()
            is not None
        )


class TrainerQueue:
    """The trainer's Huey queue with its two tasks registered on it: a run of one task, and the
    hourly check that queues a run where reviewers labelled enough new examples."""

    def __init__(self, settings: Settings, engine: sa.Engine) -> None:
        self.settings, self.engine = settings, engine
        self.huey: Huey = make_huey(settings.queue_url, secret_box(settings).queue_key(), name=TRAINER_QUEUE)
        self._enqueue_run = self.huey.task(name="flywheel_run")(self.flywheel_run)
        self.huey.periodic_task(crontab(minute="0"), name="flywheel_when_due")(self.flywheel_when_due)

    def flywheel_run(self, task: str) -> str:
        """One flywheel run of ``task`` with the configured plan; returns its outcome."""
        run = run_flywheel(self.settings, self.engine, Plan.from_settings(self.settings, Task(task)))
        return run.outcome or run.status

    def flywheel_when_due(self) -> list[str]:
        """Every hour: queue a run for each task with enough new feedback (none while one runs);
        returns the tasks queued."""
        max_minutes = self.settings.flywheel_max_minutes
        abandon_stale_runs(self.engine, 2 * timedelta(minutes=max_minutes) if max_minutes else STALE_RUN)
        if self.settings.teacher_base_url is None or running(self.engine):
            return []
        due = []
        for task in TRAINED_TASKS:
            fresh = new_feedback_examples(self.engine, task)
            if fresh >= self.settings.flywheel_min_new_feedback:
                log.info("%s new %s examples from reviewers: starting a flywheel run", fresh, task.value)
                self._enqueue_run(task.value)
                due.append(task.value)
        return due
