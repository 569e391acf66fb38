"""Connecting a forge, through the adapters against the fake forges over real HTTP: what a token lacks
(scopes, role, permission), webhooks created then updated (never duplicated) with every event the bot
uses, and what is wrong with a webhook that is missing, incomplete, disabled or failing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bot.forges.base import CREATED, UPDATED, WEBHOOK_EVENTS, ForgeError
from bot.forges.github import GitHubForge
from bot.forges.gitlab import GitLabForge, GitLabGroup
from bot.models import ForgeKind
from tests.support.fake_github import FakeGitHub
from tests.support.fake_gitlab import FakeGitLab, Project, User
from tests.support.live_server import live_server

HOOK = "https://bot.example/webhooks/gitlab/k3y"
GITLAB_FLAGS = [event.name for event in WEBHOOK_EVENTS[ForgeKind.GITLAB]]
GITHUB_EVENTS = [event.name for event in WEBHOOK_EVENTS[ForgeKind.GITHUB]]
DEVELOPER, MAINTAINER, OWNER = 30, 40, 50
REPO = "octo/shop"


# --- GitLab


@pytest.fixture
def gitlab() -> Iterator[tuple[FakeGitLab, str]]:
    fake = FakeGitLab()
    with live_server(fake.app) as url:
        yield fake, url


def gitlab_bot(
    fake: FakeGitLab, level: int | None, *, scopes: tuple[str, ...] = ("api",), name: str = "reviewbot"
) -> tuple[User, Project]:
    bot = fake.add_user(name, f"{name}-token", scopes=scopes)
    project = fake.add_project("team/app")
    if level is not None:
        fake.add_member(project, bot, level)
    return bot, project


def test_gitlab_token_with_api_scope_and_developer_role_is_enough_to_review(
    gitlab: tuple[FakeGitLab, str],
) -> None:
    fake, url = gitlab
    gitlab_bot(fake, DEVELOPER)
    forge = GitLabForge(url, "reviewbot-token", "team/app")
    assert forge.access_problems(manage_hooks=False) == []
    assert forge.access_problems(manage_hooks=True) == [
        "reviewbot is a developer on project team/app;"
        " the bot needs at least maintainer to manage its webhooks"
    ]


def test_gitlab_token_lacking_scope_and_role_says_both(gitlab: tuple[FakeGitLab, str]) -> None:
    fake, url = gitlab
    gitlab_bot(fake, 20, scopes=("read_api", "read_user"))
    problems = GitLabForge(url, "reviewbot-token", "team/app").access_problems(manage_hooks=False)
    assert problems == [
        "the token lacks the api scope (it has: read_api, read_user)",
        "reviewbot is a reporter on project team/app; the bot needs at least developer to review",
    ]


def test_gitlab_inherited_membership_counts_and_a_stranger_is_no_member(
    gitlab: tuple[FakeGitLab, str],
) -> None:
    fake, url = gitlab
    bot, project = gitlab_bot(fake, None)
    forge = GitLabForge(url, "reviewbot-token", "team/app")
    assert forge.access_problems(manage_hooks=False) == [
        "reviewbot is not a member on project team/app; the bot needs at least developer to review"
    ]
    fake.add_member(project, bot, MAINTAINER, inherited=True)
    assert forge.access_problems(manage_hooks=True) == []


def test_gitlab_unknown_project_and_bad_token(gitlab: tuple[FakeGitLab, str]) -> None:
    fake, url = gitlab
    gitlab_bot(fake, DEVELOPER)
    missing = GitLabForge(url, "reviewbot-token", "team/nope").access_problems(manage_hooks=False)
    assert missing == ["project team/nope was not found, or reviewbot cannot see it"]
    with pytest.raises(ForgeError, match=r"401.*invalid, expired or revoked"):
        GitLabForge(url, "wrong-token", "team/app")


def test_gitlab_project_hook_created_then_updated_with_every_event(gitlab: tuple[FakeGitLab, str]) -> None:
    fake, url = gitlab
    _, project = gitlab_bot(fake, MAINTAINER)
    forge = GitLabForge(url, "reviewbot-token", "team/app")
    assert forge.webhook_problems(HOOK) == [f"project team/app has no webhook to {HOOK}"]

    assert forge.ensure_webhook(HOOK, "s1") == CREATED
    (hook,) = project.hooks
    assert hook["token"] == "s1"
    assert all(hook[flag] is True for flag in GITLAB_FLAGS)
    assert hook["push_events"] is False  # the bot does not need them: no deliveries to ignore
    assert hook["enable_ssl_verification"] is True
    assert forge.webhook_problems(HOOK) == []

    hook["note_events"] = hook["emoji_events"] = False  # someone unticked them on GitLab
    hook["alert_status"] = "disabled"
    assert forge.webhook_problems(HOOK) == [
        "the webhook does not send Comments, Emoji events",
        "GitLab has disabled the webhook after failed deliveries",
    ]
    assert forge.ensure_webhook(HOOK, "s2") == UPDATED
    assert len(project.hooks) == 1
    assert (hook["token"], hook["note_events"], hook["emoji_events"]) == ("s2", True, True)


def test_gitlab_hooks_need_maintainer(gitlab: tuple[FakeGitLab, str]) -> None:
    fake, url = gitlab
    _, project = gitlab_bot(fake, DEVELOPER)
    forge = GitLabForge(url, "reviewbot-token", "team/app")
    with pytest.raises(ForgeError, match="403"):
        forge.ensure_webhook(HOOK, "s1")
    assert project.hooks == []
    assert forge.webhook_problems(HOOK) == [
        "cannot read the webhooks of project team/app: reviewbot needs maintainer to see them"
    ]


def test_gitlab_group_checks_and_group_hook(gitlab: tuple[FakeGitLab, str]) -> None:
    fake, url = gitlab
    bot = fake.add_user("reviewbot", "reviewbot-token")
    group = fake.add_group("team/backend")
    assert GitLabGroup(url, "reviewbot-token", "team/backend").access_problems(manage_hooks=False) == [
        "group team/backend was not found, or reviewbot cannot see it"
    ]
    fake.add_member(group, bot, MAINTAINER)
    forge = GitLabGroup(url, "reviewbot-token", "team/backend")
    assert forge.access_problems(manage_hooks=False) == []
    assert forge.access_problems(manage_hooks=True) == [
        "reviewbot is a maintainer on group team/backend; the bot needs at least owner to manage its webhooks"
    ]
    with pytest.raises(ForgeError, match="403"):
        forge.ensure_webhook(HOOK, "s1")

    fake.add_member(group, bot, OWNER)
    assert forge.access_problems(manage_hooks=True) == []
    assert forge.ensure_webhook(HOOK, "s1") == CREATED
    assert forge.ensure_webhook(HOOK, "s1") == UPDATED
    (hook,) = group.hooks
    assert hook["group_id"] == group.id
    assert all(hook[flag] is True for flag in GITLAB_FLAGS)
    assert forge.webhook_problems(HOOK) == []


# --- GitHub


@pytest.fixture
def github() -> Iterator[tuple[FakeGitHub, str]]:
    fake = FakeGitHub()
    fake.add_repo(REPO)
    with live_server(fake.app) as url:
        yield fake, url


def github_bot(url: str) -> GitHubForge:
    return GitHubForge(url, REPO, token="bot-token", seconds_between_writes=0)


@pytest.mark.parametrize(
    ("role", "manage_hooks", "problem"),
    [
        ("write", False, None),
        ("admin", True, None),
        ("read", False, "shop-bot has read permission on repository octo/shop; the bot needs write"),
        ("triage", False, "shop-bot has triage permission on repository octo/shop; the bot needs write"),
        ("maintain", True, "shop-bot has maintain permission on repository octo/shop; managing its webhooks"),
    ],
)
def test_github_fine_grained_token_is_judged_by_the_repository_permission(
    github: tuple[FakeGitHub, str], role: str, manage_hooks: bool, problem: str | None
) -> None:
    fake, url = github
    fake.add_user("shop-bot", "bot-token")  # fine-grained: no X-OAuth-Scopes
    fake.add_collaborator(REPO, "shop-bot", role)
    problems = github_bot(url).access_problems(manage_hooks=manage_hooks)
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1
        assert problems[0].startswith(problem)


@pytest.mark.parametrize(
    ("scopes", "private", "problem"),
    [
        (["repo"], True, None),
        (["public_repo"], False, None),
        (["public_repo", "gist"], True, "the token lacks the repo scope (it has: gist, public_repo)"),
        ([], False, "the token lacks the repo (or public_repo) scope (it has: none)"),
    ],
)
def test_github_classic_token_needs_repo_scope(
    github: tuple[FakeGitHub, str], scopes: list[str], private: bool, problem: str | None
) -> None:
    fake, url = github
    fake.add_repo(REPO, private=private)
    fake.add_user("shop-bot", "bot-token", scopes=scopes)
    fake.add_collaborator(REPO, "shop-bot", "write")
    assert github_bot(url).access_problems(manage_hooks=False) == ([problem] if problem else [])


def test_github_private_repository_of_a_stranger_and_bad_token(github: tuple[FakeGitHub, str]) -> None:
    fake, url = github
    fake.add_repo(REPO, private=True)
    fake.add_user("shop-bot", "bot-token")
    assert github_bot(url).access_problems(manage_hooks=False) == [
        "repository octo/shop was not found, or shop-bot cannot see it"
    ]
    with pytest.raises(ForgeError, match=r"401.*invalid, expired or revoked"):
        GitHubForge(url, REPO, token="wrong")


def test_github_hook_created_then_updated_with_every_event(github: tuple[FakeGitHub, str]) -> None:
    fake, url = github
    fake.add_user("shop-bot", "bot-token")
    fake.add_collaborator(REPO, "shop-bot", "admin")
    forge = github_bot(url)
    hook_url = "https://bot.example/webhooks/github/k3y"
    assert forge.webhook_problems(hook_url) == [f"repository octo/shop has no webhook to {hook_url}"]

    assert forge.ensure_webhook(hook_url, "s1") == CREATED
    (hook,) = fake.hooks.values()
    assert sorted(hook["events"]) == sorted(GITHUB_EVENTS)
    assert hook["config"] == {"url": hook_url, "content_type": "json", "secret": "s1", "insecure_ssl": "0"}
    assert forge.webhook_problems(hook_url) == []

    hook.update(active=False, events=["pull_request"])
    hook["config"]["content_type"] = "form"
    hook["last_response"] = {"code": 502, "status": "failed", "message": "Bad Gateway"}
    assert forge.webhook_problems(hook_url) == [
        "the webhook does not send Pull request review comments, Pull request review threads, Issue comments",
        "the webhook is inactive",
        "the webhook's content type is not application/json",
        "its last delivery got HTTP 502 (Bad Gateway)",
    ]
    assert forge.ensure_webhook(hook_url, "s2") == UPDATED
    assert list(fake.hooks.values()) == [hook]
    assert (hook["active"], hook["config"]["secret"], hook["config"]["content_type"]) == (True, "s2", "json")
    assert sorted(hook["events"]) == sorted(GITHUB_EVENTS)


def test_github_hooks_need_admin(github: tuple[FakeGitHub, str]) -> None:
    fake, url = github
    fake.add_user("shop-bot", "bot-token")
    fake.add_collaborator(REPO, "shop-bot", "write")
    forge = github_bot(url)
    with pytest.raises(ForgeError, match="403 Must have admin rights"):
        forge.ensure_webhook("https://bot.example/webhooks/github/k", "s1")
    assert fake.hooks == {}
    assert forge.webhook_problems("https://bot.example/webhooks/github/k") == [
        "cannot read the webhooks of repository octo/shop: shop-bot needs admin to see them"
    ]
