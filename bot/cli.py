"""The ``reviewbot`` command line."""

from __future__ import annotations

import asyncio
import json
import logging
from enum import StrEnum
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress, SpinnerColumn

from bot import __version__, db, localgit, report
from bot.cli_feedback import feedback_app
from bot.cli_project import project_app
from bot.config import ConfigError, Settings, load_settings
from bot.diff import Diff, parse_diff
from bot.llm import LLMClient, LLMError
from bot.models import Severity
from bot.review import ReviewResult, review_diff
from bot.serving import served_models

app = typer.Typer(
    name="reviewbot",
    help="Self-hosted code-review bot for GitLab and GitHub; its small model learns from its reviewers.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,  # locals may hold tokens and secrets
)
err = Console(stderr=True)


def _group(name: str, help_text: str) -> typer.Typer:
    group = typer.Typer(name=name, help=help_text, no_args_is_help=True)
    app.add_typer(group)
    return group


db_app = _group("db", "Database schema: create or upgrade it.")
app.add_typer(project_app)
app.add_typer(feedback_app)
# The trainer's groups (flywheel, models) come through an entry point: bot never imports flywheel.
for _entry in entry_points(group="reviewbot.commands"):
    app.add_typer(_entry.load(), name=_entry.name)


def settings_from(ctx: typer.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


def _version(value: bool) -> None:
    if value:
        typer.echo(f"reviewbot {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Configuration comes from REVIEWBOT_* environment variables and an optional .env file."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        err.print(f"reviewbot: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.log_level != "DEBUG":  # the CLI reports migrations and requests itself
        for chatty in ("alembic", "httpx", "httpx2", "openai"):
            logging.getLogger(chatty).setLevel(logging.WARNING)
    ctx.obj = settings


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Create the schema or bring it to the newest version. Safe to run any number of times."""
    settings = settings_from(ctx)
    engine = db.make_engine(settings.database_url)
    try:
        before, after = db.upgrade(engine)
    except sa.exc.SQLAlchemyError as exc:  # the user gets the database's own reason, in one line
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
        where = engine.url.render_as_string(hide_password=True)
        err.print(f"reviewbot db upgrade: {where}: {reason}", markup=False, soft_wrap=True)
        raise typer.Exit(2) from None
    finally:
        engine.dispose()
    where = engine.url.render_as_string(hide_password=True)
    if before == after:
        typer.echo(f"{where}: schema already at revision {after}")
    else:
        typer.echo(f"{where}: schema upgraded from {before or 'empty'} to {after}")


class OutputFormat(StrEnum):
    TEXT = "text"
    JSON = "json"
    MARKDOWN = "markdown"


@app.command("review")
def review_command(
    ctx: typer.Context,
    repo: Annotated[Path, typer.Option(help="The git repository.", file_okay=False)] = Path("."),
    base: Annotated[
        str | None, typer.Option(help="Review changes since this ref (merge base). Default: main or master.")
    ] = None,
    head: Annotated[str, typer.Option(help="The ref to review.")] = "HEAD",
    threshold: Annotated[Severity, typer.Option(help="Drop findings below this severity.")] = Severity.MINOR,
    output: Annotated[OutputFormat, typer.Option("--format", help="Output format.")] = OutputFormat.TEXT,
    fail_on: Annotated[
        Severity | None, typer.Option(help="Exit with 1 when a finding at or above this severity is found.")
    ] = None,
) -> None:
    """Review a local git range with the student model, without any forge.

    Exit codes: 0 done, 1 a finding at or above --fail-on, 2 an error (bad ref, model server
    unreachable, or part of the diff could not be reviewed).
    """
    settings = settings_from(ctx)
    try:
        patch = localgit.diff_range(repo, base or localgit.default_base(repo), head)
        diff = parse_diff(patch)
        result = asyncio.run(_review_with_progress(settings, diff, threshold))
    except (localgit.GitError, ValueError, LLMError, ConfigError, sa.exc.SQLAlchemyError) as exc:
        err.print(f"reviewbot review: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    if output is OutputFormat.JSON:
        typer.echo(json.dumps(result.to_json(), indent=2))
    elif output is OutputFormat.MARKDOWN:
        typer.echo(report.markdown(result))
    else:
        report.print_text(result, Console())
    if result.failed:
        raise typer.Exit(2)
    if fail_on is not None and any(f.severity.rank >= fail_on.rank for f in result.findings):
        raise typer.Exit(1)


def _existing_database(settings: Settings) -> sa.Engine | None:
    """The configured database, unless it is a SQLite file that does not exist: a local review
    must not leave a new database file in the user's repository."""
    url = sa.make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").exists():
        return None
    return db.make_engine(settings.database_url)


async def _review_with_progress(settings: Settings, diff: Diff, threshold: Severity) -> ReviewResult:
    async with LLMClient.student(settings) as llm:
        served = await llm.list_models()  # fails fast, with the URL, when the server is down
        models = served_models(settings, _existing_database(settings))
        missing = sorted({name for name in models.values() if name not in served})
        if missing:
            raise ConfigError(f"{llm.base_url} does not serve {missing}; it serves {served}")
        with Progress(
            SpinnerColumn(),
            *Progress.get_default_columns(),
            MofNCompleteColumn(),
            console=err,
            transient=True,
        ) as progress:
            bar = progress.add_task("reviewing chunks", total=None)
            return await review_diff(
                diff,
                llm,
                models,
                threshold=threshold,
                chunk_tokens=settings.review_chunk_tokens,
                on_chunks=lambda n: progress.update(bar, total=n),
                on_chunk_done=lambda: progress.advance(bar),
            )


@app.command("serve")
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Listen address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Listen port.")] = 8080,
    workers: Annotated[int, typer.Option(help="Embedded job consumer threads (SQLite queue only).")] = 2,
) -> None:
    """Run the API (webhooks, health, metrics); with the default SQLite queue, also the job consumer."""
    import uvicorn

    from bot.app import create_app
    from bot.tasks import Queue

    settings = settings_from(ctx)
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine)
    queue = Queue(settings, engine)
    consumer = None
    if settings.queue_url.startswith("sqlite"):
        consumer = queue.huey.create_consumer(workers=workers, worker_type="thread")
        consumer.start()  # threads; uvicorn keeps the main thread and its signal handling
    else:
        err.print(f"queue at {settings.queue_url}: run `reviewbot worker` to process jobs", highlight=False)
    try:
        uvicorn.run(
            create_app(engine, queue),
            host=host,
            port=port,
            log_level=settings.log_level.lower(),
        )
    finally:
        if consumer is not None:
            consumer.stop(graceful=True)


@app.command("worker")
def worker(
    ctx: typer.Context,
    workers: Annotated[int, typer.Option(help="Consumer threads.")] = 2,
) -> None:
    """Run job consumers (reviews, stale-job sweeps) against the configured queue, until interrupted."""
    from bot.tasks import Queue

    settings = settings_from(ctx)
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine)
    Queue(settings, engine).huey.create_consumer(workers=workers, worker_type="thread").run()


def main() -> None:
    app(prog_name="reviewbot")


if __name__ == "__main__":
    main()
