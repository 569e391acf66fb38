"""``reviewbot app …``: register a GitHub App, whose installations bring their repositories with them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import sqlalchemy as sa
import typer
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlmodel import Session, col, func, select
from sqlmodel.sql.expression import SelectOfScalar

from bot.cli.common import command_group, fail, open_engine, open_secret_box
from bot.config import Settings
from bot.forges import github_api_url
from bot.forges.base import WEBHOOK_EVENTS, ForgeError
from bot.forges.github_app import app_slug, installations
from bot.models import ForgeKind, Project, Severity, Source, SourceKind
from bot.secrets import new_webhook_key
from bot.sources import Changes, sync_app
from bot.untrusted import terminal

app_app = command_group(
    "app",
    "GitHub Apps: register one; the repositories it is installed on are reviewed.",
    "reviewbot app add --forge github --app-id 123456 --private-key-file app.pem --secret-env APP_SECRET",
)
# Apps get installation events whatever they subscribe to; the rest are the bot's own.
APP_EVENTS = ("installation", "installation_repositories")
APP_PERMISSIONS = (
    "Pull requests: read and write",
    "Issues: read and write",
    "Contents: read",
    "Metadata: read",
)
RegisteredApp = Annotated[str, typer.Argument(metavar="APP_ID", help="The App's id, as registered.")]


@app_app.command("add")
def add(
    ctx: typer.Context,
    app_id: Annotated[int, typer.Option(metavar="ID", help="The App's id (its settings page, 'About').")],
    private_key_file: Annotated[
        Path, typer.Option(metavar="PEM", help="The App's private key, as GitHub made it (.pem).")
    ],
    secret_env: Annotated[
        str, typer.Option(metavar="VARIABLE", help="Variable holding the App's webhook secret.")
    ],
    forge: Annotated[ForgeKind, typer.Option(metavar="github", help="The forge (only GitHub has Apps).")] = (
        ForgeKind.GITHUB
    ),
    url: Annotated[
        str, typer.Option(metavar="URL", help="https://github.com, or a GitHub Enterprise API URL.")
    ] = "https://github.com",
    threshold: Annotated[
        Severity,
        typer.Option(
            metavar="SEVERITY",
            help="Findings below this severity are not posted, in the repositories the App adds.",
        ),
    ] = Severity.MINOR,
) -> None:
    """Register a GitHub App: checks its key with GitHub, then prints the webhook to set on the App."""
    if forge is not ForgeKind.GITHUB:
        fail("--forge: only GitHub has Apps; for a GitLab group use `reviewbot project add --group`")
    settings, engine = open_engine(ctx)
    private_key = _private_key(private_key_file)
    secret = os.environ.get(secret_env, "").strip()
    if not secret:  # an empty secret is no secret: GitHub would sign with nothing
        fail(f"--secret-env {secret_env}: that variable is not set or empty")
    forge_url = url.rstrip("/")
    try:
        slug = app_slug(github_api_url(forge_url), app_id, private_key)
    except ForgeError as exc:
        fail(str(exc))
    box = open_secret_box(settings)
    source = Source(
        kind=SourceKind.GITHUB_APP,
        forge=ForgeKind.GITHUB,
        forge_url=forge_url,
        name=str(app_id),
        webhook_secret=box.seal(secret),
        webhook_key=new_webhook_key(),
        app_id=app_id,
        private_key=box.seal(private_key),
        bot_username=f"{slug}[bot]",
        severity_threshold=threshold,
    )
    with Session(engine, expire_on_commit=False) as session:
        if session.exec(_same_app(forge_url, app_id)).first() is not None:
            fail(f"GitHub App {app_id} at {forge_url} is already registered; see `reviewbot app list`")
        session.add(source)
        session.commit()
    _print_setup(settings, source, secret_env)


def _private_key(path: Path) -> str:
    """The PEM text, once it parses as an RSA private key (what GitHub gives an App)."""
    try:
        pem = path.read_bytes()
    except OSError as exc:
        fail(f"--private-key-file {path}: {exc.strerror or exc}")
    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        fail(f"--private-key-file {path}: not an unencrypted private key in PEM (the .pem GitHub generates)")
    if not isinstance(key, RSAPrivateKey):
        fail(f"--private-key-file {path}: not an RSA key (GitHub Apps' keys are RSA)")
    return pem.decode()


def _same_app(forge_url: str, app_id: int) -> SelectOfScalar[Source]:
    return select(Source).where(
        col(Source.kind) == SourceKind.GITHUB_APP,
        col(Source.forge_url) == forge_url,
        col(Source.name) == str(app_id),
    )


def _print_setup(settings: Settings, source: Source, secret_env: str) -> None:
    """What to set on the App's settings page: the webhook, its events, the permissions."""
    hook_url = settings.webhook_url(source.forge, source.webhook_key)
    events = [event.name for event in WEBHOOK_EVENTS[ForgeKind.GITHUB]]
    typer.echo(f"added GitHub App {source.name} (bot: {terminal(source.bot_username or '')})")
    typer.echo(f"webhook URL:    {hook_url}")
    typer.echo(f"webhook secret: from {secret_env}")
    typer.echo(f"events:         {', '.join(events)} (and {', '.join(APP_EVENTS)}, which Apps always get)")
    typer.echo(f"permissions:    {'; '.join(APP_PERMISSIONS)}")
    typer.echo("then install the App on repositories: each is added as GitHub tells of it")


@app_app.command("list")
def list_apps(ctx: typer.Context) -> None:
    """The registered Apps and how many repositories each serves."""
    _, engine = open_engine(ctx)
    table = Table("app", "bot", "url", "repositories", "threshold", "enabled")
    serving = (
        select(col(Project.source_id), func.count(), func.sum(sa.cast(col(Project.enabled), sa.Integer)))
        .where(col(Project.source_id).is_not(None))
        .group_by(col(Project.source_id))
    )
    with Session(engine) as session:
        counts = {source_id: (total, enabled or 0) for source_id, total, enabled in session.exec(serving)}
        query = select(Source).where(col(Source.kind) == SourceKind.GITHUB_APP).order_by(col(Source.id))
        for source in session.exec(query).all():
            total, enabled = counts.get(source.id, (0, 0))
            table.add_row(
                escape(source.name), escape(terminal(source.bot_username or "?")), escape(source.forge_url),
                f"{enabled} of {total} enabled", source.severity_threshold, "yes" if source.enabled else "no",
            )  # fmt: skip
    Console().print(table)


@app_app.command("sync")
def sync(ctx: typer.Context, name: RegisteredApp) -> None:
    """Match the App's repositories to its installations as GitHub lists them now: adds those
    installed while the service was down, disables those it left."""
    settings, engine = open_engine(ctx)
    box = open_secret_box(settings)
    with Session(engine, expire_on_commit=False) as session:
        source = session.exec(
            select(Source).where(col(Source.kind) == SourceKind.GITHUB_APP, col(Source.name) == name)
        ).first()
        if source is None or source.app_id is None:
            fail(f"no GitHub App {name!r}; see `reviewbot app list`")
        private_key = box.open(source.private_key or "")
        if not private_key:
            fail(f"GitHub App {name}: its private key cannot be read with this REVIEWBOT_SECRET_KEY")
        try:
            listed = installations(github_api_url(source.forge_url), source.app_id, private_key)
        except ForgeError as exc:
            fail(str(exc))
        changes = sync_app(session, source, {i.installation_id: i.repositories for i in listed})
        session.commit()
    _print_changes(name, len(listed), changes)


def _print_changes(name: str, installed: int, changes: Changes) -> None:
    typer.echo(f"GitHub App {name}: {installed} installations; {changes.describe()}")
    for what, paths in vars(changes).items():
        for path in paths:
            typer.echo(f"  {what.replace('_', ' ')}: {terminal(path)}")
