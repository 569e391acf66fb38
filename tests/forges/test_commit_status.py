"""The ``reviewbot`` commit status (the merge gate) and the link it carries, on both forge adapters
against their fakes over real HTTP (``Forge.set_commit_status``, ``Forge.comment_url``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bot.forges.base import (
    MAX_STATUS_DESCRIPTION,
    STATUS_NAME,
    SUMMARY_MARKER,
    CommitState,
    Forge,
    ForgeError,
)
from bot.forges.github import GitHubForge
from bot.forges.gitlab import GitLabForge
from tests.support.fake_github import FakeGitHub, SeedFile
from tests.support.fake_gitlab import FakeGitLab, change
from tests.support.live_server import live_server

LINK = "https://reviewbot.example/reviews/12"
SUMMARY = f"reviewbot: 2 findings\n\n{SUMMARY_MARKER}"
GITLAB_STATES = {CommitState.PENDING: "pending", CommitState.SUCCESS: "success",
                 CommitState.FAILED: "failed", CommitState.ERROR: "failed"}  # fmt: skip
GITHUB_STATES = {CommitState.PENDING: "pending", CommitState.SUCCESS: "success",
                 CommitState.FAILED: "failure", CommitState.ERROR: "error"}  # fmt: skip


@dataclass
class Site:
    """One forge's adapter and the fake behind it, for the checks both forges share."""

    kind: str  # "gitlab" or "github"
    forge: Forge
    number: int
    head: str
    states: dict[CommitState, str]  # what the forge calls each state
    name_key: str  # GitLab's "name", GitHub's "context"
    statuses: Callable[[], list[dict[str, Any]]]  # set on the head, oldest first
    posts: Callable[[], int]  # status requests so far
    fail_statuses: Callable[..., None]  # (status, times=, message=): the next status requests answer it
    summary_url: Callable[[str], str]  # the summary's web address, from its id


def gitlab_site() -> Iterator[Site]:
    fake = FakeGitLab()
    fake.add_user("reviewbot", "bot-token")
    alice = fake.add_user("alice", "alice-token")
    project = fake.add_project("group/app")
    mr = fake.add_merge_request(project, [change("app.py", "a\n", "b\n")], author=alice)
    with live_server(fake.app) as url:
        yield Site(
            kind="gitlab",
            forge=GitLabForge(url, "bot-token", "group/app", timeout_s=5),
            number=mr.iid,
            head=mr.sha,
            states=GITLAB_STATES,
            name_key="name",
            statuses=lambda: fake.statuses_of("group/app", mr.sha),
            posts=lambda: sum(
                1 for method, path in fake.requests if method == "POST" and "/statuses/" in path
            ),
            fail_statuses=lambda status, times=1, message=None: fake.fail(
                "POST", "/statuses/", status, times=times, message=message
            ),
            summary_url=lambda note: f"{url}/group/app/-/merge_requests/{mr.iid}#note_{note}",
        )


def github_site() -> Iterator[Site]:
    fake = FakeGitHub()
    fake.add_user("reviewbot", token="bot-token")
    pr = fake.add_pull("acme/app", 7, [SeedFile("app.py", old="a\n", new="b\n")])
    path = f"/repos/acme/app/statuses/{pr.head_sha}"
    with live_server(fake.app) as url:
        yield Site(
            kind="github",
            forge=GitHubForge(url, "acme/app", token="bot-token", seconds_between_writes=0),
            number=7,
            head=pr.head_sha,
            states=GITHUB_STATES,
            name_key="context",
            statuses=lambda: fake.statuses_of("acme/app", pr.head_sha),
            posts=lambda: fake.count("POST", path),
            fail_statuses=lambda status, times=1, message=None: fake.fail(
                path, status, times=times, method="POST", message=message
            ),
            summary_url=lambda comment: f"{url}/acme/app/pull/7#{comment}",
        )


@pytest.fixture(params=["gitlab", "github"])
def site(request: pytest.FixtureRequest) -> Iterator[Site]:
    yield from (gitlab_site() if request.param == "gitlab" else github_site())


@pytest.fixture
def gitlab() -> Iterator[Site]:
    yield from gitlab_site()


@pytest.mark.parametrize("state", list(CommitState))
def test_each_state_reaches_the_forge_under_its_name(site: Site, state: CommitState) -> None:
    site.forge.set_commit_status(site.head, state, "1 finding at major or above", LINK)

    assert site.statuses() == [
        {
            "state": site.states[state],
            site.name_key: STATUS_NAME,
            "description": "1 finding at major or above",
            "target_url": LINK,
        }
    ]


def test_github_receives_exactly_the_status_fields() -> None:
    fake = FakeGitHub()
    fake.add_user("reviewbot", token="bot-token")
    pr = fake.add_pull("acme/app", 7, [SeedFile("app.py", old="a\n", new="b\n")])
    with live_server(fake.app) as url:
        forge = GitHubForge(url, "acme/app", token="bot-token", seconds_between_writes=0)
        forge.set_commit_status(pr.head_sha, CommitState.FAILED, "2 findings", LINK)
        forge.set_commit_status(pr.head_sha, CommitState.PENDING, "reviewing", None)

    bodies = [r.body for r in fake.requests if r.path == f"/repos/acme/app/statuses/{pr.head_sha}"]
    assert bodies == [
        {"state": "failure", "context": "reviewbot", "description": "2 findings", "target_url": LINK},
        {"state": "pending", "context": "reviewbot", "description": "reviewing"},  # no link: none sent
    ]


def test_setting_the_state_a_status_has_is_no_error(site: Site) -> None:
    sequence = [CommitState.PENDING, CommitState.PENDING, CommitState.SUCCESS, CommitState.SUCCESS,
                CommitState.FAILED, CommitState.ERROR]  # fmt: skip
    for state in sequence:
        site.forge.set_commit_status(site.head, state, f"now {state}", LINK)

    assert site.posts() == len(sequence)
    recorded = [status["state"] for status in site.statuses()]
    if site.kind == "gitlab":  # GitLab refused each repeat (400 Cannot transition): already so
        assert recorded == ["pending", "success", "failed"]
    else:  # GitHub keeps every status
        assert recorded == ["pending", "pending", "success", "success", "failure", "error"]


def test_gitlab_refusing_another_transition_is_an_error(gitlab: Site) -> None:
    gitlab.fail_statuses(400, message="Cannot transition status via :enqueue from :running")
    with pytest.raises(ForgeError, match="from :running") as raised:
        gitlab.forge.set_commit_status(gitlab.head, CommitState.PENDING, "reviewing", None)
    assert not raised.value.retryable

    gitlab.fail_statuses(400, message="Cannot transition status via :drop from :failed (Reason(s): x)")
    gitlab.forge.set_commit_status(gitlab.head, CommitState.ERROR, "the review failed", None)  # already so

    gitlab.fail_statuses(400, message="400 Bad request - target_url is invalid")
    with pytest.raises(ForgeError, match="target_url is invalid"):
        gitlab.forge.set_commit_status(gitlab.head, CommitState.SUCCESS, "done", LINK)
    assert gitlab.statuses() == []


def test_the_description_goes_on_one_line_cut_to_the_limit(site: Site) -> None:
    exact = "x" * MAX_STATUS_DESCRIPTION
    long = "3 findings:\n\tcritical\x1b[31m, " + "major " * 40

    site.forge.set_commit_status(site.head, CommitState.PENDING, exact, None)
    site.forge.set_commit_status(site.head, CommitState.FAILED, long, None)

    kept, cut = (status["description"] for status in site.statuses())
    assert kept == exact
    assert len(cut) == MAX_STATUS_DESCRIPTION
    assert cut == ("3 findings: critical[31m, " + "major " * 40)[: MAX_STATUS_DESCRIPTION - 1] + "…"


@pytest.mark.parametrize("sha", ["main", "A" * 40, "abc", "--output=x", "../" + "a" * 40, "a" * 65])
def test_a_sha_that_is_not_a_commit_id_is_refused_without_a_request(site: Site, sha: str) -> None:
    with pytest.raises(ForgeError, match="not a commit id") as raised:
        site.forge.set_commit_status(sha, CommitState.PENDING, "reviewing", None)

    assert not raised.value.retryable
    assert site.posts() == 0


@pytest.mark.parametrize(
    "link",
    ["javascript:alert(1)", "ftp://reviewbot.example/x", "https://", "/reviews/12", "https://a b.example/",
     "https://reviewbot.example/\nx", "http://[oops/"],
)  # fmt: skip
def test_a_link_that_is_not_a_web_address_is_refused_without_a_request(site: Site, link: str) -> None:
    with pytest.raises(ForgeError, match="not an http") as raised:
        site.forge.set_commit_status(site.head, CommitState.SUCCESS, "done", link)

    assert not raised.value.retryable
    assert "\n" not in str(raised.value)
    assert site.posts() == 0


def test_a_forge_failing_is_retryable(site: Site) -> None:
    site.fail_statuses(502, times=3)  # python-gitlab retries twice; PyGithub repeats no POST

    with pytest.raises(ForgeError, match="set the reviewbot status of commit") as raised:
        site.forge.set_commit_status(site.head, CommitState.PENDING, "reviewing", None)

    assert raised.value.retryable
    assert site.statuses() == []


def test_a_refusal_is_not_retryable(site: Site) -> None:
    site.fail_statuses(403, message="Resource not accessible by integration")

    with pytest.raises(ForgeError, match="403") as raised:
        site.forge.set_commit_status(site.head, CommitState.PENDING, "reviewing", None)

    assert not raised.value.retryable
    if site.kind == "github":
        assert "Commit statuses: write" in str(raised.value)


def test_a_commit_the_forge_does_not_know_is_not_retryable(site: Site) -> None:
    with pytest.raises(ForgeError) as raised:
        site.forge.set_commit_status("f" * 40, CommitState.PENDING, "reviewing", None)

    assert not raised.value.retryable


def test_the_summary_link_is_its_web_address(site: Site) -> None:
    summary = site.forge.upsert_summary(site.number, SUMMARY, None)

    link = site.forge.comment_url(site.number, summary)

    assert link == site.summary_url(summary)
    site.forge.set_commit_status(site.head, CommitState.SUCCESS, "no finding at major or above", link)
    assert site.statuses()[-1]["target_url"] == link


def test_gitlab_reads_the_project_address_once_even_by_id() -> None:
    fake = FakeGitLab()
    fake.add_user("reviewbot", "bot-token")
    project = fake.add_project("group/app")
    with live_server(fake.app) as url:
        forge = GitLabForge(url, "bot-token", str(project.id), timeout_s=5)
        first = forge.comment_url(3, "41")
        reads = len(fake.requests)
        second = forge.comment_url(4, "42")

    assert first == f"{url}/group/app/-/merge_requests/3#note_41"  # by its path, as people see it
    assert second == f"{url}/group/app/-/merge_requests/4#note_42"
    assert len(fake.requests) == reads


def test_github_links_match_what_github_shows() -> None:
    fake = FakeGitHub()
    fake.add_user("reviewbot", token="bot-token")
    fake.add_pull("acme/app", 7, [SeedFile("app.py", old="a\n", new="b\n")])
    with live_server(fake.app) as url:
        forge = GitHubForge(url, "acme/app", token="bot-token", seconds_between_writes=0)
        summary = forge.upsert_summary(7, SUMMARY, None)
        reads = len(fake.requests)
        link = forge.comment_url(7, summary)
        assert len(fake.requests) == reads  # built, not read
        comment = httpx.get(
            f"{url}/repos/acme/app/issues/comments/{summary.removeprefix('issuecomment-')}",
            headers={"Authorization": "token bot-token"},
            timeout=5,
        ).json()

    assert link == comment["html_url"]
    assert forge.comment_url(7, "1234") == f"{url}/acme/app/pull/7#discussion_r1234"  # a review comment


@pytest.mark.parametrize(
    ("api_url", "web"),
    [
        ("https://api.github.com", "https://github.com"),
        ("https://github.acme.corp/api/v3/", "https://github.acme.corp"),  # Enterprise Server
        ("https://api.acme.ghe.com", "https://acme.ghe.com"),  # Enterprise Cloud with data residency
    ],
)
def test_github_web_addresses_follow_the_api_address(api_url: str, web: str) -> None:
    fake = FakeGitHub()
    fake.add_user("reviewbot", token="bot-token")
    with live_server(fake.app) as url:
        forge = GitHubForge(url, "acme/app", token="bot-token")
    forge.api_url = api_url  # where it would be; comment_url makes no request

    assert forge.comment_url(7, "issuecomment-99") == f"{web}/acme/app/pull/7#issuecomment-99"


def test_a_github_app_installation_sets_statuses() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    fake = FakeGitHub()
    fake.add_app(42, "reviewbot-app", installation_id=99)
    pr = fake.add_pull("acme/app", 7, [SeedFile("app.py", old="a\n", new="b\n")])
    with live_server(fake.app) as url:
        forge = GitHubForge(
            url, "acme/app", app_id=42, private_key=pem, installation_id=99, seconds_between_writes=0
        )
        forge.set_commit_status(pr.head_sha, CommitState.SUCCESS, "no finding", None)

    assert fake.statuses_of("acme/app", pr.head_sha) == [
        {"state": "success", "context": "reviewbot", "description": "no finding", "target_url": None}
    ]
