"""The ``reviewbot`` command line."""

from __future__ import annotations

import logging
from typing import Annotated

import sqlalchemy as sa
import typer
from rich.console import Console

from bot import __version__, db
from bot.config import ConfigError, Settings, load_settings

app = typer.Typer(
    name="reviewbot",
    help="Self-hosted code-review bot for GitLab and GitHub; its small model learns from its reviewers.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
err = Console(stderr=True)


def _group(name: str, help_text: str) -> typer.Typer:
    group = typer.Typer(name=name, help=help_text, no_args_is_help=True)
    app.add_typer(group)
    return group


db_app = _group("db", "Database schema: create or upgrade it.")
_group("serve", "Run the API (webhooks, admin) with an embedded job consumer. No commands yet.")
_group(
    "worker",
    "Run job consumers (reviews, feedback polling, training) as separate processes. No commands yet.",
)
_group("review", "Review a local git range with the student model, without any forge. No commands yet.")
_group("project", "Projects on GitLab or GitHub: add, list, configure. No commands yet.")
_group("feedback", "Reviewers' reactions: list, export as training data, statistics. No commands yet.")
_group("flywheel", "The training flywheel: run, status, report. No commands yet.")
_group("models", "Adapter versions: list, promote, roll back. No commands yet.")


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
    if settings.log_level != "DEBUG":
        logging.getLogger("alembic").setLevel(logging.WARNING)  # the CLI reports the revisions itself
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


def main() -> None:
    app(prog_name="reviewbot")


if __name__ == "__main__":
    main()
