"""GitHubForge (PyGithub, real HTTP) against the fake GitHub of tests/support/fake_github.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bot.diff import FileStatus, LineKind, parse_diff
from bot.events import Role
from bot.forges import github as github_forge
from bot.forges.base import SUMMARY_MARKER, BotComment, ForgeError, InlineComment, Placement, finding_marker
from bot.forges.github import GitHubForge
from bot.models import Side
from tests.support.fake_github import FakeGitHub, SeedFile
from tests.support.live_server import live_server
from tests.support.vllm_server import free_port

REPO = "acme/widgets"
BOT = "reviewbot"
PULL = f"/repos/{REPO}/pulls/7"

APP_OLD = "def total(items):\n    s = 0\n    for i in items:\n        s += i\n    return s\n"
APP_NEW = "def total(items):\n    return sum(items)\n"
SEED = [
    SeedFile("src/app.py", old=APP_OLD, new=APP_NEW),
    SeedFile("src/new.py", new="print('hello')\nprint('world')\n"),
    SeedFile("old.py", old="x = 1\n"),
    SeedFile(
        "docs/guide.md", old="# Guide\nold text\n", new="# Guide\nnew text\n", previous_path="docs/a.md"
    ),
    SeedFile("logo.png", old="", new="", binary=True),
    SeedFile("data.sql", old="", new="insert 1;\n", too_large=True),
]


@pytest.fixture
def fake() -> FakeGitHub:
    fake = FakeGitHub()
    fake.add_user(BOT, token="bot-token")
    fake.add_user("alice", token="alice-token")
    fake.add_pull(REPO, 7, SEED, title="Simplify total", draft=True)
    return fake


@pytest.fixture
def url(fake: FakeGitHub) -> Iterator[str]:
    with live_server(fake.app) as base_url:
        yield base_url


@pytest.fixture
def forge(url: str) -> GitHubForge:
    return GitHubForge(url, REPO, token="bot-token", seconds_between_writes=0)


def finding(fingerprint: str, path: str, line: int | None, side: Side = Side.NEW) -> InlineComment:
    body = f"**minor** something about {path}\n\n{finding_marker(fingerprint)}"
    return InlineComment(fingerprint, path, line, side, body)


def test_token_auth_names_the_bot_by_its_login(forge: GitHubForge) -> None:
    assert forge.bot_username == BOT


def test_app_installation_auth(fake: FakeGitHub, url: str) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    login = fake.add_app(42, "reviewbot-app", installation_id=99)

    forge = GitHubForge(url, REPO, app_id=42, private_key=pem, installation_id=99, seconds_between_writes=0)
    assert forge.bot_username == login == "reviewbot-app[bot]"
    assert forge.merge_request(7).title == "Simplify total"  # with the installation token
    assert forge.upsert_summary(7, f"summary\n{SUMMARY_MARKER}", None).startswith("issuecomment-")
    assert [c.user for c in fake.issue_comments.values()] == [login]
    assert fake.count("POST", "/app/installations/99/access_tokens") == 1


def test_unknown_token_is_a_permanent_error(url: str) -> None:
    with pytest.raises(ForgeError) as error:
        GitHubForge(url, REPO, token="nope")
    assert not error.value.retryable
    assert "401" in str(error.value)
    assert "Bad credentials" in str(error.value)


def test_merge_request_metadata(forge: GitHubForge, fake: FakeGitHub) -> None:
    mr = forge.merge_request(7)
    assert (mr.number, mr.title, mr.state, mr.draft, mr.author) == (
        7,
        "Simplify total",
        "open",
        True,
        "alice",
    )
    assert (mr.head_sha, mr.base_sha, mr.start_sha) == ("b" * 40, "a" * 40, None)
    fake.add_pull(REPO, 8, SEED, state="closed", merged=True)
    assert forge.merge_request(8).state == "merged"


def test_diff_reads_every_page_and_parses(forge: GitHubForge, fake: FakeGitHub) -> None:
    many = [SeedFile(f"pkg/m{i:03}.py", old=f"v = {i}\n", new=f"v = {i + 1}\n") for i in range(230)]
    fake.add_pull(REPO, 9, [*SEED, *many])

    text = forge.diff(forge.merge_request(9))
    diff = parse_diff(text)

    assert fake.count("GET", f"/repos/{REPO}/pulls/9/files") == 3  # 236 files, 100 a page
    files = {f.path: f for f in diff.files}
    assert len(files) == 3 + 230
    app = files["src/app.py"]
    assert app.status is FileStatus.MODIFIED
    removed = [line.text for h in app.hunks for line in h.lines if line.kind is LineKind.REMOVED]
    added = [line.text for h in app.hunks for line in h.lines if line.kind is LineKind.ADDED]
    assert removed == ["    s = 0", "    for i in items:", "        s += i", "    return s"]
    assert added == ["    return sum(items)"]
    assert files["src/new.py"].status is FileStatus.ADDED
    assert (files["docs/guide.md"].status, files["docs/guide.md"].old_path) == (
        FileStatus.RENAMED,
        "docs/a.md",
    )
    skipped = {s.path: s.reason for s in diff.skipped}
    assert skipped == {
        "old.py": "file deleted",
        "logo.png": "binary file",
        "data.sql": "GitHub shows no diff for it (too large)",
    }


def test_diff_says_when_github_lists_only_part_of_the_files(
    forge: GitHubForge, fake: FakeGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(github_forge, "MAX_FILES", 4)
    fake.max_files = 4

    text = forge.diff(forge.merge_request(7))

    diff = parse_diff(text)
    assert len(diff.files) + len(diff.skipped) == 4 + 1
    assert ("(2 more files)", "GitHub lists only 4 of the 6 changed files") in [
        (s.path, s.reason) for s in diff.skipped
    ]


def test_findings_go_out_in_one_review_on_both_sides(forge: GitHubForge, fake: FakeGitHub) -> None:
    mr = forge.merge_request(7)
    diff = parse_diff(forge.diff(mr))
    comments = [finding("aaaa0001", "src/app.py", 2), finding("aaaa0002", "src/app.py", 3, Side.OLD)]

    posted = forge.post_review(mr, diff, comments)

    assert fake.count("POST", f"{PULL}/reviews") == 1
    [request] = [r for r in fake.requests if r.method == "POST"]
    assert request.body["commit_id"] == mr.head_sha
    assert request.body["event"] == "COMMENT"
    assert all("position" not in c for c in request.body["comments"])
    stored = {c.id: c for c in fake.review_comments.values()}
    assert [(p.fingerprint, p.placement, p.note, p.thread_id) for p in posted] == [
        ("aaaa0001", Placement.INLINE, None, None),
        ("aaaa0002", Placement.INLINE, None, None),
    ]
    first, second = (stored[int(p.comment_id)] for p in posted)
    assert (first.line, first.side, first.body) == (2, "RIGHT", comments[0].body)
    assert (second.line, second.side, second.body) == (3, "LEFT", comments[1].body)


def test_an_off_diff_anchor_becomes_file_level_before_posting(forge: GitHubForge, fake: FakeGitHub) -> None:
    mr = forge.merge_request(7)
    diff = parse_diff(forge.diff(mr))
    comments = [
        finding("bbbb0001", "src/app.py", 40),  # not in any hunk
        finding("bbbb0002", "src/new.py", 1),
        finding("bbbb0003", "old.py", None),  # file-level on a deleted file
        finding("bbbb0004", "not/in/pr.py", 3),  # no such file in the PR: a PR comment
    ]

    posted = forge.post_review(mr, diff, comments)

    assert fake.count("POST", f"{PULL}/reviews") == 1
    assert [p.placement for p in posted] == [
        Placement.FILE,
        Placement.INLINE,
        Placement.FILE,
        Placement.GENERAL,
    ]
    assert posted[0].note is not None
    assert "line 40" in posted[0].note
    assert posted[2].note is None
    file_level = fake.review_comments[int(posted[0].comment_id)]
    assert (file_level.subject_type, file_level.line) == ("file", None)
    general = fake.issue_comments[int(posted[3].comment_id.removeprefix("issuecomment-"))]
    assert general.body.startswith("**`not/in/pr.py:3`**")


def test_a_refused_review_is_retried_file_level(forge: GitHubForge, fake: FakeGitHub) -> None:
    mr = forge.merge_request(7)
    # a stale diff: line 4 of src/app.py was added there, but GitHub's diff has no line 4
    stale = "--- a/src/app.py\n+++ b/src/app.py\n@@ -1 +1,4 @@\n def total(items):\n+a\n+b\n+c\n"
    diff = parse_diff(f"diff --git a/src/app.py b/src/app.py\n{stale}")
    comments = [finding("cccc0001", "src/app.py", 4), finding("cccc0002", "src/app.py", 1)]

    posted = forge.post_review(mr, diff, comments)

    assert fake.count("POST", f"{PULL}/reviews") == 2
    assert [p.placement for p in posted] == [Placement.FILE, Placement.FILE]
    assert all(p.note and "Line could not be resolved" in p.note for p in posted)
    assert sorted(c.body for c in fake.review_comments.values()) == sorted(c.body for c in comments)
    assert {fake.review_comments[int(p.comment_id)].body for p in posted} == {c.body for c in comments}


def test_a_review_refused_twice_becomes_one_pr_comment_per_finding(
    forge: GitHubForge, fake: FakeGitHub
) -> None:
    mr = forge.merge_request(7)
    diff = parse_diff(forge.diff(mr))
    comments = [finding("dddd0001", "src/app.py", 2), finding("dddd0002", "src/app.py", 3, Side.OLD)]
    fake.fail(f"{PULL}/reviews", 422, times=2)

    posted = forge.post_review(mr, diff, comments)

    assert not fake.review_comments
    assert [p.placement for p in posted] == [Placement.GENERAL, Placement.GENERAL]
    assert all(p.note and "file-level retry" in p.note for p in posted)
    bodies = [fake.issue_comments[int(p.comment_id.removeprefix("issuecomment-"))].body for p in posted]
    assert bodies[0].startswith("**`src/app.py:2`**")
    assert bodies[1].startswith("**`src/app.py:3`** (old side)")
    assert len(fake.issue_comments) == 2


def test_bot_comments_finds_only_the_bots_marked_comments_across_pages(
    forge: GitHubForge, fake: FakeGitHub
) -> None:
    fake.graphql_page = 40
    ids = [
        fake.add_review_comment(REPO, 7, BOT, f"x\n{finding_marker(f'{i:08x}')}", "src/app.py")
        for i in range(130)
    ]
    fake.add_review_comment(REPO, 7, "alice", f"quoting\n{finding_marker('ffff0000')}", "src/app.py")
    fake.add_review_comment(REPO, 7, BOT, "an unmarked comment", "src/app.py")
    summary = fake.add_issue_comment(REPO, 7, BOT, f"Summary\n{SUMMARY_MARKER}")
    fake.add_issue_comment(REPO, 7, "alice", f"{SUMMARY_MARKER} copied")
    fake.resolved.add(ids[5])

    found = forge.bot_comments(7)

    findings = [c for c in found if c.kind == "finding"]
    assert [c.comment_id for c in findings] == [str(i) for i in ids]
    assert [c.fingerprint for c in findings[:2]] == ["00000000", "00000001"]
    assert [c.comment_id for c in findings if c.resolved] == [str(ids[5])]
    assert [(c.comment_id, c.kind, c.fingerprint) for c in found if c.kind == "summary"] == [
        (f"issuecomment-{summary}", "summary", None)
    ]
    assert fake.count("GET", f"{PULL}/comments") == 2
    assert fake.count("POST", "/graphql") == 4  # 132 threads, 40 a page


def test_upsert_summary_creates_then_edits_in_place(forge: GitHubForge, fake: FakeGitHub) -> None:
    first = forge.upsert_summary(7, f"one\n{SUMMARY_MARKER}", None)
    [existing] = forge.bot_comments(7)
    second = forge.upsert_summary(7, f"two\n{SUMMARY_MARKER}", existing)

    assert first == second == existing.comment_id
    assert [c.body for c in fake.issue_comments.values()] == [f"two\n{SUMMARY_MARKER}"]

    fake.issue_comments.clear()  # someone deleted it: a new one is posted
    third = forge.upsert_summary(7, f"three\n{SUMMARY_MARKER}", existing)
    assert third != first
    assert [c.body for c in fake.issue_comments.values()] == [f"three\n{SUMMARY_MARKER}"]


def test_update_comment_edits_review_and_pr_comments(forge: GitHubForge, fake: FakeGitHub) -> None:
    mr = forge.merge_request(7)
    diff = parse_diff(forge.diff(mr))
    forge.post_review(mr, diff, [finding("eeee0001", "src/app.py", 2), finding("eeee0002", "nowhere.py", 1)])
    inline, general = forge.bot_comments(7)

    forge.update_comment(7, inline, f"edited\n{finding_marker('eeee0001')}")
    forge.update_comment(7, general, f"edited too\n{finding_marker('eeee0002')}")

    assert [c.body for c in fake.review_comments.values()] == [f"edited\n{finding_marker('eeee0001')}"]
    assert [c.body for c in fake.issue_comments.values()] == [f"edited too\n{finding_marker('eeee0002')}"]


def test_resolve_comment_resolves_the_thread_or_marks_a_pr_comment_outdated(
    forge: GitHubForge, fake: FakeGitHub
) -> None:
    mr = forge.merge_request(7)
    diff = parse_diff(forge.diff(mr))
    forge.post_review(mr, diff, [finding("ffff0001", "src/app.py", 2), finding("ffff0002", "nowhere.py", 1)])
    inline, general = forge.bot_comments(7)

    forge.resolve_comment(7, inline)
    forge.resolve_comment(7, general)

    assert fake.resolved == {int(inline.comment_id)}
    after = {c.comment_id: c for c in forge.bot_comments(7)}
    assert after[inline.comment_id].resolved
    assert after[general.comment_id].body.startswith("**Outdated:**")
    forge.resolve_comment(7, after[general.comment_id])  # twice: no second mark
    assert after[general.comment_id].body == forge.bot_comments(7)[1].body


def test_a_429_with_a_short_retry_after_is_waited_out(forge: GitHubForge, fake: FakeGitHub) -> None:
    fake.fail(PULL, 429, retry_after=1)
    started = time.monotonic()

    assert forge.merge_request(7).number == 7

    assert time.monotonic() - started >= 0.9
    assert fake.count("GET", PULL) == 2


def test_a_secondary_rate_limit_on_the_review_is_waited_out_and_posted_once(
    forge: GitHubForge, fake: FakeGitHub
) -> None:
    mr = forge.merge_request(7)
    diff = parse_diff(forge.diff(mr))
    fake.fail(f"{PULL}/reviews", 403, retry_after=1)

    [posted] = forge.post_review(mr, diff, [finding("abab0001", "src/app.py", 2)])

    assert posted.placement is Placement.INLINE
    assert fake.count("POST", f"{PULL}/reviews") == 2
    assert len(fake.review_comments) == 1


def test_a_long_secondary_rate_limit_goes_back_to_the_caller(forge: GitHubForge, fake: FakeGitHub) -> None:
    fake.secondary_limit = 2
    summary = BotComment(
        forge.upsert_summary(7, f"a\n{SUMMARY_MARKER}", None), None, "summary", None, "", False
    )
    forge.upsert_summary(7, f"b\n{SUMMARY_MARKER}", summary)

    with pytest.raises(ForgeError) as error:
        forge.upsert_summary(7, f"c\n{SUMMARY_MARKER}", summary)

    assert error.value.retryable
    assert error.value.retry_after_s == 60
    assert "secondary rate limit" in str(error.value)


def test_the_primary_rate_limit_goes_back_to_the_caller_with_its_reset(
    forge: GitHubForge, fake: FakeGitHub
) -> None:
    reset = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(time.time()) + 3600)}
    fake.fail(PULL, 403, message="API rate limit exceeded for user ID 1.", headers=reset)

    with pytest.raises(ForgeError) as error:
        forge.merge_request(7)

    assert error.value.retryable
    assert 3500 < (error.value.retry_after_s or 0) < 3700
    assert fake.count("GET", PULL) == 1


def test_persistent_5xx_is_a_retryable_error_naming_url_and_operation(
    forge: GitHubForge, fake: FakeGitHub, url: str
) -> None:
    fake.fail(PULL, 502, times=10)

    with pytest.raises(ForgeError) as error:
        forge.merge_request(7)

    assert error.value.retryable
    message = str(error.value)
    assert url in message
    assert REPO in message
    assert "read pull request #7" in message
    assert "502" in message
    assert fake.count("GET", PULL) == 3  # the first try and two retries


def test_a_5xx_on_posting_is_not_repeated(forge: GitHubForge, fake: FakeGitHub) -> None:
    mr = forge.merge_request(7)
    diff = parse_diff(forge.diff(mr))
    fake.fail(f"{PULL}/reviews", 502)

    with pytest.raises(ForgeError) as error:
        forge.post_review(mr, diff, [finding("acac0001", "src/app.py", 2)])

    assert error.value.retryable
    assert "post a review" in str(error.value)
    assert fake.count("POST", f"{PULL}/reviews") == 1


def test_not_found_is_a_permanent_error(forge: GitHubForge) -> None:
    with pytest.raises(ForgeError) as error:
        forge.merge_request(404)
    assert not error.value.retryable
    assert error.value.retry_after_s is None
    assert "404" in str(error.value)
    assert "Not Found" in str(error.value)


def test_an_unreachable_server_is_a_retryable_error() -> None:
    with pytest.raises(ForgeError) as error:
        GitHubForge(f"http://127.0.0.1:{free_port()}", REPO, token="bot-token", timeout_s=1)
    assert error.value.retryable
    assert "read the bot's identity" in str(error.value)


def test_acknowledge_a_reviewers_command(forge: GitHubForge, fake: FakeGitHub) -> None:
    mr = forge.merge_request(7)
    forge.post_review(mr, parse_diff(forge.diff(mr)), [finding("abcd0001", "src/app.py", 2)])
    [ours] = forge.bot_comments(7)
    command = fake.add_review_comment(
        REPO, 7, "alice", "/dismiss intended", "src/app.py", 2, int(ours.comment_id)
    )

    forge.acknowledge(7, str(command), ours.comment_id, "Noted: dismissed.")

    assert fake.review_comments[command].reactions == [("reviewbot", "eyes")]
    [answer] = [c for c in fake.review_comments.values() if c.user == BOT and c.in_reply_to_id]
    assert answer.in_reply_to_id == int(ours.comment_id)
    assert answer.body == "Noted: dismissed."


@pytest.mark.parametrize(
    ("permission", "role"),
    [
        ("read", Role.GUEST),
        ("triage", Role.REPORTER),
        ("write", Role.DEVELOPER),
        ("maintain", Role.MAINTAINER),
        ("admin", Role.OWNER),
    ],
)
def test_member_role_is_the_repository_permission(
    forge: GitHubForge, fake: FakeGitHub, permission: str, role: Role
) -> None:
    fake.add_collaborator(REPO, "bo", permission)
    assert forge.member_role("bo") is role


def test_anyone_reads_a_public_repository_and_an_unknown_user_has_no_role(forge: GitHubForge) -> None:
    assert forge.member_role("alice") is Role.GUEST
    assert forge.member_role("nobody") is Role.NONE


def test_reactions_are_polled_with_their_users(forge: GitHubForge, fake: FakeGitHub) -> None:
    ours = fake.add_review_comment(
        REPO, 7, BOT, "finding <!-- reviewbot:finding:ffffffffffffffff -->", "a.py"
    )
    quiet = fake.add_review_comment(
        REPO, 7, BOT, "finding <!-- reviewbot:finding:eeeeeeeeeeeeeeee -->", "a.py"
    )
    fake.react(ours, "alice", "+1")
    fake.react(ours, "bo", "-1")
    fake.react(ours, "bo", "laugh")
    polled, _ = forge.poll_feedback(7)
    assert polled is not None
    assert polled.reactions == {
        str(ours): frozenset({("alice", "+1"), ("bo", "-1")}),
        str(quiet): frozenset(),
    }
    assert fake.count("GET", f"/repos/{REPO}/pulls/comments/{quiet}/reactions") == 0  # no 👍/👎: not asked


def test_reactions_on_a_later_page_are_seen_and_unchanged_pages_cost_a_304(
    forge: GitHubForge, fake: FakeGitHub
) -> None:
    ids = [
        fake.add_review_comment(REPO, 7, BOT, f"finding <!-- reviewbot:finding:{n:016x} -->", "a.py")
        for n in range(250)  # three pages of 100
    ]
    polled, etag = forge.poll_feedback(7)
    assert polled is not None
    assert len(polled.reactions) == 250

    fake.react(ids[240], "alice", "+1")  # on page 3
    polled, etag = forge.poll_feedback(7, etag)
    assert polled is not None
    assert polled.reactions == {str(i): frozenset() for i in ids[200:240] + ids[241:]} | {
        str(ids[240]): frozenset({("alice", "+1")})
    }
    assert fake.not_modified == 2  # pages 1 and 2 did not change

    assert forge.poll_feedback(7, etag) == (None, etag)  # nothing changed: three 304s
    assert fake.not_modified == 5


def test_a_new_page_of_comments_is_read_after_a_full_last_page(forge: GitHubForge, fake: FakeGitHub) -> None:
    for n in range(100):
        fake.add_review_comment(REPO, 7, BOT, f"finding <!-- reviewbot:finding:{n:016x} -->", "a.py")
    _, etag = forge.poll_feedback(7)
    late = fake.add_review_comment(REPO, 7, BOT, "late <!-- reviewbot:finding:ffffffffffffffff -->", "a.py")
    fake.react(late, "alice", "-1")
    polled, _ = forge.poll_feedback(7, etag)
    assert polled is not None
    assert polled.reactions == {str(late): frozenset({("alice", "-1")})}


def test_open_merge_requests_newest_first_stopping_at_updated_since(
    forge: GitHubForge, fake: FakeGitHub
) -> None:
    fake.pulls[(REPO, 7)].updated_at = datetime.now(UTC) - timedelta(days=2)
    fake.add_pull(REPO, 8, SEED, author="bob", head_sha="c" * 40)
    fake.add_pull(REPO, 9, SEED, state="closed")
    for number in range(10, 215):  # past two pages of open pull requests, all old
        fake.add_pull(REPO, number, SEED, head_sha=f"{number:040x}")
        fake.pulls[(REPO, number)].updated_at = datetime.now(UTC) - timedelta(days=3)
    fake.push(REPO, 7, "d" * 40)

    recent = forge.open_merge_requests(datetime.now(UTC) - timedelta(hours=1))
    assert [(mr.number, mr.head_sha, mr.draft, mr.author, mr.state) for mr in recent] == [
        (7, "d" * 40, True, "alice", "open"),
        (8, "c" * 40, False, "bob", "open"),
    ]
    assert all(mr.updated_at is not None and mr.updated_at.tzinfo for mr in recent)
    assert fake.count("GET", f"/repos/{REPO}/pulls") == 1  # stopped on the first page

    everything = forge.open_merge_requests(None)
    assert sorted(mr.number for mr in everything) == [7, 8, *range(10, 215)]
