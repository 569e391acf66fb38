"""``reviewbot project …``: register projects on GitLab or GitHub and look at their reviews."""

from __future__ import annotations

import os
import secrets
from typing import Annotated

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.table import Table
from sqlmodel import Session, select

from bot import db
from bot.config import Settings
from bot.forges import DEFAULT_TOKEN_ENV, forge_for
from bot.forges.base import ForgeError
from bot.models import Forge, Project, Review, Severity

project_app = typer.Typer(
    pretty_exceptions_show_locals=False,
    name="project",
    help="Projects on GitLab or GitHub: add, list, configure.",
    no_args_is_help=True,
)
err = Console(stderr=True)


def _fail(message: str) -> typer.Exit:
    err.print(f"reviewbot project: {message}", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(2)


def _engine(ctx: typer.Context) -> tuple[Settings, sa.Engine]:
    settings: Settings = ctx.obj
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine)
    return settings, engine


def _find(session: Session, path: str, forge: Forge | None) -> Project:
    query = select(Project).where(Project.path == path)
    if forge is not None:
        query = query.where(Project.forge == forge)
    found = session.exec(query).all()
    if not found:
        raise _fail(f"no project {path!r}; see `reviewbot project list`")
    if len(found) > 1:
        raise _fail(f"{path!r} exists on several forges; add --forge")
    return found[0]


@project_app.command("add")
def add(
    ctx: typer.Context,
    forge: Annotated[Forge, typer.Option(help="The forge.")],
    url: Annotated[
        str, typer.Option(help="Forge URL: https://gitlab.example.com, https://github.com or a GHE API URL.")
    ],
    project: Annotated[str, typer.Option(help="group/name on GitLab, owner/repo on GitHub.")],
    token_env: Annotated[
        str | None,
        typer.Option(help="Variable holding the bot's API token. Default: GITLAB_TOKEN / GITHUB_TOKEN."),
    ] = None,
    secret_env: Annotated[
        str | None,
        typer.Option(help="Variable holding the webhook secret to use. Default: a new random secret."),
    ] = None,
    threshold: Annotated[
        Severity, typer.Option(help="Findings below this severity are not posted.")
    ] = Severity.MINOR,
    bot_username: Annotated[
        str | None, typer.Option(help="The bot's account name; default: asked from the forge with the token.")
    ] = None,
) -> None:
    """Register a project; prints the webhook URL and secret to configure on the forge."""
    settings, engine = _engine(ctx)
    if secret_env is not None and not os.environ.get(secret_env):
        raise _fail(f"--secret-env {secret_env}: that variable is not set")
    secret = os.environ[secret_env] if secret_env else secrets.token_urlsafe(32)
    row = Project(
        forge=forge,
        forge_url=url.rstrip("/"),
        path=project,
        webhook_secret=secret,
        token_env=token_env,
        severity_threshold=threshold,
        bot_username=bot_username,
    )
    if bot_username is None:
        try:
            row.bot_username = forge_for(row).bot_username
        except ForgeError as exc:
            err.print(
                f"warning: could not ask {url} who the bot is ({exc}); its own events will not be recognized "
                "until `reviewbot project set --bot-username`",
                markup=False,
                soft_wrap=True,
            )
    with Session(engine, expire_on_commit=False) as session:
        if session.exec(
            select(Project).where(
                Project.forge == forge, Project.forge_url == row.forge_url, Project.path == project
            )
        ).first():
            raise _fail(f"{forge} project {project} at {url} is already registered")
        session.add(row)
        session.commit()
    hook_url = f"{str(settings.public_url).rstrip('/')}/webhooks/{forge.value}"
    events = (
        "Merge request events" if forge is Forge.GITLAB else "Pull requests (content type application/json)"
    )
    typer.echo(f"added {forge.value} project {project} (bot: {row.bot_username or 'unknown'})")
    typer.echo(f"webhook URL:    {hook_url}")
    typer.echo(f"webhook secret: {secret}" + (f" (from {secret_env})" if secret_env else ""))
    typer.echo(f"events:         {events}")
    typer.echo(f"API token from: ${token_env or DEFAULT_TOKEN_ENV[forge]}")


@project_app.command("list")
def list_projects(ctx: typer.Context) -> None:
    """The registered projects and their settings."""
    _, engine = _engine(ctx)
    table = Table("forge", "project", "url", "threshold", "ignore", "enabled", "bot")
    with Session(engine, expire_on_commit=False) as session:
        for p in session.exec(select(Project).order_by(Project.forge, Project.path)).all():
            table.add_row(
                p.forge, p.path, p.forge_url, p.severity_threshold, ", ".join(p.ignore_globs) or "(defaults)",
                "yes" if p.enabled else "no", p.bot_username or "?",
            )  # fmt: skip
    Console().print(table)


@project_app.command("set")
def set_project(
    ctx: typer.Context,
    path: Annotated[str, typer.Argument(help="The project, as registered.")],
    forge: Annotated[
        Forge | None, typer.Option(help="Needed when the path exists on several forges.")
    ] = None,
    threshold: Annotated[
        Severity | None, typer.Option(help="Findings below this severity are not posted.")
    ] = None,
    ignore: Annotated[
        list[str] | None, typer.Option(help="Glob of paths not to review; repeat it; replaces the defaults.")
    ] = None,
    enabled: Annotated[
        bool | None, typer.Option("--enabled/--disabled", help="Review this project or not.")
    ] = None,
    bot_username: Annotated[str | None, typer.Option(help="The bot's account on the forge.")] = None,
) -> None:
    """Change a project's settings."""
    _, engine = _engine(ctx)
    with Session(engine, expire_on_commit=False) as session:
        row = _find(session, path, forge)
        if threshold is not None:
            row.severity_threshold = threshold
        if ignore is not None:
            row.ignore_globs = list(ignore)
        if enabled is not None:
            row.enabled = enabled
        if bot_username is not None:
            row.bot_username = bot_username
        session.add(row)
        session.commit()
        globs = ", ".join(row.ignore_globs) or "(defaults)"
        state = "enabled" if row.enabled else "disabled"
        typer.echo(f"{row.forge} {row.path}: threshold {row.severity_threshold}, ignore {globs}, {state}")


@project_app.command("reviews")
def reviews(
    ctx: typer.Context,
    path: Annotated[str, typer.Argument(help="The project, as registered.")],
    forge: Annotated[
        Forge | None, typer.Option(help="Needed when the path exists on several forges.")
    ] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 30,
) -> None:
    """The project's recent reviews: status, timings, and the error of failed ones."""
    _, engine = _engine(ctx)
    table = Table("id", "MR", "head", "status", "queued", "took", "error")
    with Session(engine, expire_on_commit=False) as session:
        row = _find(session, path, forge)
        query = (
            select(Review).where(Review.project_id == row.id).order_by(sa.desc(sa.column("id"))).limit(limit)
        )
        for r in session.exec(query).all():
            took = (
                f"{(r.finished_at - r.started_at).total_seconds():.1f} s"
                if r.finished_at and r.started_at
                else ""
            )
            style = {"failed": "red", "done": "green"}.get(r.status, "default")
            status = f"[{style}]{r.status}[/]"
            queued = r.created_at.strftime("%Y-%m-%d %H:%M")
            table.add_row(str(r.id), f"!{r.mr_number}", r.head_sha[:12], status, queued, took, r.error or "")
    Console().print(table)
