"""``reviewbot review``: review a local git range with the student model, no forge involved.

The repository's settings file is read at the base ref, as the service reads it at a merge
request's base: the range under review cannot change how it is reviewed."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress, SpinnerColumn

from bot import db, untrusted
from bot.cli.common import err, fail, settings_from
from bot.config import ConfigError, Settings
from bot.diff import Diff, parse_diff
from bot.llm import LLMClient, LLMError
from bot.models import Severity
from bot.repo_config import Effective, effective, find_config
from bot.review import localgit, render
from bot.review.pipeline import Limits, ReviewResult, review_diff
from bot.serving import load_missing_adapters, served_models


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
        Severity | None,
        typer.Option(
            metavar="SEVERITY",
            help="Drop findings below this severity (critical, major, minor, trivial). "
            "Default: the repository file's threshold, else minor.",
        ),
    ] = None,
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

    The repository's settings file (.reviewbot.toml, .gitlab/reviewbot.toml or .github/reviewbot.toml)
    is read at the base ref; a broken one is reported and the defaults apply.

    Exit codes: 0 done, 1 a finding at or above --fail-on, 2 an error (bad ref, model server
    unreachable, or part of the diff could not be reviewed).

    Example: [bold]reviewbot review --base main --format markdown --fail-on major[/bold]
    """
    settings = settings_from(ctx)
    try:
        base_ref = base or localgit.default_base(repo)
        patch = localgit.diff_range(repo, base_ref, head)
        config = repository_settings(repo, base_ref)
        _tell(config, base_ref)
        diff = parse_diff(patch, config.ignore_globs)
        result = asyncio.run(_review_with_progress(settings, diff, threshold or config.threshold, config))
    except (localgit.GitError, ValueError, LLMError, ConfigError, sa.exc.SQLAlchemyError) as exc:
        fail(f"review: {exc}")
    if output is OutputFormat.JSON:
        settings_json = {"source": config.source, "problem": config.problem, "digest": config.digest}
        typer.echo(json.dumps({**result.to_json(), "settings": settings_json}, indent=2))
    elif output is OutputFormat.MARKDOWN:
        typer.echo(render.markdown(result))
    else:
        render.print_text(result, Console())
    if result.failed:
        raise typer.Exit(2)
    if fail_on is not None and any(f.severity.rank >= fail_on.rank for f in result.findings):
        raise typer.Exit(1)


def repository_settings(repo: Path, base_ref: str) -> Effective:
    """The defaults with the repository's settings file at ``base_ref`` applied; a file git cannot
    give (too large) is a problem of the settings, as a broken one is, not of the review."""
    tried: list[str] = []

    def read(path: str) -> str | None:
        tried.append(path)
        return localgit.file_at(repo, base_ref, path)

    try:
        found = find_config(read)
    except localgit.GitError as exc:
        return replace(effective(None, None), problem=f"{tried[-1]} could not be read: {exc}")
    return effective(None, found)


def _tell(config: Effective, base_ref: str) -> None:
    """One line on stderr: the settings file used, or what was wrong with it (it quotes the file)."""
    if config.problem:
        line = f"the repository's settings file was not used (defaults apply): {config.problem}"
    elif config.source:
        line = f"settings: {config.source} at {base_ref}"
    else:
        return
    typer.echo(f"reviewbot: {untrusted.terminal(line)}", err=True)


def _existing_database(settings: Settings) -> sa.Engine | None:
    """The configured database, unless it is a SQLite file that does not exist: a local review
    must not leave a new database file in the user's repository."""
    url = sa.make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").exists():
        return None
    return db.make_engine(settings.database_url)


async def _review_with_progress(
    settings: Settings, diff: Diff, threshold: Severity, config: Effective
) -> ReviewResult:
    async with LLMClient.student(settings) as llm:
        served = await llm.list_models()  # fails fast, with the URL, when the server is down
        engine = _existing_database(settings)
        if engine is not None and sa.inspect(engine).has_table("modelversion"):
            # As the review job does: a restarted server, or a replica that has not resolved them yet.
            served += await load_missing_adapters(engine, llm)
        models = served_models(settings, engine)
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
                review_globs=config.review_globs,
                instructions=config.instructions_for,
                max_findings_per_file=config.max_findings_per_file,
            )
