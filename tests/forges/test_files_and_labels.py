"""Both forge adapters against their fakes over real HTTP: a repository file at a commit
(``Forge.file_at``) and labels on a merge request (``Forge.add_labels``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from bot.forges.base import MAX_FILE_BYTES, Forge, ForgeError
from bot.forges.github import GitHubForge
from bot.forges.gitlab import GitLabForge
from tests.support.fake_github import FakeGitHub, SeedFile
from tests.support.fake_gitlab import FakeGitLab, change
from tests.support.live_server import live_server

CONFIG = ".gitlab/reviewbot.toml"
OTHER_SHA = "c" * 40


@dataclass
class Site:
    """One forge's adapter and the fake behind it, for the checks both forges share."""

    forge: Forge
    put_file: Callable[[str, str, str | bytes], None]  # (commit, path, content)
    labels: Callable[[], list[str]]  # of the merge request
    number: int
    base_sha: str
    requests: Callable[[], list[str]]  # the paths requested so far
    fail_reads: Callable[[str], None]  # the next reads of this file answer 502, retries included


def gitlab_site() -> Iterator[Site]:
    fake = FakeGitLab()
    fake.add_user("reviewbot", "bot-token")
    alice = fake.add_user("alice", "alice-token")
    project = fake.add_project("group/app")
    mr = fake.add_merge_request(project, [change("app.py", "a\n", "b\n")], author=alice)
    with live_server(fake.app) as url:
        yield Site(
            forge=GitLabForge(url, "bot-token", "group/app", timeout_s=5),
            put_file=lambda sha, path, text: fake.put_file("group/app", sha, path, text),
            labels=lambda: fake.labels_of("group/app", mr.iid),
            number=mr.iid,
            base_sha=mr.latest.base_sha,
            requests=lambda: [path for _, path in fake.requests],
            fail_reads=lambda _path: fake.fail("GET", "/repository/files/", 502, times=5),
        )


def github_site() -> Iterator[Site]:
    fake = FakeGitHub()
    fake.add_user("reviewbot", token="bot-token")
    pr = fake.add_pull("acme/app", 7, [SeedFile("app.py", old="a\n", new="b\n")])
    with live_server(fake.app) as url:
        yield Site(
            forge=GitHubForge(url, "acme/app", token="bot-token", seconds_between_writes=0),
            put_file=lambda sha, path, text: fake.put_file("acme/app", sha, path, text),
            labels=lambda: fake.labels_of("acme/app", 7),
            number=7,
            base_sha=pr.base_sha,
            requests=lambda: [r.path for r in fake.requests],
            fail_reads=lambda path: fake.fail(f"/repos/acme/app/contents/{path}", 502, times=5),
        )


@pytest.fixture(params=["gitlab", "github"])
def site(request: pytest.FixtureRequest) -> Iterator[Site]:
    yield from (gitlab_site() if request.param == "gitlab" else github_site())


def test_a_file_is_read_at_the_commit_asked_for(site: Site) -> None:
    site.put_file(site.base_sha, CONFIG, 'threshold = "major"\n# déjà vu\n')
    site.put_file(OTHER_SHA, CONFIG, 'threshold = "minor"\n')

    assert site.forge.file_at(CONFIG, site.base_sha) == 'threshold = "major"\n# déjà vu\n'
    assert site.forge.file_at(CONFIG, OTHER_SHA) == 'threshold = "minor"\n'


def test_an_absent_file_a_folder_or_binary_content_is_none(site: Site) -> None:
    site.put_file(site.base_sha, ".github/workflows/ci.yml", "on: push\n")
    site.put_file(site.base_sha, "logo.png", b"\x89PNG\r\n\x1a\n\x00\x00")

    assert site.forge.file_at(".reviewbot.toml", site.base_sha) is None
    assert site.forge.file_at(CONFIG, OTHER_SHA) is None  # nothing at that commit
    assert site.forge.file_at("logo.png", site.base_sha) is None
    # GitLab's raw files API has no folders (404); GitHub's contents API lists one
    assert site.forge.file_at(".github/workflows", site.base_sha) is None


def test_a_file_past_the_cap_is_a_permanent_error(site: Site) -> None:
    site.put_file(site.base_sha, CONFIG, "#" * MAX_FILE_BYTES)
    site.put_file(OTHER_SHA, CONFIG, "#" * (MAX_FILE_BYTES + 1))

    assert site.forge.file_at(CONFIG, site.base_sha) == "#" * MAX_FILE_BYTES
    with pytest.raises(ForgeError, match=r"reviewbot\.toml at cccccccccccc is too large") as raised:
        site.forge.file_at(CONFIG, OTHER_SHA)
    assert not raised.value.retryable


@pytest.mark.parametrize(
    "path",
    ["../x", "a/../../x", "%2e%2e/x", "a/%2E%2E/x", "%252e%252e/x", "/etc/passwd", "./x", "a//b", "",
     "a\\..\\b", "a\nb"],
)  # fmt: skip
def test_a_hostile_path_is_refused_before_any_request(site: Site, path: str) -> None:
    before = len(site.requests())

    with pytest.raises(ForgeError, match="repository path") as raised:
        site.forge.file_at(path, site.base_sha)

    assert not raised.value.retryable
    assert "\n" not in str(raised.value)
    assert len(site.requests()) == before


@pytest.mark.parametrize("sha", ["main", "--output=x", "A" * 40, "abc"])
def test_a_ref_that_is_not_a_commit_id_is_refused(site: Site, sha: str) -> None:
    with pytest.raises(ForgeError, match="not a commit id"):
        site.forge.file_at(CONFIG, sha)


def test_a_forge_failing_is_a_retryable_error_naming_the_file(site: Site) -> None:
    site.put_file(site.base_sha, CONFIG, "x = 1\n")
    site.fail_reads(CONFIG)

    with pytest.raises(ForgeError, match=r"read \.gitlab/reviewbot\.toml at") as raised:
        site.forge.file_at(CONFIG, site.base_sha)
    assert raised.value.retryable


def test_labels_are_added_once_and_kept(site: Site) -> None:
    site.forge.add_labels(site.number, ["reviewbot:critical", "reviewbot:major", "reviewbot:critical"])
    site.forge.add_labels(site.number, ["reviewbot:major"])
    site.forge.add_labels(site.number, ["needs review", "reviewbot:critical"])
    writes = len(site.requests())
    site.forge.add_labels(site.number, [])

    assert site.labels() == ["reviewbot:critical", "reviewbot:major", "needs review"]
    assert len(site.requests()) == writes  # nothing to add: no request


@pytest.mark.parametrize("label", ["a,b", "", "x" * 51, "bad\nlabel"])
def test_a_label_a_forge_would_split_or_refuse_is_refused(site: Site, label: str) -> None:
    with pytest.raises(ForgeError, match="label") as raised:
        site.forge.add_labels(site.number, ["ok", label])

    assert not raised.value.retryable
    assert site.labels() == []
