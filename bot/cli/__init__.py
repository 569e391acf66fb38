"""The ``reviewbot`` command line: the root app and its global options; one module per command group
(``project``, ``feedback``, ``db``, ``audit``), ``review`` for a local git range, ``service`` for
``serve`` and ``worker``. The trainer's groups (``flywheel``, ``models``) arrive through the
``reviewbot.commands`` entry point, so ``bot`` never imports ``flywheel``."""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated

import typer

from bot import __version__
from bot.cli import help as help_style
from bot.cli.app import app_app
from bot.cli.audit import audit_app
from bot.cli.common import err
from bot.cli.config import config_app
from bot.cli.db import db_app
from bot.cli.doctor import doctor_command
from bot.cli.feedback import feedback_app
from bot.cli.project import project_app
from bot.cli.review import review_command
from bot.cli.service import serve, worker
from bot.config import ConfigError, load_settings

help_style.install()
app = typer.Typer(
    name="reviewbot",
    help="Self-hosted code-review bot for GitLab and GitHub; its small model learns from its reviewers.\n\n"
    "Start here: [bold]reviewbot db upgrade[/bold], then [bold]reviewbot project add --help[/bold].",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,  # locals may hold tokens and secrets
)
app.add_typer(project_app)
app.add_typer(app_app)
app.add_typer(feedback_app)
app.add_typer(db_app)
app.add_typer(config_app)
app.add_typer(audit_app)
app.command("review")(review_command)
app.command("serve")(serve)
app.command("worker")(worker)
app.command("doctor")(doctor_command)
for _entry in entry_points(group="reviewbot.commands"):
    app.add_typer(_entry.load(), name=_entry.name)


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
    env_file: Annotated[
        Path | None,
        typer.Option(
            "--env-file",
            envvar="REVIEWBOT_ENV_FILE",
            metavar="PATH",
            help="Read settings from this .env file too (the environment wins). None is read unless given.",
        ),
    ] = None,
) -> None:
    """Configuration comes from REVIEWBOT_* environment variables, and from a .env file only when one is
    given (--env-file or REVIEWBOT_ENV_FILE): never from the working directory, which may be a pull
    request's checkout."""
    del version  # handled by its eager callback
    try:
        settings = load_settings(env_file)
    except ConfigError as exc:
        err.print(f"reviewbot: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    settings.home.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.log_level != "DEBUG":  # the CLI reports migrations and requests itself
        for chatty in ("alembic", "httpx", "httpx2", "openai"):
            logging.getLogger(chatty).setLevel(logging.WARNING)
    ctx.obj = settings


def main() -> None:
    app(prog_name="reviewbot")
