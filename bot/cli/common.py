"""What every command group shares: the settings, the database (checked, never migrated behind the
user's back), one way to fail, the output formats, and help that reads like a tool's."""

from __future__ import annotations

import getpass
from enum import StrEnum
from typing import Annotated, NoReturn

import sqlalchemy as sa
import typer
from rich.console import Console

from bot import db
from bot.config import ConfigError, Settings
from bot.secrets import SecretBox, secret_box

err = Console(stderr=True)


class Format(StrEnum):
    TABLE = "table"
    JSON = "json"


# Options several commands share, declared once.
FormatOption = Annotated[Format, typer.Option("--format", metavar="table|json", help="Output format.")]
ProjectFilter = Annotated[
    str | None, typer.Option("--project", metavar="PROJECT", help="Only this project (its path).")
]


def settings_from(ctx: typer.Context) -> Settings:
    settings: Settings = ctx.find_root().obj
    return settings


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``reviewbot: message`` on stderr and exit with ``code`` (2: bad input or setup, 1: the
    command ran and the answer is no)."""
    err.print(f"reviewbot: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def open_secret_box(settings: Settings) -> SecretBox:
    """The box that seals stored secrets, or one line saying which setting is missing."""
    try:
        return secret_box(settings)
    except ConfigError as exc:
        fail(str(exc))


def open_engine(ctx: typer.Context) -> tuple[Settings, sa.Engine]:
    """The settings and the database, whose schema must be current: commands never migrate it (that
    is ``reviewbot db upgrade``'s job, run once per install or upgrade)."""
    settings = settings_from(ctx)
    engine = db.make_engine(settings.database_url)
    try:
        current, head = db.schema_revisions(engine)
    except sa.exc.SQLAlchemyError as exc:
        where = engine.url.render_as_string(hide_password=True)
        fail(f"{where}: {db.reason(exc)}")
    if current != head:
        where = engine.url.render_as_string(hide_password=True)
        state = f"at revision {current}" if current else "empty"
        fail(f"the database {where} is {state}; this reviewbot needs {head}: run `reviewbot db upgrade`")
    return settings, engine


def command_group(name: str, help_text: str, example: str) -> typer.Typer:
    """A command group whose help ends with an example."""
    return typer.Typer(
        name=name,
        help=f"{help_text}\n\nExample: [bold]{example}[/bold]",
        no_args_is_help=True,
        rich_markup_mode="rich",
        pretty_exceptions_show_locals=False,  # locals may hold tokens and secrets
    )


def cli_actor() -> str:
    """Who the audit log names for a change made on the command line: ``cli:`` and the local user."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):  # no login name and no passwd entry (a bare container)
        return "cli"
