"""`reviewbot project add` connecting a forge in one command, against the fake forges over HTTP: the
token is checked before anything is saved, `--create-webhook` creates the hook (and `project hook`
updates it, never a second one) with every event, GitLab groups become sources with a group hook,
and names from the forge or the command line reach the terminal without control characters."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import Result
from sqlmodel import Session, select
from typer.testing import CliRunner

from bot import db
from bot.cli import app as cli
from bot.config import load_settings
from bot.forges.base import WEBHOOK_EVENTS
from bot.models import ForgeKind, Project, Source, SourceKind
from bot.secrets import secret_box
from tests.support.fake_github import FakeGitHub
from tests.support.fake_gitlab import FakeGitLab, User
from tests.support.live_server import live_server

DEVELOPER, MAINTAINER, OWNER = 30, 40, 50
PUBLIC = "https://bot.example"


@pytest.fixture
def database(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/bot.db"
    engine = db.make_engine(url)
    db.upgrade(engine)
    engine.dispose()
    return url


@pytest.fixture
def gitlab() -> Iterator[tuple[FakeGitLab, str]]:
    fake = FakeGitLab()
    with live_server(fake.app) as url:
        yield fake, url


@pytest.fixture
def github() -> Iterator[tuple[FakeGitHub, str]]:
    fake = FakeGitHub()
    fake.add_repo("octo/shop")
    with live_server(fake.app) as url:
        yield fake, url


def reviewbot(database: str, *args: str, **env: str) -> Result:
    variables = {"REVIEWBOT_DATABASE_URL": database, "COLUMNS": "200", **env}
    return CliRunner().invoke(cli, list(args), env=variables)


def rows(database: str) -> tuple[list[Project], list[Source]]:
    engine = db.make_engine(database)
    try:
        with Session(engine) as session:
            return list(session.exec(select(Project)).all()), list(session.exec(select(Source)).all())
    finally:
        engine.dispose()


def gitlab_project(fake: FakeGitLab, level: int, *, scopes: tuple[str, ...] = ("api",)) -> User:
    bot = fake.add_user("reviewbot", "bot-token", scopes=scopes)
    fake.add_member(fake.add_project("team/app"), bot, level)
    return bot


def add_gitlab(database: str, url: str, *extra: str, **env: str) -> Result:
    args = ["project", "add", "--forge", "gitlab", "--url", url, "--project", "team/app", *extra]
    return reviewbot(database, *args, GITLAB_TOKEN="bot-token", **env)


def test_a_token_without_the_api_scope_is_refused_and_nothing_saved(
    database: str, gitlab: tuple[FakeGitLab, str]
) -> None:
    fake, url = gitlab
    gitlab_project(fake, 20, scopes=("read_api",))
    refused = add_gitlab(database, url)
    assert refused.exit_code == 2
    assert "the token in $GITLAB_TOKEN cannot serve gitlab project team/app:" in refused.stderr
    assert "the token lacks the api scope (it has: read_api)" in refused.stderr
    assert "reviewbot is a reporter on project team/app; the bot needs at least developer" in refused.stderr
    assert "nothing was saved" in refused.stderr
    assert rows(database) == ([], [])


def test_create_webhook_needs_maintainer_and_a_reachable_url(
    database: str, gitlab: tuple[FakeGitLab, str]
) -> None:
    fake, url = gitlab
    gitlab_project(fake, DEVELOPER)
    local = add_gitlab(database, url, "--create-webhook")  # REVIEWBOT_PUBLIC_URL: the 127.0.0.1 default
    assert local.exit_code == 2
    assert "REVIEWBOT_PUBLIC_URL is http://127.0.0.1:8080/, which gitlab cannot reach" in local.stderr
    low = add_gitlab(database, url, "--create-webhook", REVIEWBOT_PUBLIC_URL=PUBLIC)
    assert low.exit_code == 2
    assert "the bot needs at least maintainer to manage its webhooks" in low.stderr
    assert rows(database) == ([], [])
    assert fake.projects[0].hooks == []
    plain = add_gitlab(database, url)  # Developer is enough without the hook
    assert plain.exit_code == 0, plain.stderr
    labels = ", ".join(f'"{e.label}"' for e in WEBHOOK_EVENTS[ForgeKind.GITLAB])
    assert f"events:         {labels}" in plain.stdout
    assert '"Merge request events", "Comments", "Emoji events"' in plain.stdout
    assert "a loopback address a forge elsewhere cannot reach" in plain.stderr  # printed, with a warning


def test_create_webhook_then_project_hook_updates_it(database: str, gitlab: tuple[FakeGitLab, str]) -> None:
    fake, url = gitlab
    gitlab_project(fake, MAINTAINER)
    added = add_gitlab(database, url, "--create-webhook", "--allow-local-url")
    assert added.exit_code == 0, added.stderr
    assert "webhook:        created on the forge" in added.stdout
    assert "webhook secret:" not in added.stdout  # set on the forge: nothing to copy by hand
    (project,), _ = rows(database)
    assert project.bot_username == "reviewbot"
    (hook,) = fake.projects[0].hooks
    assert hook["url"] == f"http://127.0.0.1:8080/webhooks/gitlab/{project.webhook_key}"
    secret = secret_box(load_settings(database_url=database)).open(project.webhook_secret)
    assert hook["token"] == secret
    assert all(hook[e.name] is True for e in WEBHOOK_EVENTS[ForgeKind.GITLAB])

    hook["note_events"], hook["token"] = False, "stale"  # changed on GitLab since
    again = reviewbot(database, "project", "hook", "team/app", "--allow-local-url", GITLAB_TOKEN="bot-token")
    assert again.exit_code == 0, again.stderr
    assert "webhook updated on gitlab project team/app" in again.stdout
    assert fake.projects[0].hooks == [hook]
    assert (hook["note_events"], hook["token"]) == (True, secret)


def test_no_token_is_refused_unless_checks_are_skipped(database: str, gitlab: tuple[FakeGitLab, str]) -> None:
    _, url = gitlab
    args = ["project", "add", "--forge", "gitlab", "--url", url, "--project", "team/app"]
    refused = reviewbot(database, *args)
    assert refused.exit_code == 2
    assert "set the environment variable GITLAB_TOKEN" in refused.stderr
    assert rows(database) == ([], [])
    skipped = reviewbot(database, *args, "--skip-checks", "--bot-username", "rb")
    assert skipped.exit_code == 0, skipped.stderr
    assert len(rows(database)[0]) == 1
    both = reviewbot(database, *args, "--skip-checks", "--create-webhook")
    assert both.exit_code == 2


def test_github_permissions_and_hook(database: str, github: tuple[FakeGitHub, str]) -> None:
    fake, url = github
    fake.add_user("shop-bot", "bot-token", scopes=["public_repo"])  # a classic token
    fake.add_collaborator("octo/shop", "shop-bot", "write")
    args = ["project", "add", "--forge", "github", "--url", url, "--project", "octo/shop", "--create-webhook"]
    refused = reviewbot(database, *args, GITHUB_TOKEN="bot-token", REVIEWBOT_PUBLIC_URL=PUBLIC)
    assert refused.exit_code == 2
    assert "shop-bot has write permission on repository octo/shop; managing its webhooks needs admin" in (
        refused.stderr
    )
    assert rows(database) == ([], [])

    fake.add_collaborator("octo/shop", "shop-bot", "admin")
    added = reviewbot(database, *args, GITHUB_TOKEN="bot-token", REVIEWBOT_PUBLIC_URL=PUBLIC)
    assert added.exit_code == 0, added.stderr
    (project,), _ = rows(database)
    (hook,) = fake.hooks.values()
    assert hook["config"]["url"] == f"{PUBLIC}/webhooks/github/{project.webhook_key}"
    assert hook["config"]["content_type"] == "json"
    assert sorted(hook["events"]) == sorted(e.name for e in WEBHOOK_EVENTS[ForgeKind.GITHUB])
    assert (
        '"Pull requests", "Pull request review comments", "Pull request review threads", "Issue comments"'
        in added.stdout
    )


def test_a_gitlab_group_becomes_a_source_with_a_group_hook(
    database: str, gitlab: tuple[FakeGitLab, str]
) -> None:
    fake, url = gitlab
    bot = fake.add_user("reviewbot", "bot-token")
    group = fake.add_group("team/backend")
    fake.add_member(group, bot, MAINTAINER)
    args = [
        "project",
        "add",
        "--forge",
        "gitlab",
        "--url",
        url,
        "--group",
        "team/backend",
        "--threshold",
        "major",
    ]
    low = reviewbot(database, *args, "--create-webhook", "--allow-local-url", GITLAB_TOKEN="bot-token")
    assert low.exit_code == 2
    assert "reviewbot is a maintainer on group team/backend; the bot needs at least owner" in low.stderr
    assert rows(database) == ([], [])

    fake.add_member(group, bot, OWNER)
    added = reviewbot(database, *args, "--create-webhook", "--allow-local-url", GITLAB_TOKEN="bot-token")
    assert added.exit_code == 0, added.stderr
    assert "added gitlab group team/backend (bot: reviewbot)" in added.stdout
    projects, (source,) = rows(database)
    assert projects == []
    assert (source.kind, source.name, source.severity_threshold) == (
        SourceKind.GITLAB_GROUP,
        "team/backend",
        "major",
    )
    (hook,) = group.hooks
    assert hook["url"] == f"http://127.0.0.1:8080/webhooks/gitlab/{source.webhook_key}"
    assert hook["token"] == secret_box(load_settings(database_url=database)).open(source.webhook_secret)
    listed = reviewbot(database, "project", "list")
    assert "group" in listed.stdout
    assert "team/backend" in listed.stdout
    again = reviewbot(database, *args, "--create-webhook", "--allow-local-url", GITLAB_TOKEN="bot-token")
    assert again.exit_code == 2
    assert "already registered" in again.stderr
    on_github = ["project", "add", "--forge", "github", "--url", url, "--group", "team"]
    assert "--group is for GitLab groups" in reviewbot(database, *on_github).stderr


def test_hostile_names_reach_the_terminal_without_control_characters(
    database: str, gitlab: tuple[FakeGitLab, str]
) -> None:
    fake, url = gitlab
    bot = fake.add_user("evil\x1b[2J\x1b]0;pwned\x07bot", "bot-token", scopes=("read_api",))
    hostile = "team/\x1b[31mapp\u202e"
    fake.add_member(fake.add_project(hostile), bot, MAINTAINER)
    args = ["project", "add", "--forge", "gitlab", "--url", url, "--project", hostile]
    refused = reviewbot(database, *args, GITLAB_TOKEN="bot-token")
    assert refused.exit_code == 2
    for output in (refused.stdout, refused.stderr):
        assert "\x1b" not in output
        assert "\u202e" not in output
        assert "\x07" not in output
    assert "the token lacks the api scope" in refused.stderr
    fake.users["bot-token"].scopes = ["api"]
    added = reviewbot(database, *args, GITLAB_TOKEN="bot-token")
    assert added.exit_code == 0, added.stderr
    assert "\x1b" not in added.stdout
    assert "(bot: evil[2J]0;pwnedbot)" in added.stdout
