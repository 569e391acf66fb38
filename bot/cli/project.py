"""``reviewbot project …``: register projects on GitLab or GitHub, configure them, look at their reviews."""

from __future__ import annotations

import os
from typing import Annotated

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.table import Table
from sqlmodel import Session, select

from bot.cli.common import command_group, err, fail, open_engine
from bot.config import ConfigError, Settings
from bot.events import Role
from bot.feedback.roles import min_role
from bot.forges import DEFAULT_TOKEN_ENV, forge_for, token_env_refusal
from bot.forges.base import ForgeError
from bot.models import ForgeKind, Project, Review, Severity
from bot.secrets import SecretBox, new_secret, new_webhook_key, secret_box

project_app = command_group(
    "project",
    "Projects on GitLab or GitHub: add, list, configure.",
    "reviewbot project add --forge gitlab --url https://gitlab.example.com --project group/app",
)
FORGE_CHOICES = "gitlab|github"
RegisteredProject = Annotated[str, typer.Argument(metavar="PROJECT", help="The project, as registered.")]
ForgeChoice = Annotated[
    ForgeKind | None,
    typer.Option(metavar=FORGE_CHOICES, help="Needed when the path exists on several forges."),
]


def _find(session: Session, path: str, forge: ForgeKind | None) -> Project:
    query = select(Project).where(Project.path == path)
    if forge is not None:
        query = query.where(Project.forge == forge)
    found = session.exec(query).all()
    if not found:
        fail(f"no project {path!r}; see `reviewbot project list`")
    if len(found) > 1:
        fail(f"{path!r} exists on several forges; add --forge")
    return found[0]


@project_app.command("add")
def add(
    ctx: typer.Context,
    forge: Annotated[ForgeKind, typer.Option(metavar=FORGE_CHOICES, help="The forge.")],
    url: Annotated[
        str,
        typer.Option(
            metavar="URL", help="Forge URL: https://gitlab.example.com, https://github.com or a GHE API URL."
        ),
    ],
    project: Annotated[str, typer.Option(metavar="PATH", help="group/name on GitLab, owner/repo on GitHub.")],
    token_env: Annotated[
        str | None,
        typer.Option(
            metavar="VARIABLE",
            help="Variable holding the bot's API token. Default: GITLAB_TOKEN / GITHUB_TOKEN.",
        ),
    ] = None,
    secret_env: Annotated[
        str | None,
        typer.Option(
            metavar="VARIABLE",
            help="Variable holding the webhook secret to use. Default: a new random secret.",
        ),
    ] = None,
    threshold: Annotated[
        Severity,
        typer.Option(
            metavar="SEVERITY",
            help="Findings below this severity (critical, major, minor, trivial) are not posted.",
        ),
    ] = Severity.MINOR,
    bot_username: Annotated[
        str | None,
        typer.Option(
            metavar="NAME", help="The bot's account name; default: asked from the forge with the token."
        ),
    ] = None,
) -> None:
    """Register a project; prints the webhook URL and secret to configure on the forge."""
    settings, engine = open_engine(ctx)
    refusal = token_env_refusal(token_env, settings.token_env_prefix) if token_env else None
    if refusal is not None:
        fail(f"--token-env: {refusal}")
    secret = _webhook_secret(secret_env)
    row = Project(
        forge=forge,
        forge_url=url.rstrip("/"),
        path=project,
        webhook_secret=_box(settings).seal(secret),
        webhook_key=new_webhook_key(),
        token_env=token_env,
        severity_threshold=threshold,
        bot_username=bot_username or _ask_bot_username(settings, forge, url.rstrip("/"), project, token_env),
    )
    _insert_unique(engine, row)
    _print_connection(settings, row, secret, secret_env)


def _box(settings: Settings) -> SecretBox:
    try:
        return secret_box(settings)
    except ConfigError as exc:
        fail(str(exc))


def _webhook_secret(secret_env: str | None) -> str:
    if secret_env is None:
        return new_secret()
    secret = os.environ.get(secret_env, "").strip()
    if not secret:  # an empty secret is no secret: the forge would send no token at all
        fail(f"--secret-env {secret_env}: that variable is not set or empty")
    return secret


def _ask_bot_username(
    settings: Settings, forge: ForgeKind, url: str, path: str, token_env: str | None
) -> str | None:
    """The bot's account, from the forge with its token; None (and a warning) when it cannot answer."""
    probe = Project(forge=forge, forge_url=url, path=path, webhook_secret="", token_env=token_env)
    try:
        return forge_for(probe, settings.token_env_prefix).bot_username
    except ForgeError as exc:
        err.print(
            f"warning: could not ask {url} who the bot is ({exc}); its own events will not be recognized "
            "until `reviewbot project set --bot-username`",
            markup=False,
            soft_wrap=True,
        )
        return None


def _insert_unique(engine: sa.Engine, row: Project) -> None:
    with Session(engine, expire_on_commit=False) as session:
        same = select(Project).where(
            Project.forge == row.forge, Project.forge_url == row.forge_url, Project.path == row.path
        )
        if session.exec(same).first():
            fail(f"{row.forge} project {row.path} at {row.forge_url} is already registered")
        session.add(row)
        session.commit()


def _hook_url(settings: Settings, row: Project) -> str:
    """The project's own webhook URL (the forge's shared one, /webhooks/FORGE, works too)."""
    return f"{str(settings.public_url).rstrip('/')}/webhooks/{row.forge}/{row.webhook_key}"


def _print_connection(settings: Settings, row: Project, secret: str, secret_env: str | None) -> None:
    """What to configure on the forge: the webhook's URL, secret and events, and the token variable."""
    forge = ForgeKind(row.forge)
    hook_url = _hook_url(settings, row)
    events = (
        "Merge request events"
        if forge is ForgeKind.GITLAB
        else "Pull requests (content type application/json)"
    )
    typer.echo(f"added {forge.value} project {row.path} (bot: {row.bot_username or 'unknown'})")
    typer.echo(f"webhook URL:    {hook_url}")
    typer.echo(f"webhook secret: {secret}" + (f" (from {secret_env})" if secret_env else ""))
    typer.echo(f"events:         {events}")
    typer.echo(f"API token from: ${row.token_env or DEFAULT_TOKEN_ENV[forge]}")


@project_app.command("rotate-secret")
def rotate_secret(ctx: typer.Context, path: RegisteredProject, forge: ForgeChoice = None) -> None:
    """Give a project a new random webhook secret and print it, once: set it on the forge's webhook.
    Deliveries signed with the old secret are refused from then on (within a minute by a running
    `reviewbot serve`)."""
    settings, engine = open_engine(ctx)
    secret = new_secret()
    with Session(engine, expire_on_commit=False) as session:
        row = _find(session, path, forge)
        row.webhook_secret = _box(settings).seal(secret)
        row.webhook_key = row.webhook_key or new_webhook_key()
        session.add(row)
        session.commit()
    typer.echo(f"new webhook secret of {row.forge} project {row.path} (shown once; set it on the forge):")
    typer.echo(f"webhook URL:    {_hook_url(settings, row)}")
    typer.echo(f"webhook secret: {secret}")


@project_app.command("list")
def list_projects(ctx: typer.Context) -> None:
    """The registered projects and their settings."""
    _, engine = open_engine(ctx)
    table = Table("forge", "project", "url", "threshold", "ignore", "enabled", "bot", "labels by")
    with Session(engine, expire_on_commit=False) as session:
        for p in session.exec(select(Project).order_by(Project.forge, Project.path)).all():
            table.add_row(
                p.forge, p.path, p.forge_url, p.severity_threshold, ", ".join(p.ignore_globs) or "(defaults)",
                "yes" if p.enabled else "no", p.bot_username or "?", _labellers(p),
            )  # fmt: skip
    Console().print(table)


@project_app.command("set")
def set_project(
    ctx: typer.Context,
    path: RegisteredProject,
    forge: ForgeChoice = None,
    threshold: Annotated[
        Severity | None,
        typer.Option(
            metavar="SEVERITY",
            help="Findings below this severity (critical, major, minor, trivial) are not posted.",
        ),
    ] = None,
    ignore: Annotated[
        list[str] | None,
        typer.Option(metavar="GLOB", help="Glob of paths not to review; repeat it; replaces the defaults."),
    ] = None,
    enabled: Annotated[
        bool | None, typer.Option("--enabled/--disabled", help="Review this project or not.")
    ] = None,
    bot_username: Annotated[
        str | None, typer.Option(metavar="NAME", help="The bot's account on the forge.")
    ] = None,
    feedback_min_role: Annotated[
        str | None,
        typer.Option(
            metavar="ROLE",
            help="Least role whose feedback labels findings: guest|reporter|developer|maintainer|owner,"
            " or GitHub's read|triage|write|maintain|admin; 'default' for developer (write).",
        ),
    ] = None,
    author_labels: Annotated[
        bool | None,
        typer.Option(
            "--author-labels/--no-author-labels",
            help="Whether the merge request's author's feedback labels the findings of their own code.",
        ),
    ] = None,
) -> None:
    """Change a project's settings."""
    _, engine = open_engine(ctx)
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
        if feedback_min_role is not None:
            row.feedback_min_role = _role_setting(feedback_min_role)
        if author_labels is not None:
            row.author_labels = author_labels
        session.add(row)
        session.commit()
        globs = ", ".join(row.ignore_globs) or "(defaults)"
        state = "enabled" if row.enabled else "disabled"
        typer.echo(
            f"{row.forge} {row.path}: threshold {row.severity_threshold}, ignore {globs}, {state},"
            f" labels by {_labellers(row)}"
        )


def _role_setting(name: str) -> str | None:
    if name.strip().lower() == "default":
        return None
    try:
        return Role.of(name).value
    except ValueError:
        fail(f"--feedback-min-role: no role {name!r}; one of {', '.join(Role)}, or GitHub's names for them")


def _labellers(project: Project) -> str:
    """Whose feedback labels the project's findings, in a few words."""
    return f"{min_role(project)} and above" + (", the author too" if project.author_labels else "")


@project_app.command("reviews")
def reviews(
    ctx: typer.Context,
    path: RegisteredProject,
    forge: ForgeChoice = None,
    limit: Annotated[int, typer.Option(metavar="N", help="How many, newest first.")] = 30,
) -> None:
    """The project's recent reviews: status, timings, and the error of failed ones."""
    _, engine = open_engine(ctx)
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
