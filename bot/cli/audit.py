"""``reviewbot audit …``: the audit log, the changes admins made from the console, its API and the command
line (``bot.audit``), as the console's audit page shows them."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlmodel import Session

from bot import audit
from bot.cli.common import Format, FormatOption, command_group, open_engine
from bot.cli.project import ForgeChoice, find_project
from bot.console.audit_pages import MAX_LIMIT, as_utc, changes, shown
from bot.untrusted import terminal

audit_app = command_group(
    "audit",
    "The audit log: who changed which setting, model or secret, and when.",
    "reviewbot audit list --project group/app --since 2026-01-01",
)


@audit_app.command("list")
def list_entries(
    ctx: typer.Context,
    project: Annotated[
        str | None,
        typer.Option("--project", metavar="PROJECT", help="Only this project's entries (its path)."),
    ] = None,
    forge: ForgeChoice = None,
    since: Annotated[
        datetime | None, typer.Option(metavar="DATE", help="Only entries since this date (UTC unless given).")
    ] = None,
    limit: Annotated[
        int, typer.Option(metavar="N", min=1, max=MAX_LIMIT, help="How many, newest first.")
    ] = 50,
    output: FormatOption = Format.TABLE,
) -> None:
    """The newest entries: when, who, what, and each changed value before and after."""
    _, engine = open_engine(ctx)
    project_id = None
    if project is not None:
        with Session(engine) as session:
            project_id = find_project(session, project, forge).id
    rows = shown(audit.entries(engine, project_id=project_id, since=as_utc(since), limit=limit))
    if output is Format.JSON:
        typer.echo(json.dumps([row.model_dump(mode="json") for row in rows], indent=2))
        return
    if not rows:
        typer.echo(
            "no audit entries" + (" for this project" if project else "") + (" since then" if since else "")
        )
        return
    table = Table("when", "who", "action", "target", "changes")
    for row in rows:
        lines = (terminal(f"{key}: {before} → {after}") for key, before, after in changes(row))
        table.add_row(
            f"{row.created_at:%Y-%m-%d %H:%M:%S}",  # UTC
            Text(terminal(row.actor)),  # names and paths are not markup
            row.action,
            Text(terminal(row.target)),
            Text("\n".join(lines)),
        )
    Console().print(table)
