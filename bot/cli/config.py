"""``reviewbot config check``: validate a repository configuration file (``.reviewbot.toml``) locally or
in CI, and show the settings a review would apply with it (a project's admin controls included)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlmodel import Session

from bot.cli.common import Format, FormatOption, command_group, fail, open_engine
from bot.cli.project import ForgeChoice, find_project
from bot.models import Project
from bot.repo_config import CONFIG_PATHS, Effective, RepoConfig, RepoConfigError, effective, parse
from bot.untrusted import terminal

config_app = command_group(
    "config",
    "The repository configuration file (.reviewbot.toml): check it before it is merged.",
    "reviewbot config check .reviewbot.toml --project group/app",
)


@config_app.command("check")
def check(
    ctx: typer.Context,
    path: Annotated[
        Path | None,
        typer.Argument(
            metavar="PATH", help=f"The file; default: the first of {', '.join(CONFIG_PATHS)} found here."
        ),
    ] = None,
    project: Annotated[
        str | None,
        typer.Option(metavar="PROJECT", help="Apply this registered project's settings (default: none)."),
    ] = None,
    forge: ForgeChoice = None,
    output: FormatOption = Format.TABLE,
) -> None:
    """Validate a repository configuration file and print the settings in force with it: exit 2 with
    the file's first problem and its line. Reviews read the file at the merge request's base commit,
    so a change to it applies once merged."""
    shown, text = _read(path)
    try:
        config = parse(text, shown)
    except RepoConfigError as error:
        fail(terminal(str(error)))
    row = _project(ctx, project, forge) if project else None
    settings = effective(row, (shown, text))
    notes = _notes(row, config, settings)
    if output is Format.JSON:
        data: dict[str, Any] = {"file": shown, "project": row.path if row else None, **settings.as_dict()}
        typer.echo(json.dumps({**data, "source": settings.source, "digest": settings.digest, "notes": notes}))
        return
    Console().print(_table(shown, row, settings))
    for note in notes:
        Console().print(Text(terminal(note), style="yellow"))


def _read(path: Path | None) -> tuple[str, str]:
    """(the path as shown, the file's text)."""
    if path is None:
        path = next((Path(p) for p in CONFIG_PATHS if Path(p).is_file()), None)
        if path is None:
            fail(f"no {', '.join(CONFIG_PATHS)} in this folder; give the file's PATH")
    try:
        return str(path), path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        fail(f"{terminal(str(path))}: not UTF-8 text")
    except OSError as error:
        fail(f"{terminal(str(path))}: {terminal(error.strerror or str(error))}")


def _project(ctx: typer.Context, path: str, forge: Any) -> Project:
    _, engine = open_engine(ctx)
    with Session(engine, expire_on_commit=False) as session:
        return find_project(session, path, forge)


def _notes(project: Project | None, config: RepoConfig, settings: Effective) -> list[str]:
    """What the project's admin controls changed in the file's settings."""
    if project is None:
        return []
    if not project.repo_config:
        return [
            f"{project.path} ignores repository files (project set --repo-config on): its own settings apply"
        ]
    notes = []
    if settings.refused:
        notes.append(f"keys the project does not let the file set, ignored: {', '.join(settings.refused)}")
    if "threshold" not in settings.refused and config.threshold not in (None, settings.threshold):
        floor = settings.threshold
        notes.append(f"threshold {config.threshold} is below the project's floor: raised to {floor}")
    return notes


def _table(shown: str, project: Project | None, settings: Effective) -> Table:
    table = Table("setting", title=Text(terminal(f"{shown}: valid")))
    table.add_column("value", overflow="fold")  # a digest is one long word
    rows = [
        ("project", project.path if project else "(none: the defaults)"),
        ("threshold", settings.threshold.value),
        ("ignore", ", ".join(settings.ignore_globs)),
        ("review", ", ".join(settings.review_globs) or "(every file)"),
        ("max_findings_per_file", str(settings.max_findings_per_file or "(no limit)")),
        ("summary", "on" if settings.summary else "off"),
        (
            "labels",
            ", ".join(f"{name} ({severity})" for name, severity in settings.labels.items()) or "(none)",
        ),
    ]
    rows += [
        (f"instructions[{n}]", f"{', '.join(i.paths)}: {i.text}") for n, i in enumerate(settings.instructions)
    ]
    rows.append(("digest", settings.digest))
    for name, value in rows:
        table.add_row(name, Text(terminal(value)))  # Text, not markup: the file's words
    return table
