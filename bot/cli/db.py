"""``reviewbot db …``: the database schema, created or brought up to date explicitly; the upgrade also
encrypts webhook secrets stored in plain text by an older reviewbot and gives every project its
webhook URL key (``bot.secrets.seal_stored``)."""

from __future__ import annotations

import sqlalchemy as sa
import typer

from bot import db
from bot.cli.common import command_group, fail, settings_from
from bot.config import ConfigError
from bot.secrets import seal_stored, secret_box

db_app = command_group("db", "Database schema: create or upgrade it.", "reviewbot db upgrade")


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
