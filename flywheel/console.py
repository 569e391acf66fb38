"""The trainer's part of the admin console: flywheel runs (the list, one run's rounds and chart, a run
started on the trainer queue) and adapter versions (the list, promote, roll back), as pages at
``/admin/flywheel`` and ``/admin/models`` and as JSON at ``/api/v1``.

Mounted by ``bot.console`` through the ``reviewbot.console`` entry point, so ``bot`` never imports
the trainer. Each action is the command line's own function (``flywheel.registry.admin_promote`` and
``admin_rollback``, ``flywheel.jobs.TrainerQueue.start``), which writes the audit entry; a page and
its API call share the helpers below, so they refuse the same things with the same words.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import RedisError
from sqlmodel import Session

from bot.config import ConfigError
from bot.console import Console
from bot.console.auth import Actor
from bot.feedback import canary
from bot.llm import check_teacher
from bot.models import FlywheelRun, ModelStatus, ModelVersion, RunStatus, Task
from flywheel import registry
from flywheel.data import DataError
from flywheel.jobs import QueuedRun, RunRefused, TrainerQueue, best_heldout, recent_runs
from flywheel.plot import run_svg

TASKS = (Task.SEVERITY, Task.EXPLANATION)  # the tasks the flywheel trains
TaskName = Literal["severity", "explanation"]
MAX_ROUNDS = 50  # a run asked for from the console; the CLI has no bound
RUNS_SHOWN = 50
LIVE_EVERY_S = 5  # a running run's page reloads this often
WORKER_NOTE = "queued runs are executed by `reviewbot flywheel worker`, which must be running"
T = TypeVar("T")
QUEUE_DOWN = (RedisError, sqlite3.Error, OSError)  # the trainer queue cannot be read or written


# --- what the API answers -------------------------------------------------------------------------


class RunSummary(BaseModel):
    id: int
    task: str
    status: str = Field(description="running, done or failed")
    started_at: datetime
    finished_at: datetime | None
    rounds_done: int = Field(description="rounds trained (round 0, the model it started from, aside)")
    baseline_heldout: float | None = Field(description="the dev score of the model the run started from")
    best_heldout: float | None = Field(description="the best dev score of its rounds")
    outcome: str | None = Field(description="what the run changed: the version promoted, or why none")
    error: str | None

    @classmethod
    def of(cls, run: FlywheelRun) -> RunSummary:
        baseline = run.rounds[0].get("heldout") if run.rounds else None
        return cls(
            id=run.id or 0, task=run.task, status=run.status, started_at=run.started_at,
            finished_at=run.finished_at, rounds_done=max(len(run.rounds) - 1, 0),
            baseline_heldout=baseline, best_heldout=best_heldout(run), outcome=run.outcome, error=run.error,
        )  # fmt: skip


class RunDetail(RunSummary):
    rounds: list[dict[str, Any]] = Field(
        description="one entry per round (round 0: the model it started from): scores, sizes, timings"
    )


class StartRun(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: TaskName = "severity"
    rounds: int | None = Field(None, ge=1, le=MAX_ROUNDS, description="at most (default: the setting)")


class QueuedRunOut(BaseModel):
    task: str
    rounds: int | None = Field(description="at most; null: REVIEWBOT_FLYWHEEL_MAX_ROUNDS")
    detail: str


class ModelOut(BaseModel):
    name: str = Field(description="the adapter's served name, never reused")
    task: str
    status: str = Field(description="candidate, active, retired or rolled_back")
    base_model: str
    created_at: datetime
    promoted_at: datetime | None
    heldout: float | None = Field(description="dev score of the run that made it")
    golden: float | None = Field(description="score on the golden set, version golden_version")
    golden_version: int | None
    metrics: dict[str, Any]
    canary_share: float | None = Field(description="share of merge requests it served as a canary")
    canary_started_at: datetime | None
    canary_ended_at: datetime | None = Field(description="taken to all traffic, or rolled back")
    canary: str = Field(description="its canary in words: running (with the last check), or why it ended")

    @classmethod
    def of(cls, version: ModelVersion) -> ModelOut:
        gold = registry.golden_of(version)
        return cls(
            name=version.adapter_name, task=version.task, status=version.status,
            base_model=version.base_model, created_at=version.created_at, promoted_at=version.promoted_at,
            heldout=registry.heldout_of(version), golden=gold.value if gold else None,
            golden_version=gold.version if gold else None, metrics=version.metrics,
            canary_share=version.canary_share, canary_started_at=version.canary_started_at,
            canary_ended_at=version.canary_ended_at, canary=canary.describe(version),
        )  # fmt: skip


class PromoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    force: bool = Field(False, description="skip the comparison with the model in use and the gate")
    reason: str = Field("", max_length=2000, description="why; required with force, kept in the audit log")
    canary: bool = Field(True, description="first serve REVIEWBOT_CANARY_SHARE of merge requests (a canary)")


class PromoteOut(BaseModel):
    version: ModelOut
    previous: str | None = Field(description="the version in use before; null: the base model")
    changed: bool = Field(description="false when it was already the version in use")
    gate: str | None = Field(description="the gate's verdict; null when forced")
    detail: str


class RollbackOut(BaseModel):
    task: str
    rolled_back: str
    active: str | None = Field(description="the version in use now; null: the base model")
    detail: str


# --- the actions and queries, shared by pages and API ----------------------------------------------


class Refused(Exception):
    """An action refused with nothing changed: the HTTP status of the API, and the message both show."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _task(name: str) -> Task:
    if name not in {t.value for t in TASKS}:
        raise Refused(404, f"unknown task {name!r}: the flywheel trains severity and explanation")
    return Task(name)


def _rounds(value: str) -> int | None:
    """A form's rounds field: empty for the setting, else a whole number within bounds."""
    if not value.strip():
        return None
    if not value.strip().isdigit() or not 1 <= int(value) <= MAX_ROUNDS:
        raise Refused(422, f"rounds must be a whole number from 1 to {MAX_ROUNDS}")
    return int(value)


def _start(trainer: Callable[[], TrainerQueue], actor: Actor, task: str, rounds: int | None) -> QueuedRunOut:
    try:
        queued = trainer().start(actor.name, _task(task), rounds)
    except RunRefused as exc:
        raise Refused(409, str(exc)) from None
    except QUEUE_DOWN as exc:
        raise Refused(503, f"the trainer queue cannot be reached (REVIEWBOT_QUEUE_URL): {exc}") from None
    said = f"{queued.rounds} rounds at most" if queued.rounds else "rounds as set"
    return QueuedRunOut(task=queued.task, rounds=queued.rounds,
                        detail=f"a {queued.task} run is queued ({said}); {WORKER_NOTE}")  # fmt: skip


def _promote(
    console: Console, actor: Actor, name: str, force: bool, reason: str, with_canary: bool = True
) -> PromoteOut:
    with Session(console.engine) as session:
        try:
            done = registry.admin_promote(console.settings, session, actor.name, name, force=force,
                                          reason=reason, with_canary=with_canary)  # fmt: skip
        except registry.ReasonRequired as exc:
            raise Refused(422, str(exc)) from None
        except registry.UnknownVersion:
            raise Refused(404, f"no model version named {name!r}") from None
        except (registry.PromotionRefused, DataError) as exc:
            raise Refused(409, f"{name} is not promoted: {exc}") from None
        except (registry.ComparisonFailed, ConfigError) as exc:
            raise Refused(503, str(exc)) from None
        version = ModelOut.of(done.version)
    gate = done.verdict.reason if done.verdict else None
    if not done.changed:
        detail = f"{name} is already the {version.task} model"
    elif version.status == ModelStatus.CANARY:
        rest = done.previous or f"the base model {console.settings.student_model}"
        detail = (
            f"{name} is a canary on {version.canary_share or 0:.0%} of merge requests, {rest} serves the "
            "rest until reviewers' reactions decide: " + (gate or f"forced ({reason.strip()})")
        )
    else:
        detail = f"{name} is now the {version.task} model: " + (gate or f"forced ({reason.strip()})")
    return PromoteOut(version=version, previous=done.previous, changed=done.changed, gate=gate, detail=detail)


def _rollback(console: Console, actor: Actor, task: str) -> RollbackOut:
    trained = _task(task)
    with Session(console.engine) as session:
        try:
            done = registry.admin_rollback(session, actor.name, trained)
        except LookupError as exc:
            raise Refused(409, str(exc)) from None
        active = done.restored.adapter_name if done.restored else None
    now = active or f"the base model {console.settings.student_model}"
    detail = f"{trained.value} rolled back from {done.rolled_back}: {now} is in use"
    return RollbackOut(task=trained.value, rolled_back=done.rolled_back, active=active, detail=detail)


def _run(console: Console, run_id: int) -> FlywheelRun:
    with Session(console.engine) as session:
        run = session.get(FlywheelRun, run_id)
    if run is None:
        raise Refused(404, f"no flywheel run {run_id}")
    return run


def _versions(console: Console) -> list[ModelVersion]:
    with Session(console.engine) as session:
        return list(registry.versions(session))


def _api(action: Callable[[], T]) -> T:
    """An action's result, or its refusal as the API's 4xx/503 with the message as ``detail``."""
    try:
        return action()
    except Refused as exc:
        raise HTTPException(exc.status, exc.message) from None


# --- what the pages show ---------------------------------------------------------------------------


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else ""


def _num(value: Any, spec: str = ".3f") -> str:
    return format(value, spec) if isinstance(value, int | float) and not isinstance(value, bool) else ""


@dataclass(frozen=True)
class InUse:
    """A task's version in use, for the models page (None: the base model)."""

    task: str
    active: ModelVersion | None
    canary: ModelVersion | None  # promoted, serving a share of merge requests


def _part(entry: dict[str, Any], key: str) -> dict[str, Any]:
    value = entry.get(key)
    return value if isinstance(value, dict) else {}


def _in_use(versions: list[ModelVersion]) -> list[InUse]:
    active = {v.task: v for v in versions if v.status == ModelStatus.ACTIVE}
    trial = {v.task: v for v in versions if v.status == ModelStatus.CANARY}
    return [InUse(task.value, active.get(task.value), trial.get(task.value)) for task in TASKS]


def _round_cells(entry: dict[str, Any]) -> dict[str, str]:
    """A round as ``reviewbot flywheel report`` lists it."""
    timings = [v for v in _part(entry, "timings").values() if isinstance(v, int | float)]
    gold = _num(entry.get("golden"))
    return {
        "round": str(entry.get("round", "")), "model": str(entry.get("model", "")),
        "heldout": _num(entry.get("heldout")), "cost": _num(_part(entry, "heldout_metrics").get("cost")),
        "golden": f"{gold} (v{entry.get('golden_version')})" if gold else "",
        "exam": _num(entry.get("exam_score"), ".0%"), "grade": str(entry.get("teacher_score", "")),
        "new": str(entry.get("new_examples", "")), "curriculum": str(entry.get("curriculum", "")),
        "loss": _num(_part(entry, "train").get("loss")),
        "seconds": _num(sum(timings), ".0f") if timings else "",
        "feedback": str(entry.get("feedback", "")),
    }  # fmt: skip


def _model_cells(version: ModelVersion) -> dict[str, str]:
    """A version as ``reviewbot models list`` lists it."""
    score, gold = registry.heldout_of(version), registry.golden_of(version)
    metrics = version.metrics.get("heldout_metrics")
    test = version.metrics.get("test")
    gain = (
        f"{_num(test.get('gain'))} ({_num(test.get('gain_lower_bound'))}) on {test.get('items')}"
        if isinstance(test, dict)
        else ""
    )
    return {
        "heldout": _num(score), "cost": _num(metrics.get("cost")) if isinstance(metrics, dict) else "",
        "golden": f"{gold.value:.3f} (v{gold.version})" if gold else "", "gain": gain,
        "created": _when(version.created_at), "promoted": _when(version.promoted_at),
        "canary": canary.describe(version),
    }  # fmt: skip


# --- the routes ------------------------------------------------------------------------------------


def router(console: Console) -> APIRouter:
    """The flywheel's and the models' pages and API."""
    console.add_templates("flywheel")
    routes = APIRouter()
    auth, api_actor = console.auth, Depends(console.auth.api_actor)
    api = [api_actor]  # the reads; a change takes the actor for its audit entry

    @cache
    def trainer() -> TrainerQueue:
        return TrainerQueue(console.settings, console.engine)  # made on first use: the queue may be down

    # Runs: pages.

    @routes.get("/admin/flywheel", include_in_schema=False)
    def runs_page(request: Request) -> HTMLResponse:
        actor = auth.page_actor(request)
        runs = [RunSummary.of(run) for run in recent_runs(console.engine, RUNS_SHOWN)]
        return console.page(
            request, "flywheel_runs.html", actor, runs=runs, queued=_queued(trainer), tasks=TASKS,
            max_rounds=MAX_ROUNDS, default_rounds=console.settings.flywheel_max_rounds,
            no_teacher=_teacher_missing(console),
            when=_when, num=_num,
        )  # fmt: skip

    @routes.post("/admin/flywheel/start", include_in_schema=False)
    def start_form(
        request: Request,
        task: Annotated[str, Form()] = "",
        rounds: Annotated[str, Form()] = "",
        csrf_token: Annotated[str, Form()] = "",
    ) -> Response:
        actor = auth.page_actor(request)
        auth.check_csrf(actor, csrf_token)
        try:
            queued = _start(trainer, actor, task, _rounds(rounds))
        except Refused as exc:
            return console.back("/admin/flywheel", error=exc.message)
        return console.back("/admin/flywheel", done=queued.detail)

    @routes.get("/admin/flywheel/{run_id}", include_in_schema=False)
    def run_page(request: Request, run_id: int) -> Response:
        actor = auth.page_actor(request)
        try:
            run = _run(console, run_id)
        except Refused as exc:
            return console.back("/admin/flywheel", error=exc.message)
        return console.page(
            request, "flywheel_run.html", actor, run=RunSummary.of(run),
            rounds=[_round_cells(r) for r in run.rounds], chart=run_svg(run) if run.rounds else "",
            live=LIVE_EVERY_S if run.status == RunStatus.RUNNING else None, when=_when, num=_num,
        )  # fmt: skip

    # Runs: API.

    @routes.get(
        "/api/v1/flywheel/runs", tags=["flywheel"], summary="The latest flywheel runs", dependencies=api
    )
    def list_runs(
        limit: Annotated[int, Query(ge=1, le=500, description="How many, newest first.")] = RUNS_SHOWN,
    ) -> list[RunSummary]:
        return [RunSummary.of(run) for run in recent_runs(console.engine, limit)]

    @routes.get(
        "/api/v1/flywheel/runs/{run_id}", tags=["flywheel"], summary="A flywheel run and its rounds",
        dependencies=api,
    )  # fmt: skip
    def get_run(run_id: int) -> RunDetail:
        run = _api(lambda: _run(console, run_id))
        return RunDetail(**RunSummary.of(run).model_dump(), rounds=run.rounds)

    @routes.post(
        "/api/v1/flywheel/runs", tags=["flywheel"], status_code=202,
        summary="Queue a flywheel run for `reviewbot flywheel worker`",
        description="Refused (409) while a run is running or queued, or when the teacher is not configured.",
    )  # fmt: skip
    def start_run(body: StartRun, actor: Actor = api_actor) -> QueuedRunOut:
        return _api(lambda: _start(trainer, actor, body.task, body.rounds))

    # Models: pages.

    @routes.get("/admin/models", include_in_schema=False)
    def models_page(request: Request) -> HTMLResponse:
        actor = auth.page_actor(request)
        versions = _versions(console)
        return console.page(
            request, "flywheel_models.html", actor, versions=versions, in_use=_in_use(versions),
            cells={v.adapter_name: _model_cells(v) for v in versions}, active=ModelStatus.ACTIVE,
            base_model=console.settings.student_model,
        )  # fmt: skip

    @routes.post("/admin/models/promote", include_in_schema=False)
    def promote_form(
        request: Request,
        name: Annotated[str, Form()] = "",
        force: Annotated[bool, Form()] = False,
        reason: Annotated[str, Form()] = "",
        no_canary: Annotated[bool, Form()] = False,
        csrf_token: Annotated[str, Form()] = "",
    ) -> Response:
        actor = auth.page_actor(request)
        auth.check_csrf(actor, csrf_token)
        try:
            done = _promote(console, actor, name, force, reason, not no_canary)
        except Refused as exc:
            return console.back("/admin/models", error=exc.message)
        return console.back("/admin/models", done=done.detail)

    @routes.post("/admin/models/rollback", include_in_schema=False)
    def rollback_form(
        request: Request, task: Annotated[str, Form()] = "", csrf_token: Annotated[str, Form()] = ""
    ) -> Response:
        actor = auth.page_actor(request)
        auth.check_csrf(actor, csrf_token)
        try:
            done = _rollback(console, actor, task)
        except Refused as exc:
            return console.back("/admin/models", error=exc.message)
        return console.back("/admin/models", done=done.detail)

    # Models: API.

    @routes.get("/api/v1/models", tags=["models"], summary="Every adapter version, by task", dependencies=api)
    def list_models() -> list[ModelOut]:
        return [ModelOut.of(v) for v in _versions(console)]

    @routes.post(
        "/api/v1/models/{name}/promote", tags=["models"],
        summary="Make a version the one its task uses, if the promotion gate passes",
        description="Unless forced, the version and the model in use (both served by vLLM) are compared "
        "and the gate decides (409 with its reason when refused; 503 when the models cannot answer). "
        "A forced promotion needs a reason (422 without), kept in the audit log.",
    )  # fmt: skip
    def promote(name: str, body: PromoteIn, actor: Actor = api_actor) -> PromoteOut:
        return _api(lambda: _promote(console, actor, name, body.force, body.reason, body.canary))

    @routes.post(
        "/api/v1/models/{task}/rollback", tags=["models"],
        summary="Take back a task's version in use; the one before it (or the base model) returns",
        description="404 for an unknown task, 409 when the base model is already in use.",
    )  # fmt: skip
    def rollback(task: str, actor: Actor = api_actor) -> RollbackOut:
        return _api(lambda: _rollback(console, actor, task))

    return routes


def _queued(trainer: Callable[[], TrainerQueue]) -> list[QueuedRun] | None:
    """The runs waiting for the worker; None when the queue cannot be read (the page still works)."""
    try:
        return trainer().queued_runs()
    except QUEUE_DOWN:
        return None


def _teacher_missing(console: Console) -> str | None:
    """Why no run can start, when the teacher is not configured."""
    try:
        check_teacher(console.settings)
    except ConfigError as exc:
        return str(exc)
    return None
