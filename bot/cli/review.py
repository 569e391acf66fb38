"""``reviewbot review``: review a local git range with the student model, no forge involved."""

from __future__ import annotations

import asyncio
import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress, SpinnerColumn

from bot import db
from bot.cli.common import err, fail, settings_from
from bot.config import ConfigError, Settings
from bot.diff import Diff, parse_diff
from bot.llm import LLMClient, LLMError
from bot.models import Severity
from bot.review import localgit, render
from bot.review.pipeline import Limits, ReviewResult, review_diff
from bot.serving import served_models


class OutputFormat(StrEnum):
    TEXT = "text"
    JSON = "json"
    MARKDOWN = "markdown"


def review_command(
    ctx: typer.Context,
    repo: Annotated[Path, typer.Option(metavar="PATH", help="The git repository.", file_okay=False)] = Path(
        "."
    ),
    base: Annotated[
        str | None,
        typer.Option(
            metavar="REF", help="Review changes since this ref (merge base). Default: main or master."
        ),
    ] = None,
    head: Annotated[str, typer.Option(metavar="REF", help="The ref to review.")] = "HEAD",
    threshold: Annotated[
        Severity,
        typer.Option(
            metavar="SEVERITY", help="Drop findings below this severity (critical, major, minor, trivial)."
        ),
    ] = Severity.MINOR,
    output: Annotated[
        OutputFormat, typer.Option("--format", metavar="text|json|markdown", help="Output format.")
    ] = OutputFormat.TEXT,
    fail_on: Annotated[
        Severity | None,
        typer.Option(
            metavar="SEVERITY", help="Exit with 1 when a finding at or above this severity is found."
        ),
    ] = None,
) -> None:
    """Review a local git range with the student model, without any forge.

    Exit codes: 0 done, 1 a finding at or above --fail-on, 2 an error (bad ref, model server
    unreachable, or part of the diff could not be reviewed).

    Example: [bold]reviewbot review --base main --format markdown --fail-on major[/bold]
    """
    settings = settings_from(ctx)
    try:
        patch = localgit.diff_range(repo, base or localgit.default_base(repo), head)
        diff = parse_diff(patch)
        result = asyncio.run(_review_with_progress(settings, diff, threshold))
    except (localgit.GitError, ValueError, LLMError, ConfigError, sa.exc.SQLAlchemyError) as exc:
        fail(f"review: {exc}")
    if output is OutputFormat.JSON:
        typer.echo(json.dumps(result.to_json(), indent=2))
    elif output is OutputFormat.MARKDOWN:
        typer.echo(render.markdown(result))
    else:
        render.print_text(result, Console())
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
                limits=Limits(settings.review_max_calls, settings.review_deadline_s),
                on_chunks=lambda n: progress.update(bar, total=n),
                on_chunk_done=lambda: progress.advance(bar),
            )
