"""``reviewbot project …``: register projects on GitLab or GitHub, configure them, look at their reviews."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

import sqlalchemy as sa
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from sqlmodel import Session, select

from bot import project_settings
from bot.cli.common import cli_actor, command_group, err, fail, open_engine, open_secret_box
from bot.config import Settings
from bot.console.reviews import recent_reviews
from bot.feedback.roles import min_role
from bot.forges import DEFAULT_TOKEN_ENV, forge_for, token_env_refusal
from bot.forges.base import WEBHOOK_EVENTS, Connection, ForgeError
from bot.models import GATE_OFF, ForgeKind, Project, Severity, Source, SourceKind
from bot.project_settings import ProjectChange
from bot.secrets import new_secret, new_webhook_key
from bot.untrusted import terminal

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


class Switch(StrEnum):
    ON = "on"
    OFF = "off"


def find_project(session: Session, path: str, forge: ForgeKind | None) -> Project:
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
    project: Annotated[
        str | None, typer.Option(metavar="PATH", help="group/name on GitLab, owner/repo on GitHub.")
    ] = None,
    group: Annotated[
        str | None,
        typer.Option(
            metavar="GROUP",
            help="A GitLab group's full path instead of a project: one group hook serves all its projects.",
        ),
    ] = None,
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
    create_webhook: Annotated[
        bool,
        typer.Option(
            "--create-webhook",
            help="Create (or update) the webhook on the forge, with its secret and every event the bot uses.",
        ),
    ] = False,
    allow_local_url: Annotated[
        bool,
        typer.Option(
            "--allow-local-url",
            help="Let --create-webhook use a loopback REVIEWBOT_PUBLIC_URL (a forge on this machine).",
        ),
    ] = False,
    skip_checks: Annotated[
        bool,
        typer.Option(
            "--skip-checks",
            help="Add it without asking the forge whether the token may serve it (air-gapped).",
        ),
    ] = False,
) -> None:
    """Register a project (or a GitLab group) once its token is checked; prints the webhook to set up on
    the forge, or creates it there with --create-webhook."""
    settings, engine = open_engine(ctx)
    if (project is None) == (group is None):
        fail("give --project PATH, or --group GROUP on GitLab")
    if group is not None and forge is not ForgeKind.GITLAB:
        fail("--group is for GitLab groups; on GitHub, install a GitHub App (`reviewbot app add`)")
    refusal = token_env_refusal(token_env, settings.token_env_prefix) if token_env else None
    if refusal is not None:
        fail(f"--token-env: {refusal}")
    if create_webhook and skip_checks:
        fail("--create-webhook asks the forge, --skip-checks does not: choose one")
    if create_webhook:
        _refuse_local_url(settings, forge, allow_local_url)
    secret = _webhook_secret(secret_env)
    url = url.rstrip("/")
    target = Target(forge, url, project or group or "", token_env, is_group=group is not None)
    row = target.row(open_secret_box(settings).seal(secret), threshold)
    _refuse_duplicate(engine, row)
    connection: Connection | None = None
    if skip_checks:
        row.bot_username = bot_username or (None if target.is_group else _ask_bot_username(settings, target))
    else:
        connection = _checked(settings, target, manage_hooks=create_webhook)
        row.bot_username = bot_username or connection.bot_username
    _insert(engine, row)
    outcome = None
    if create_webhook and connection is not None:
        outcome = _create_webhook(connection, target, _hook_url(settings, row), secret)
    _print_connection(settings, target, row, secret, secret_env, outcome)


@dataclass(frozen=True)
class Target:
    """What ``project add`` registers: a project, or a GitLab group."""

    forge: ForgeKind
    url: str
    name: str  # the project's path or the group's full path
    token_env: str | None
    is_group: bool

    @property
    def shown(self) -> str:
        return f"{self.forge.value} {'group' if self.is_group else 'project'} {terminal(self.name)}"

    def row(self, sealed_secret: str, threshold: Severity) -> Project | Source:
        if self.is_group:
            return Source(
                kind=SourceKind.GITLAB_GROUP, forge=self.forge, forge_url=self.url, name=self.name,
                webhook_secret=sealed_secret, webhook_key=new_webhook_key(), token_env=self.token_env,
                severity_threshold=threshold,
            )  # fmt: skip
        return Project(
            forge=self.forge, forge_url=self.url, path=self.name, webhook_secret=sealed_secret,
            webhook_key=new_webhook_key(), token_env=self.token_env, severity_threshold=threshold,
        )  # fmt: skip


def _webhook_secret(secret_env: str | None) -> str:
    if secret_env is None:
        return new_secret()
    secret = os.environ.get(secret_env, "").strip()
    if not secret:  # an empty secret is no secret: the forge would send no token at all
        fail(f"--secret-env {secret_env}: that variable is not set or empty")
    return secret


def _local_url(settings: Settings) -> bool:
    """Whether REVIEWBOT_PUBLIC_URL is a loopback address, which a forge elsewhere cannot reach."""
    host = (settings.public_url.host or "").strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost" or host.endswith(".localhost")


def _refuse_local_url(settings: Settings, forge: ForgeKind, allowed: bool) -> None:
    """A forge elsewhere cannot deliver to 127.0.0.1: a hook made there would fail every delivery."""
    if _local_url(settings) and not allowed:
        fail(
            f"REVIEWBOT_PUBLIC_URL is {settings.public_url}, which {forge.value} cannot reach: set it to the"
            " address the forge reaches this service at (or pass --allow-local-url when the forge runs on"
            " this machine)"
        )


def _connect(settings: Settings, target: Target) -> Connection:
    """The forge's adapter for ``target``, authenticated with its token; fails when it cannot be made."""
    probe = Project(
        forge=target.forge,
        forge_url=target.url,
        path=target.name,
        webhook_secret="",
        token_env=target.token_env,
    )
    try:
        if not target.is_group:
            return forge_for(probe, settings.token_env_prefix)
        from bot.forges.gitlab import GitLabGroup

        return GitLabGroup(target.url, _group_token(settings, target), target.name)
    except ForgeError as exc:
        fail(f"could not check the token on {target.shown}: {terminal(str(exc))}; nothing was saved")


def _group_token(settings: Settings, target: Target) -> str:
    variable = target.token_env or DEFAULT_TOKEN_ENV[target.forge]
    refusal = token_env_refusal(variable, settings.token_env_prefix)
    if refusal is not None:
        fail(refusal)
    token = os.environ.get(variable)
    if not token:
        fail(f"no API token for {target.shown}: set the environment variable {variable}")
    return token


def _checked(settings: Settings, target: Target, *, manage_hooks: bool) -> Connection:
    """The adapter, once its token is known to have all the bot needs on ``target``; else fails with
    what it lacks, before anything is saved."""
    connection = _connect(settings, target)
    try:
        problems = connection.access_problems(manage_hooks=manage_hooks)
    except ForgeError as exc:
        fail(f"could not check the token on {target.shown}: {terminal(str(exc))}; nothing was saved")
    if problems:
        variable = target.token_env or DEFAULT_TOKEN_ENV[target.forge]
        listed = "".join(f"\n  - {terminal(problem)}" for problem in problems)
        fail(f"the token in ${variable} cannot serve {target.shown}:{listed}\nnothing was saved")
    return connection


def _ask_bot_username(settings: Settings, target: Target) -> str | None:
    """The bot's account, from the forge with its token; None (and a warning) when it cannot answer."""
    probe = Project(
        forge=target.forge,
        forge_url=target.url,
        path=target.name,
        webhook_secret="",
        token_env=target.token_env,
    )
    try:
        return forge_for(probe, settings.token_env_prefix).bot_username
    except ForgeError as exc:
        err.print(
            f"warning: could not ask {terminal(target.url)} who the bot is ({terminal(str(exc))}); its own"
            " events will not be recognized until `reviewbot project set --bot-username`",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return None


def _refuse_duplicate(engine: sa.Engine, row: Project | Source) -> None:
    with Session(engine) as session:
        if isinstance(row, Source):
            same = select(Source.id).where(
                Source.forge == row.forge, Source.forge_url == row.forge_url, Source.name == row.name
            )
            what = f"{row.forge} group {terminal(row.name)}"
        else:
            same = select(Project.id).where(
                Project.forge == row.forge, Project.forge_url == row.forge_url, Project.path == row.path
            )
            what = f"{row.forge} project {terminal(row.path)}"
        if session.exec(same).first() is not None:
            fail(f"{what} at {terminal(row.forge_url)} is already registered")


def _insert(engine: sa.Engine, row: Project | Source) -> None:
    with Session(engine, expire_on_commit=False) as session:
        session.add(row)
        session.commit()


def _hook_url(settings: Settings, row: Project | Source) -> str:
    """The project's (or group's) own webhook URL (for a project, the forge's shared one,
    /webhooks/FORGE, works too)."""
    return settings.webhook_url(row.forge, row.webhook_key)


def _create_webhook(connection: Connection, target: Target, hook_url: str, secret: str) -> str:
    """Creates or updates the webhook; fails (with what to run next) when the forge refuses."""
    try:
        return connection.ensure_webhook(hook_url, secret)
    except ForgeError as exc:
        again = "" if target.is_group else f": `reviewbot project hook {terminal(target.name)}` tries again"
        fail(f"{target.shown} is saved, but its webhook could not be set up ({terminal(str(exc))}){again}")


def _events(forge: ForgeKind) -> str:
    labels = ", ".join(f'"{event.label}"' for event in WEBHOOK_EVENTS[forge])
    return labels + (" (content type application/json)" if forge is ForgeKind.GITHUB else "")


def _print_connection(
    settings: Settings, target: Target, row: Project | Source, secret: str, secret_env: str | None,
    outcome: str | None,
) -> None:  # fmt: skip
    """What to configure on the forge: the webhook's URL, secret and events, and the token variable;
    with the webhook made through the API, only what was done."""
    typer.echo(f"added {target.shown} (bot: {terminal(row.bot_username or 'unknown')})")
    typer.echo(f"webhook URL:    {_hook_url(settings, row)}")
    if outcome is not None:
        typer.echo(f"webhook:        {outcome} on the forge, with its secret and these events")
    else:
        typer.echo(f"webhook secret: {secret}" + (f" (from {secret_env})" if secret_env else ""))
    typer.echo(f"events:         {_events(target.forge)}")
    typer.echo(f"API token from: ${row.token_env or DEFAULT_TOKEN_ENV[target.forge]}")
    if outcome is None and _local_url(settings):
        err.print(
            f"note: the webhook URL is under REVIEWBOT_PUBLIC_URL={settings.public_url}, a loopback address"
            " a forge elsewhere cannot reach: set REVIEWBOT_PUBLIC_URL to where it reaches this service,"
            " then `reviewbot project hook` (or `rotate-secret` to print the URL again)",
            markup=False, highlight=False, soft_wrap=True,
        )  # fmt: skip


@project_app.command("hook")
def hook(
    ctx: typer.Context,
    path: RegisteredProject,
    forge: ForgeChoice = None,
    allow_local_url: Annotated[
        bool,
        typer.Option(
            "--allow-local-url", help="Use a loopback REVIEWBOT_PUBLIC_URL (a forge on this machine)."
        ),
    ] = False,
) -> None:
    """Create (or update) a registered project's webhook on the forge: its URL, secret and every event."""
    settings, engine = open_engine(ctx)
    with Session(engine, expire_on_commit=False) as session:
        row = find_project(session, path, forge)
    target = Target(ForgeKind(row.forge), row.forge_url, row.path, row.token_env, is_group=False)
    if row.installation_id is not None:
        fail(f"{target.shown} is served by a GitHub App: its webhook is the App's, set on GitHub")
    secret = open_secret_box(settings).open(row.webhook_secret)
    if secret is None or row.webhook_key is None:
        fail(f"{target.shown} cannot open its webhook secret: `reviewbot project rotate-secret` makes one")
    _refuse_local_url(settings, target.forge, allow_local_url)
    connection = _checked(settings, target, manage_hooks=True)
    outcome = _create_webhook(connection, target, _hook_url(settings, row), secret)
    typer.echo(f"webhook {outcome} on {target.shown}: {_hook_url(settings, row)}")
    typer.echo(f"events:         {_events(target.forge)}")


@project_app.command("rotate-secret")
def rotate_secret(ctx: typer.Context, path: RegisteredProject, forge: ForgeChoice = None) -> None:
    """Give a project a new random webhook secret and print it, once: set it on the forge's webhook.
    Deliveries signed with the old secret are refused from then on (within a minute by a running
    `reviewbot serve`)."""
    settings, engine = open_engine(ctx)
    box = open_secret_box(settings)
    with Session(engine, expire_on_commit=False) as session:
        row = find_project(session, path, forge)
        secret = project_settings.rotate_secret(session, row, box, cli_actor())
        session.commit()
    typer.echo(f"new webhook secret of {row.forge} project {row.path} (shown once; set it on the forge):")
    typer.echo(f"webhook URL:    {_hook_url(settings, row)}")
    typer.echo(f"webhook secret: {secret}")


@project_app.command("list")
def list_projects(ctx: typer.Context) -> None:
    """The registered projects and their settings."""
    _, engine = open_engine(ctx)
    columns = ("forge", "project", "url", "threshold", "ignore", "enabled", "bot", "labels by")
    table = Table(*columns, "repo file", "last read")
    with Session(engine, expire_on_commit=False) as session:
        for p in session.exec(select(Project).order_by(Project.forge, Project.path)).all():
            table.add_row(
                p.forge, p.path, p.forge_url, p.severity_threshold, ", ".join(p.ignore_globs) or "(defaults)",
                "yes" if p.enabled else "no", p.bot_username or "?", _labellers(p), _repo_file(p),
                Text(terminal(_last_read(p))),  # quotes the file's words: Text, not markup
            )  # fmt: skip
        sources = session.exec(select(Source).order_by(Source.forge, Source.name)).all()
    Console().print(table)
    if sources:  # GitLab groups and GitHub Apps: their projects are added as they deliver
        kinds = {SourceKind.GITLAB_GROUP: "group", SourceKind.GITHUB_APP: "app"}
        shown = Table("kind", "forge", "name", "url", "threshold", "enabled", "bot", title="sources")
        for s in sources:
            shown.add_row(
                kinds.get(SourceKind(s.kind), s.kind), s.forge, s.name, s.forge_url, s.severity_threshold,
                "yes" if s.enabled else "no", s.bot_username or "?",
            )  # fmt: skip
        Console().print(shown)


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
    repo_config: Annotated[
        Switch | None,
        typer.Option(
            metavar="on|off",
            help="Whether the repository's .reviewbot.toml (read at the merge request's base) applies.",
        ),
    ] = None,
    threshold_floor: Annotated[
        str | None,
        typer.Option(
            metavar="SEVERITY|none",
            help="The least severe threshold the repository file may set (a lower one is raised to it).",
        ),
    ] = None,
    repo_config_keys: Annotated[
        str | None,
        typer.Option(
            metavar="KEY,…|all",
            help="The keys the repository file may set (the others are ignored), comma-separated; 'all'.",
        ),
    ] = None,
    block_on: Annotated[
        str | None,
        typer.Option(
            metavar="SEVERITY|off",
            help="Findings at this severity or above fail the 'reviewbot' commit status on the merge "
            "request's head (require it in branch protection); off: no status.",
        ),
    ] = None,
    max_comments: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            min=1,
            help="Inline comments a review posts at most (most severe, then most confident, first); the "
            "rest are listed in the summary. Findings that fail the gate are always posted.",
        ),
    ] = None,
    quiet: Annotated[
        bool | None,
        typer.Option("--quiet/--no-quiet", help="No summary comment when a review has nothing to say."),
    ] = None,
) -> None:
    """Change a project's settings."""
    _, engine = open_engine(ctx)
    given = {
        "severity_threshold": threshold, "ignore_globs": ignore, "enabled": enabled,
        "bot_username": bot_username, "feedback_min_role": feedback_min_role, "author_labels": author_labels,
        "repo_config": None if repo_config is None else repo_config is Switch.ON,
        "threshold_floor": threshold_floor, "repo_config_keys": repo_config_keys, "block_on": block_on,
        "max_comments": max_comments, "quiet": quiet,
    }  # fmt: skip
    change = _change({name: value for name, value in given.items() if value is not None})
    with Session(engine, expire_on_commit=False) as session:
        row = find_project(session, path, forge)
        project_settings.update_project(session, row, change, cli_actor())
        session.commit()
        globs = ", ".join(row.ignore_globs) or "(defaults)"
        state = "enabled" if row.enabled else "disabled"
        typer.echo(
            f"{row.forge} {row.path}: threshold {row.severity_threshold}, ignore {globs}, {state},"
            f" labels by {_labellers(row)}, {_voice(row)}, repository file {_repo_file(row)}"
        )


# The option of `project set` that gives each setting, for its error messages.
OPTIONS = {"severity_threshold": "--threshold", "ignore_globs": "--ignore", "enabled": "--enabled",
           "bot_username": "--bot-username", "feedback_min_role": "--feedback-min-role",
           "author_labels": "--author-labels", "repo_config": "--repo-config",
           "threshold_floor": "--threshold-floor", "repo_config_keys": "--repo-config-keys",
           "block_on": "--block-on", "max_comments": "--max-comments", "quiet": "--quiet"}  # fmt: skip


def _change(given: dict[str, object]) -> ProjectChange:
    """The options as a change (the checks every way of changing a project shares), or fails."""
    try:
        return ProjectChange.model_validate(given)
    except ValidationError as exc:
        field, message = project_settings.problems(exc)[0]
        fail(f"{OPTIONS.get(field, field)}: {terminal(message)}")


def _voice(project: Project) -> str:
    """What the project's merge requests get: the gate, the cap, the summary."""
    gate = "no gate" if project.block_on == GATE_OFF else f"gate at {project.block_on}"
    summary = "quiet summary" if project.quiet else "summary always"
    return f"{gate}, at most {project.max_comments} comments, {summary}"


def _last_read(project: Project) -> str:
    """The last review's reading of the repository file, and when."""
    if not project.repo_config_status:
        return "(not yet)"
    when = project.repo_config_checked_at
    return project.repo_config_status + (f" ({when:%Y-%m-%d %H:%M})" if when else "")


def _repo_file(project: Project) -> str:
    """Whether the repository's file applies, and the admin's floor under its threshold."""
    if not project.repo_config:
        return "off"
    floor = f", floor {project.threshold_floor}" if project.threshold_floor else ""
    keys = f", keys {' '.join(project.repo_config_keys)}" if project.repo_config_keys is not None else ""
    return f"on{floor}{keys}"


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
    """The project's recent reviews: status, timings, findings, and the error of failed ones (the
    console's Reviews page shows the same rows)."""
    _, engine = open_engine(ctx)
    table = Table("id", "MR", "head", "status", "queued", "took", "findings", "error")
    with Session(engine, expire_on_commit=False) as session:
        row = find_project(session, path, forge)
    for r in recent_reviews(engine, row.id, limit=limit).reviews:
        took = f"{r.duration_s:.1f} s" if r.duration_s is not None else ""
        style = {"failed": "red", "done": "green"}.get(r.status, "default")
        found = ", ".join(f"{n} {severity}" for severity, n in r.findings.items() if n)
        error = escape(terminal(r.error or ""))  # a forge's or a model server's words: not markup
        queued = r.queued_at.strftime("%Y-%m-%d %H:%M")
        table.add_row(str(r.id), f"!{r.mr_number}", r.head_sha[:12], f"[{style}]{r.status}[/]", queued, took,
                      found, error)  # fmt: skip
    Console().print(table)
