"""``reviewbot doctor``: whether this deployment works, one line per check with the fix of each
failing one; exit 1 when any fails (``bot.doctor`` holds the checks)."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from bot.cli.common import Format, FormatOption, settings_from
from bot.doctor import State, healthy, run_checks
from bot.untrusted import terminal

_STYLE = {State.OK: "green", State.WARN: "yellow", State.FAIL: "bold red", State.SKIP: "dim"}


def doctor_command(ctx: typer.Context, output: FormatOption = Format.TABLE) -> None:
    """Check the deployment: configuration, database, queue and its consumers, the student and
    teacher servers, each project's token and webhook on its forge, the public URL. Exit 1 if
    anything fails.

    Example: [bold]reviewbot doctor[/bold]
    """
    checks = run_checks(settings_from(ctx))
    if output is Format.JSON:
        rows = [{"check": c.name, "state": c.state.value, "detail": c.detail, "fix": c.fix} for c in checks]
        typer.echo(json.dumps({"healthy": healthy(checks), "checks": rows}, indent=2))
    else:
        table = Table("check", "state", "detail", "fix", show_lines=False)
        for check in checks:
            # Text, not markup, without control characters: details quote servers' errors and paths.
            table.add_row(
                Text(terminal(check.name)), Text(check.state.value, style=_STYLE[check.state]),
                Text(terminal(check.detail)), Text(terminal(check.fix)),
            )  # fmt: skip
        Console().print(table)
        failed = sum(check.state is State.FAIL for check in checks)
        Console().print(
            Text(
                f"{failed} check(s) failed" if failed else "all checks passed",
                style=_STYLE[State.FAIL if failed else State.OK],
            )
        )
    if not healthy(checks):
        raise typer.Exit(1)
