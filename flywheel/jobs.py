"""The trainer queue: a Huey queue of its own (one worker, beside the GPU), with a periodic job that
starts a flywheel run once reviewers have labelled enough new examples since the last run, and the
runs an admin queues from the console (``TrainerQueue.start``; ``reviewbot flywheel worker`` runs
them). Also the queries of runs that the CLI and the console share."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from huey import Huey, crontab
from huey.exceptions import HueyException
from sqlmodel import Session, col, select

from bot import audit
from bot.config import ConfigError, Settings
from bot.llm import check_teacher
from bot.models import ExampleSource, FlywheelRun, RunStatus, Task, TrainingExample
from bot.queue import make_huey
from bot.queue.codec import ForgedJob
from bot.secrets import secret_box
from flywheel.cycle import Plan, run_flywheel
from flywheel.data import feedback_examples
from flywheel.spec import spec_for

log = logging.getLogger(__name__)
TRAINER_QUEUE = "reviewbot-trainer"
STALE_RUN = timedelta(hours=24)  # without a wall-time budget, a run older than this is presumed dead
TRAINED_TASKS = (Task.SEVERITY,)  # the explanation task needs a reference model's answers first
RUN_TASK = "flywheel_run"  # the queued job of one run


class RunRefused(Exception):
    """A run an admin asked for that cannot be queued now: one is running or queued, or the teacher
    is not configured. The message says which and what to do."""


@dataclass(frozen=True)
class QueuedRun:
    """A run waiting on the trainer queue for ``reviewbot flywheel worker``."""

    task: str
    rounds: int | None  # None: REVIEWBOT_FLYWHEEL_MAX_ROUNDS


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


def current_run(engine: sa.Engine) -> FlywheelRun | None:
    """The run in progress, if any (runs go one at a time)."""
    with Session(engine) as session:
        return session.exec(select(FlywheelRun).where(col(FlywheelRun.status) == RunStatus.RUNNING)).first()


def running(engine: sa.Engine) -> bool:
    return current_run(engine) is not None


def recent_runs(engine: sa.Engine, limit: int) -> Sequence[FlywheelRun]:
    """The newest runs first."""
    with Session(engine) as session:
        return session.exec(select(FlywheelRun).order_by(col(FlywheelRun.id).desc()).limit(limit)).all()


def best_heldout(run: FlywheelRun) -> float | None:
    """The best dev (held-out) score of the run's rounds, round 0 (the model it started from) aside."""
    scores = [r["heldout"] for r in run.rounds if r.get("round", 0) > 0 and "heldout" in r]
    return max(scores) if scores else None


class TrainerQueue:
    """The trainer's Huey queue with its two tasks registered on it: a run of one task, and the
    hourly check that queues a run where reviewers labelled enough new examples."""

    def __init__(self, settings: Settings, engine: sa.Engine) -> None:
        self.settings, self.engine = settings, engine
        self.huey: Huey = make_huey(settings.queue_url, secret_box(settings).queue_key(), name=TRAINER_QUEUE)
        self._enqueue_run = self.huey.task(name=RUN_TASK)(self.flywheel_run)
        self.huey.periodic_task(crontab(minute="0"), name="flywheel_when_due")(self.flywheel_when_due)

    def flywheel_run(self, task: str, rounds: int | None = None) -> str:
        """One flywheel run of ``task`` (``rounds`` at most; None: the setting); returns its outcome."""
        plan = Plan.from_settings(self.settings, Task(task), rounds=rounds)
        run = run_flywheel(self.settings, self.engine, plan)
        return run.outcome or run.status

    def start(self, actor: str, task: Task, rounds: int | None = None) -> QueuedRun:
        """Queue a run an admin asked for, with its audit entry ``flywheel.start``. Raises
        ``RunRefused`` (nothing queued) while a run is running or queued, or without a teacher."""
        try:
            check_teacher(self.settings)
        except ConfigError as exc:
            raise RunRefused(str(exc)) from None
        self._abandon_stale()
        current = current_run(self.engine)
        if current is not None:
            raise RunRefused(f"flywheel run {current.id} ({current.task}) is running: wait until it ends")
        if self.queued_runs():
            raise RunRefused(
                "a flywheel run is already queued: it starts once `reviewbot flywheel worker` runs"
            )
        with Session(self.engine) as session:
            after = {"task": task.value, "rounds": rounds}
            audit.record(session, actor, "flywheel.start", f"flywheel {task.value}", None, after)
            session.flush()  # the entry is sound before the job exists; committed once it does
            self._enqueue_run(task.value, rounds)
            session.commit()
        return QueuedRun(task.value, rounds)

    def queued_runs(self) -> list[QueuedRun]:
        """The runs waiting for the worker, oldest first (a job this reviewbot did not write is skipped)."""
        queued = []
        for data in self.huey.storage.enqueued_items():
            try:
                job = self.huey.deserialize_task(data)
            except (ForgedJob, HueyException):  # forged, or a job of another reviewbot's version
                continue
            if job.name == RUN_TASK:
                args = [*job.args, None]
                queued.append(QueuedRun(str(args[0]), job.kwargs.get("rounds", args[1])))
        return queued

    def _abandon_stale(self) -> None:
        max_minutes = self.settings.flywheel_max_minutes
        abandon_stale_runs(self.engine, 2 * timedelta(minutes=max_minutes) if max_minutes else STALE_RUN)

    def flywheel_when_due(self) -> list[str]:
        """Every hour: queue a run for each task with enough new feedback (none while one runs);
        returns the tasks queued."""
        self._abandon_stale()
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
