"""``reviewbot flywheel …`` and ``reviewbot models …``: run and watch the trainer, manage adapter
versions. Registered with the CLI through the ``reviewbot.commands`` entry point."""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from sqlmodel import Session

from bot.cli.common import Format, FormatOption, cli_actor, command_group, fail, open_engine, settings_from
from bot.config import ConfigError
from bot.feedback import canary
from bot.llm import LLMError
from bot.models import FlywheelRun, ModelStatus, Task

flywheel_app = command_group(
    "flywheel",
    "The training flywheel: teacher exams, graded curriculum, LoRA fine-tuning, gated promotion.",
    "reviewbot flywheel run --task severity --rounds 3 --seed seed.jsonl",
)
models_app = command_group(
    "models",
    "Adapter versions per task: list them, promote one, roll back.",
    "reviewbot models promote severity-v7",
)
golden_app = command_group(
    "golden",
    "Golden held-out sets: the admin's examples that promotion must not regress on, versioned per task.",
    "reviewbot flywheel golden add --task severity golden.jsonl",
)
flywheel_app.add_typer(golden_app)
out = Console()
FAILED = 1  # a run that failed, a promotion refused, nothing to act on; bad configuration is 2


class TrainedTask(StrEnum):
    SEVERITY = Task.SEVERITY.value
    EXPLANATION = Task.EXPLANATION.value


TaskFilter = Annotated[
    TrainedTask | None, typer.Option(metavar="TASK", help="Only this task: severity or explanation.")
]


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else ""


SEVERITY_COLUMNS = ("cost", "macro-F1", "kappa", "recall crit/maj")


def _severity_cells(figures: Any) -> tuple[str, str, str, str]:
    """A score's harm-weighted metrics (``flywheel.metrics``) as table cells; blank without them."""
    if not isinstance(figures, dict):
        return "", "", "", ""

    def cell(value: Any) -> str:
        return f"{value:.3f}" if isinstance(value, float | int) else "-"

    recall = figures.get("recall", {})
    return (
        cell(figures.get("cost")), cell(figures.get("macro_f1")), cell(figures.get("kappa")),
        f"{cell(recall.get('critical'))}/{cell(recall.get('major'))}",
    )  # fmt: skip


@flywheel_app.command("run")
def run(
    ctx: typer.Context,
    task: Annotated[
        TrainedTask, typer.Option(metavar="TASK", help="The task to train: severity or explanation.")
    ] = TrainedTask.SEVERITY,
    rounds: Annotated[
        int | None, typer.Option(metavar="N", min=1, help="Rounds at most (default: the setting).")
    ] = None,
    seed: Annotated[
        list[Path] | None,
        typer.Option(
            metavar="FILE.jsonl",
            exists=True,
            dir_okay=False,
            help="JSONL of labelled examples; a share is held out. Repeatable.",
        ),
    ] = None,
    heldout: Annotated[
        list[Path] | None,
        typer.Option(
            metavar="FILE.jsonl",
            exists=True,
            dir_okay=False,
            help="JSONL of examples to hold out, all of them, stored as the task's golden set. Repeatable.",
        ),
    ] = None,
) -> None:
    """Run the flywheel now and promote its best adapter if it beats the one in use.

    Each round: the teacher writes an exam, the student answers, the teacher grades it and writes new
    examples, the student is fine-tuned on the grown curriculum and scored on the held-out and golden
    sets. Without a golden set (golden add, or --heldout) the run promotes nothing.
    """
    from flywheel.cycle import Plan, run_flywheel
    from flywheel.data import DataError
    from flywheel.finetune import AdapterIncompatible

    settings, engine = open_engine(ctx)
    try:
        plan = Plan.from_settings(
            settings, Task(task), rounds=rounds, seed_files=seed or (), heldout_files=heldout or ()
        )
        result = run_flywheel(settings, engine, plan, console=out)
    except ConfigError as exc:
        fail(str(exc))
    except (LLMError, DataError, AdapterIncompatible, OSError, RuntimeError) as exc:
        fail(f"flywheel run failed: {exc}", FAILED)
    out.print(f"run {result.id} done: {result.outcome}", highlight=False)


@flywheel_app.command("status")
def status(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(metavar="N", min=1, help="Most recent runs shown.")] = 10,
    output: FormatOption = Format.TABLE,
) -> None:
    """The latest flywheel runs: state, rounds, held-out scores, what they changed."""
    from flywheel.jobs import best_heldout, recent_runs

    _, engine = open_engine(ctx)
    runs = recent_runs(engine, limit)
    if output is Format.JSON:
        typer.echo(json.dumps([r.model_dump(mode="json") for r in runs], indent=2))
        return
    table = Table("run", "task", "status", "rounds", "before", "best", "started", "finished", "outcome")
    for r in runs:
        before = f"{r.rounds[0]['heldout']:.3f}" if r.rounds else ""
        best = best_heldout(r)
        table.add_row(
            str(r.id), r.task, r.status, str(max(len(r.rounds) - 1, 0)), before,
            f"{best:.3f}" if best is not None else "",
            _when(r.started_at), _when(r.finished_at), r.outcome or r.error or "",
        )  # fmt: skip
    out.print(table)


@flywheel_app.command("report")
def report(
    ctx: typer.Context,
    run_id: Annotated[int, typer.Argument(metavar="RUN", help="The run's number (see status).")],
    output: Annotated[
        Path | None,
        typer.Option(
            "--out",
            metavar="FILE.png",
            dir_okay=False,
            help="PNG (or FILE.svg) to write (default: flywheel-run-RUN.png).",
        ),
    ] = None,
) -> None:
    """Plot a run's scores per round to a PNG (or SVG) and list its rounds."""
    from flywheel.plot import plot_run

    _, engine = open_engine(ctx)
    with Session(engine) as session:
        flywheel_run = session.get(FlywheelRun, run_id)
    if flywheel_run is None:
        fail(f"no flywheel run {run_id}; see `reviewbot flywheel status`", FAILED)
    path = plot_run(flywheel_run, output or Path(f"flywheel-run-{run_id}.png"))
    table = Table(
        "round", "model", "dev", *SEVERITY_COLUMNS, "golden", "exam", "grade", "new", "curriculum", "loss",
        "seconds",
    )  # fmt: skip
    for r in flywheel_run.rounds:
        train: dict[str, Any] = r.get("train", {})
        loss, gold = train.get("loss"), r.get("golden")
        table.add_row(
            str(r["round"]), r["model"], f"{r['heldout']:.3f}", *_severity_cells(r.get("heldout_metrics")),
            f"{gold:.3f} (v{r['golden_version']})" if isinstance(gold, float | int) else "",
            f"{r['exam_score']:.0%}" if "exam_score" in r else "", str(r.get("teacher_score", "")),
            str(r.get("new_examples", "")), str(r.get("curriculum", "")),
            f"{loss:.3f}" if isinstance(loss, float) else "", f"{sum(r.get('timings', {}).values()):.0f}",
        )  # fmt: skip
    out.print(table)
    out.print(f"plot written to {path}", highlight=False)


class BootstrapTask(StrEnum):
    SEVERITY = Task.SEVERITY.value
    EXPLANATION = Task.EXPLANATION.value
    FIND = Task.FIND.value


@flywheel_app.command("bootstrap")
def bootstrap(
    ctx: typer.Context,
    repo: Annotated[
        Path,
        typer.Option(metavar="PATH", exists=True, file_okay=False, help="The repository to learn from."),
    ] = Path(),
    task: Annotated[
        BootstrapTask, typer.Option(metavar="TASK", help="severity, explanation or find (find: --out only).")
    ] = BootstrapTask.SEVERITY,
    out_file: Annotated[
        Path | None,
        typer.Option("--out", metavar="FILE.jsonl", dir_okay=False, help="Also write the examples as JSONL."),
    ] = None,
    store: Annotated[bool, typer.Option(help="Store them in the database for the next run.")] = True,
    limit: Annotated[int | None, typer.Option(metavar="N", min=1, help="Examples at most.")] = None,
    balance: Annotated[
        float,
        typer.Option(metavar="FACTOR", min=0, help="A level keeps at most FACTOR x the rarest's; 0: all."),
    ] = 2.0,
    exclude: Annotated[
        list[str] | None,
        typer.Option(metavar="GLOB", help="Files to leave out, e.g. 'tests/**'. Repeatable."),
    ] = None,
) -> None:
    """Seed the flywheel from your own code: ruff's and bandit's findings as labelled examples.

    Each finding becomes a question as a review asks it (the lines around it, the rule's message),
    labelled by the versioned severity table; whole files go to one side (train or held out), each
    question once, the levels balanced. Stored as analyzer-labelled: a reviewer's label of the same
    question replaces it.
    """
    from flywheel.bootstrap.analyzers import AnalyzerError
    from flywheel.bootstrap.mapping import MappingError
    from flywheel.bootstrap.seed import seed, summary

    if task is BootstrapTask.FIND and out_file is None:
        fail("the flywheel does not train the find task yet: write its examples to a file with --out")
    keep = store and task is not BootstrapTask.FIND
    if not keep and out_file is None:
        fail("--no-store without --out would keep nothing")
    settings, engine = open_engine(ctx) if keep else (settings_from(ctx), None)
    try:
        seeded = seed(
            settings, engine, repo, Task(task), out_file=out_file, limit=limit, balance=balance,
            exclude=exclude or (), console=out,
        )  # fmt: skip
    except (AnalyzerError, MappingError, OSError) as exc:
        fail(f"bootstrap failed: {exc}")
    summary(out, Task(task), seeded, out_file)


@flywheel_app.command("worker")
def worker(ctx: typer.Context) -> None:
    """Run the trainer queue: one flywheel run at a time, started when enough feedback arrived.

    An hourly check starts a run when reviewers have labelled REVIEWBOT_FLYWHEEL_MIN_NEW_FEEDBACK new
    examples since the last run.
    """
    from flywheel.jobs import TrainerQueue

    settings, engine = open_engine(ctx)
    TrainerQueue(settings, engine).huey.create_consumer(workers=1, worker_type="thread").run()


@golden_app.command("add")
def golden_add(
    ctx: typer.Context,
    file: Annotated[
        Path,
        typer.Argument(metavar="FILE.jsonl", exists=True, dir_okay=False, help="JSONL of labelled examples."),
    ],
    task: Annotated[
        TrainedTask, typer.Option(metavar="TASK", help="The task it judges: severity or explanation.")
    ] = TrainedTask.SEVERITY,
) -> None:
    """Store FILE as the task's newest golden set (the same examples as the newest are no new version).

    Promotion needs a candidate not to fall behind the model in use on it by more than the margin;
    reviewers' feedback never changes it.
    """
    from flywheel import golden
    from flywheel.data import DataError, read_jsonl
    from flywheel.spec import spec_for

    _, engine = open_engine(ctx)
    try:
        examples = read_jsonl(file, spec_for(task))
        with Session(engine) as session:
            row, new = golden.add(session, Task(task), examples, str(file))
    except DataError as exc:
        fail(str(exc), FAILED)
    state = "stored as" if new else "unchanged: already"
    says = f"{file}: {state} {task.value} golden set v{row.version} ({row.size} examples)"
    out.print(says, highlight=False)


@golden_app.command("list")
def golden_list(
    ctx: typer.Context,
    task: TaskFilter = None,
    output: FormatOption = Format.TABLE,
) -> None:
    """Every golden set version: task, version, size, source file, when it was added."""
    from flywheel import golden

    _, engine = open_engine(ctx)
    with Session(engine) as session:
        rows = golden.sets(session, Task(task) if task else None)
    if output is Format.JSON:
        typer.echo(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
        return
    table = Table("task", "version", "examples", "source", "digest", "added")
    for r in rows:
        table.add_row(r.task, f"v{r.version}", str(r.size), r.source, r.digest[:12], _when(r.created_at))
    out.print(table)


@models_app.command("list")
def list_models(
    ctx: typer.Context,
    task: TaskFilter = None,
    output: FormatOption = Format.TABLE,
) -> None:
    """Every adapter version: task, status, held-out and golden scores, when it was made and promoted."""
    from flywheel.registry import golden_of, heldout_of, versions

    _, engine = open_engine(ctx)
    with Session(engine) as session:
        rows = versions(session, Task(task) if task else None)
    if output is Format.JSON:
        typer.echo(json.dumps([v.model_dump(mode="json") for v in rows], indent=2))
        return
    table = Table(
        "name", "task", "status", "dev", *SEVERITY_COLUMNS, "baseline", "golden", "test gain (bound)",
        "trained on", "created", "promoted",
    )  # fmt: skip
    for v in rows:
        score, baseline, gold = heldout_of(v), v.metrics.get("baseline"), golden_of(v)
        table.add_row(
            v.adapter_name, v.task, v.status, f"{score:.3f}" if score is not None else "",
            *_severity_cells(v.metrics.get("heldout_metrics")),
            f"{baseline:.3f}" if isinstance(baseline, float | int) else "",
            f"{gold.value:.3f} (v{gold.version})" if gold else "", _test_cell(v.metrics.get("test")),
            _training_cell(v.training), _when(v.created_at), _when(v.promoted_at),
        )  # fmt: skip
    out.print(table)
    for v in rows:  # running, or why it ended: a sentence each, too long for a column
        if said := canary.describe(v):
            out.print(f"{v.adapter_name}: {said}", highlight=False)


def _training_cell(training: dict[str, Any]) -> str:
    """The training record in brief (``--format json`` has it whole): the chats, those left out as
    too long, the data hash's start, the trainer's versions and the sequence length."""
    if not training:
        return ""
    versions, config = training["libraries"], training["config"]
    return (
        f"{training['examples']} chats ({training['too_long']} too long), "
        f"data {training['data_sha256'][:8]}, trl {versions['trl']}, peft {versions['peft']}, "
        f"{config['max_seq_length']} tokens"
    )


def _test_cell(test: Any) -> str:
    """The gate's figures from the run's test part: the gain and its lower confidence bound."""
    if not isinstance(test, dict):
        return ""
    return f"{test['gain']:.3f} ({test['gain_lower_bound']:.3f}) on {test['items']}"


@models_app.command("promote")
def promote(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="The adapter version, e.g. severity-v7.")],
    force: Annotated[
        bool, typer.Option(help="Skip the comparison with the model in use and the gate (needs --reason).")
    ] = False,
    reason: Annotated[
        str, typer.Option(metavar="TEXT", help="Why, kept in the audit log; required with --force.")
    ] = "",
    with_canary: Annotated[
        bool,
        typer.Option(
            "--canary/--no-canary",
            help="Serve REVIEWBOT_CANARY_SHARE of merge requests first; rolled back if reviewers react worse",
        ),
    ] = True,
) -> None:
    """Make NAME the version reviews use, if the promotion gate passes.

    NAME and the model in use, both served by vLLM, answer the test items of the run that made NAME
    and the golden set; NAME must beat it beyond chance by REVIEWBOT_PROMOTION_MARGIN on at least
    REVIEWBOT_PROMOTION_MIN_ITEMS items, keep its critical and major recall, and not regress on the
    golden set by more than the margin. Forced or not, it is first a canary on REVIEWBOT_CANARY_SHARE
    of merge requests unless --no-canary; promoting a running canary gives it all traffic at once.
    The promotion is written to the audit log.
    """
    from flywheel.data import DataError
    from flywheel.registry import (
        ComparisonFailed,
        PromotionRefused,
        ReasonRequired,
        UnknownVersion,
        admin_promote,
    )

    settings, engine = open_engine(ctx)
    with Session(engine) as session:
        try:
            done = admin_promote(
                settings, session, cli_actor(), name, force=force, reason=reason, with_canary=with_canary
            )
        except ReasonRequired as exc:
            fail(f"{exc} (--reason TEXT)")
        except ConfigError as exc:
            fail(str(exc))
        except (UnknownVersion, PromotionRefused, DataError, ComparisonFailed) as exc:
            fail(str(exc), FAILED)
    version, verdict = done.version, done.verdict
    if not done.changed:
        out.print(f"{version.adapter_name} is already the {version.task} model", highlight=False)
        return
    says = f"{version.adapter_name} is now the {version.task} model"
    if version.status == ModelStatus.CANARY:
        rest = done.previous or f"the base model {settings.student_model}"
        says = (
            f"{version.adapter_name} is a canary on {version.canary_share:.0%} of merge requests, {rest} "
            "serves the rest until reviewers' reactions decide (`reviewbot models list`)"
        )
    out.print(says + (f": {verdict.reason}" if verdict else ""), highlight=False)


@models_app.command("rollback")
def rollback(
    ctx: typer.Context,
    task: Annotated[
        TrainedTask,
        typer.Argument(metavar="TASK", help="The task whose version to roll back: severity or explanation."),
    ],
) -> None:
    """Take back the task's active version; the one before it (or the base model) returns.

    The rollback is written to the audit log."""
    from flywheel.registry import admin_rollback

    settings, engine = open_engine(ctx)
    with Session(engine) as session:
        try:
            done = admin_rollback(session, cli_actor(), Task(task))
        except LookupError as exc:
            fail(str(exc), FAILED)
        now = done.restored.adapter_name if done.restored else f"the base model {settings.student_model}"
    out.print(f"{task.value} rolled back: {now} is in use", highlight=False)
