"""``reviewbot db …``: the database schema, created or brought up to date explicitly; the upgrade also
encrypts webhook secrets stored in plain text by an older reviewbot and gives every project its
webhook URL key (``bot.secrets.seal_stored``)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

import sqlalchemy as sa
import typer

from bot import db
from bot.cli.common import command_group, fail, open_engine, settings_from
from bot.config import ConfigError
from bot.retention import prune
from bot.secrets import seal_stored, secret_box

db_app = command_group(
    "db", "Database schema: create or upgrade it; prune what is no longer needed.", "reviewbot db upgrade"
)
_AGE = re.compile(r"(\d+)\s*([dh])")


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Create the schema or bring it to the newest version. Safe to run any number of times."""
    settings = settings_from(ctx)
    engine = db.make_engine(settings.database_url)
    where = engine.url.render_as_string(hide_password=True)
    try:
        before, after = db.upgrade(engine)
        sealed = seal_stored(engine, lambda: secret_box(settings))
    except ConfigError as exc:
        fail(f"db upgrade: {exc}")
    except sa.exc.SQLAlchemyError as exc:  # the user gets the database's own reason, in one line
        fail(f"db upgrade: {where}: {db.reason(exc)}")
    finally:
        engine.dispose()
    if before == after:
        typer.echo(f"{where}: schema already at revision {after}")
    else:
        typer.echo(f"{where}: schema upgraded from {before or 'empty'} to {after}")
    if sealed:
        typer.echo(f"{where}: {sealed} project(s) given an encrypted webhook secret or a webhook URL key")


def parse_age(text: str) -> timedelta:
    """``90d`` or ``12h``: days or hours."""
    match = _AGE.fullmatch(text.strip().lower())
    if match is None:
        raise typer.BadParameter(f"{text!r} is not an age: write days or hours, like 90d or 12h")
    number, unit = int(match[1]), match[2]
    return timedelta(days=number) if unit == "d" else timedelta(hours=number)


@db_app.command("prune")
def db_prune(
    ctx: typer.Context,
    older_than: Annotated[
        str | None,
        typer.Option(
            metavar="AGE",
            help="Remove what is older than this (90d, 12h); default REVIEWBOT_RETENTION_DAYS.",
        ),
    ] = None,
) -> None:
    """Remove what no feature needs any more: old deliveries, sent jobs, superseded findings without
    feedback, failed or superseded reviews without findings. Never a finding with feedback."""
    settings, engine = open_engine(ctx)
    if older_than is not None:
        age = parse_age(older_than)
    elif settings.retention_days is not None:
        age = timedelta(days=settings.retention_days)
    else:
        fail("db prune: give --older-than (REVIEWBOT_RETENTION_DAYS is not set)")
    try:
        removed = prune(engine, age)
    except sa.exc.SQLAlchemyError as exc:
        fail(f"db prune: {db.reason(exc)}")
    finally:
        engine.dispose()
    for kind, count in removed.items():
        typer.echo(f"{kind}: {count} removed")
