"""GitLabForge against the fake GitLab over real HTTP: metadata, diffs, positions and their fallbacks,
the bot's own comments, and failures (rate limits, 5xx, auth)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from bot.diff import FileStatus, parse_diff
from bot.events import Role
from bot.forges.base import SUMMARY_MARKER, BotComment, ForgeError, InlineComment, Placement, finding_marker
from bot.forges.gitlab import GitLabForge
from bot.models import Side
from tests.support.fake_gitlab import FakeGitLab, FileChange, MergeRequest, Note, User, change, sha
from tests.support.live_server import live_server

BOT_TOKEN = "bot-token"
OLD = "".join(f"line {n}\n" for n in range(1, 21))
# line 5 changed (old 5 removed, new 5 added), a line added after 12, line 18 removed
NEW = (
    OLD.replace("line 5\n", "line five\n")
    .replace("line 12\n", "line 12\nline 12b\n")
    .replace("line 18\n", "")
)


@pytest.fixture
def fake() -> FakeGitLab:
    fake = FakeGitLab()
    fake.add_user("reviewbot", BOT_TOKEN)
    fake.add_user("alice", "alice-token")
    fake.add_project("group/app")
    return fake


@pytest.fixture
def url(fake: FakeGitLab) -> Iterator[str]:
    with live_server(fake.app) as url:
        yield url


@pytest.fixture
def forge(url: str) -> GitLabForge:
    return GitLabForge(url, BOT_TOKEN, "group/app", timeout_s=5)


def user(fake: FakeGitLab, username: str) -> User:
    return next(u for u in fake.users.values() if u.username == username)


def open_mr(
    fake: FakeGitLab, changes: list[FileChange] | None = None, *, state: str = "opened", draft: bool = False
) -> MergeRequest:
    changes = changes or [change("app.py", OLD, NEW)]
    alice = user(fake, "alice")
    return fake.add_merge_request(
        fake.projects[0], changes, author=alice, title="Add things", state=state, draft=draft
    )


def finding(path: str, line: int | None, side: Side = Side.NEW, tag: str = "a") -> InlineComment:
    fingerprint = sha(path, line, side, tag)[:16]
    return InlineComment(
        fingerprint, path, line, side, f"Finding on {path}:{line}\n\n{finding_marker(fingerprint)}"
    )


def test_merge_request_has_the_latest_versions_shas(fake: FakeGitLab, forge: GitLabForge) -> None:
    mr = open_mr(fake, draft=True)
    latest = fake.push(mr, [change("app.py", OLD, NEW + "more\n")])

    got = forge.merge_request(mr.iid)

    assert forge.bot_username == "reviewbot"
    assert (got.number, got.title, got.state, got.draft, got.author) == (
        1,
        "Add things",
        "open",
        True,
        "alice",
    )
    assert (got.head_sha, got.base_sha, got.start_sha) == (latest.head_sha, latest.base_sha, latest.start_sha)
    assert got.head_sha != mr.versions[0].head_sha


@pytest.mark.parametrize(("gitlab", "ours"), [("locked", "open"), ("merged", "merged"), ("closed", "closed")])
def test_merge_request_states(fake: FakeGitLab, forge: GitLabForge, gitlab: str, ours: str) -> None:
    assert forge.merge_request(open_mr(fake, state=gitlab).iid).state == ours


def test_a_push_whose_diff_gitlab_has_not_prepared_yet_is_retryable(
    fake: FakeGitLab, forge: GitLabForge
) -> None:
    mr = open_mr(fake)
    mr.sha = sha("pushed, diff version not built yet")
    with pytest.raises(ForgeError, match="not prepared its diff") as caught:
        forge.merge_request(mr.iid)
    assert caught.value.retryable


def test_diff_of_all_pages_parses_with_every_kind_of_change(
    fake: FakeGitLab, forge: GitLabForge, caplog: pytest.LogCaptureFixture
) -> None:
    modified = [change(f"src/m{n:02}.py", f"a = {n}\nb = 0\n", f"a = {n}\nb = 1\n") for n in range(24)]
    special = [
        change("src/new.py", None, "print('hi')\n"),
        change("src/gone.py", "x = 1\n", None),
        change("src/renamed.py", OLD, NEW, old_path="src/original.py"),
        change("docs/moved.md", "same\n", "same\n", old_path="docs/old.md"),
        change("run.sh", "echo\n", "echo\n", new_mode="100755"),
        change("docs/café notes.md", "a\n", "b\n"),
        change("data/huge.json", "{}\n", '{"a": 1}\n', omitted="too_large"),
    ]
    mr = open_mr(fake, modified + special)

    with caplog.at_level(logging.WARNING, logger="bot.forges.gitlab"):
        diff = parse_diff(forge.diff(forge.merge_request(mr.iid)))

    assert fake.requests.count(("GET", "/api/v4/projects/group/app/merge_requests/1/diffs")) == 2  # 31 files
    files = {file.path: file for file in diff.files}
    assert set(files) == {c.new_path for c in modified} | {
        "src/new.py",
        "src/renamed.py",
        "docs/café notes.md",
    }
    assert [line.text for line in files["src/m07.py"].hunks[0].changed] == ["b = 0", "b = 1"]
    assert files["src/new.py"].status is FileStatus.ADDED
    renamed = files["src/renamed.py"]
    assert (renamed.status, renamed.old_path) == (FileStatus.RENAMED, "src/original.py")
    five = renamed.line(Side.NEW, 5)
    assert five is not None
    assert five.text == "line five"
    skipped = {s.path: s.reason for s in diff.skipped}
    assert skipped == {
        "src/gone.py": "file deleted",
        "docs/moved.md": "renamed without changes",
        "run.sh": "mode change only",
        "data/huge.json": "GitLab shows no diff for it (too_large)",  # left out by GitLab: listed, not lost
    }
    assert "data/huge.json" in caplog.text
    assert "too_large" in caplog.text


def test_findings_on_added_removed_and_context_lines_land_inline(
    fake: FakeGitLab, forge: GitLabForge
) -> None:
    mr = open_mr(fake)
    ours = forge.merge_request(mr.iid)
    diff = parse_diff(forge.diff(ours))
    comments = [
        finding("app.py", 5, Side.NEW),  # added "line five"
        finding("app.py", 5, Side.OLD),  # removed "line 5"
        finding("app.py", 4, Side.NEW),  # context "line 4": old 4, new 4
        finding("app.py", 18, Side.OLD),  # removed "line 18"
        finding("app.py", 15, Side.OLD),  # context, found by its old number: old 15 is new 16
    ]

    posted = forge.post_review(ours, diff, comments)

    assert [p.placement for p in posted] == [Placement.INLINE] * 5
    assert [p.note for p in posted] == [None] * 5
    positions = [d.notes[0].position or {} for d in mr.discussions]
    assert [(p.get("old_line", "-"), p.get("new_line", "-")) for p in positions] == [
        ("-", 5),
        (5, "-"),
        (4, 4),
        (18, "-"),
        (15, 16),
    ]
    assert positions[0] == {
        "position_type": "text",
        "base_sha": ours.base_sha,
        "start_sha": ours.start_sha,
        "head_sha": ours.head_sha,
        "old_path": "app.py",
        "new_path": "app.py",
        "new_line": 5,
    }
    assert [(p.comment_id, p.thread_id) for p in posted] == [
        (str(d.notes[0].id), d.id) for d in mr.discussions
    ]
    assert [d.notes[0].body for d in mr.discussions] == [c.body for c in comments]


def test_anchors_gitlab_cannot_place_fall_back_and_every_finding_is_posted_once(
    fake: FakeGitLab, forge: GitLabForge
) -> None:
    mr = open_mr(fake, [change("app.py", OLD, NEW), change("lib.py", "a\n", "b\n")])
    stale = forge.merge_request(mr.iid)
    stale_diff = parse_diff(forge.diff(stale))
    fake.push(mr, [change("app.py", OLD, NEW.replace("line 12b\n", ""))])  # lib.py reverted, line 13 gone
    current = forge.merge_request(mr.iid)
    comments = [
        finding("app.py", 1, Side.NEW),  # 0: not in the diff: straight to a file-level note
        finding("app.py", 13, Side.NEW),  # 1: in our (stale) diff, not in GitLab's: refused, file-level
        finding("lib.py", 1, Side.NEW),  # 2: the file left the MR: line and file refused, general note
        finding("README.md", 3, Side.NEW),  # 3: not in the diff at all: general note
        finding("app.py", None),  # 4: a file-level finding
        finding("app.py", 5, Side.NEW),  # 5: fine
    ]
    writes_before = len(fake.writes())

    posted = forge.post_review(current, stale_diff, comments)

    placements = [p.placement for p in posted]
    assert placements == [
        Placement.FILE,
        Placement.FILE,
        Placement.GENERAL,
        Placement.GENERAL,
        Placement.FILE,
        Placement.INLINE,
    ]
    assert [p.fingerprint for p in posted] == [c.fingerprint for c in comments]
    assert "line 1 (new side) is not in the diff" in (posted[0].note or "")
    assert "GitLab refused the line position: line_code can't be blank" in (posted[1].note or "")
    assert "refused the file position" in (posted[2].note or "")
    assert "README.md is not among" in (posted[3].note or "")
    assert posted[4].note is None
    assert posted[5].note is None
    # Each finding became exactly one discussion; the off-diff one cost no refused request.
    assert len(mr.discussions) == len(comments)
    assert all(d.notes[0].body.endswith(c.body) for d, c in zip(mr.discussions, comments, strict=True))
    assert len(fake.writes()) - writes_before == 6 + 1 + 2  # one each, plus the refused tries
    bodies = [d.notes[0].body for d in mr.discussions]
    assert bodies[0].startswith("Line 1:\n\n")
    assert (mr.discussions[0].notes[0].position or {})["position_type"] == "file"
    assert bodies[2].startswith("`lib.py:1`\n\n")
    assert mr.discussions[2].notes[0].position is None
    assert bodies[4] == comments[4].body


def test_stale_shas_fall_back_to_a_general_note(fake: FakeGitLab, forge: GitLabForge) -> None:
    mr = open_mr(fake)
    stale = forge.merge_request(mr.iid)
    diff = parse_diff(forge.diff(stale))
    fake.push(mr, [change("app.py", OLD, NEW)])

    [posted] = forge.post_review(stale, diff, [finding("app.py", 5, Side.OLD)])

    assert posted.placement is Placement.GENERAL
    assert "line position: line_code can't be blank" in (posted.note or "")
    assert mr.discussions[0].notes[0].body.startswith("`app.py:5`\n\n")


def test_bot_comments_are_the_bots_marked_notes_on_every_page(fake: FakeGitLab, forge: GitLabForge) -> None:
    mr = open_mr(fake)
    bot, alice = user(fake, "reviewbot"), user(fake, "alice")
    for n in range(25):
        fake.add_note(mr, alice, f"human note {n}")
    fake.add_note(
        mr, alice, f"copied\n{finding_marker('ab' * 8)}", resolvable=True
    )  # a human quoting the bot
    fake.add_note(mr, bot, "bot note without a marker")
    first = fake.add_note(mr, bot, f"first\n{finding_marker('12345678')}", resolvable=True)
    second = fake.add_note(mr, bot, f"second\n{finding_marker('abcdef0123456789')}", resolvable=True)
    summary = fake.add_note(mr, bot, f"summary\n{SUMMARY_MARKER}")
    second.resolved = True

    found = forge.bot_comments(mr.iid)

    assert fake.requests.count(("GET", "/api/v4/projects/group/app/merge_requests/1/discussions")) == 2
    assert [(c.comment_id, c.kind, c.fingerprint, c.resolved) for c in found] == [
        (str(first.id), "finding", "12345678", False),
        (str(second.id), "finding", "abcdef0123456789", True),
        (str(summary.id), "summary", None, False),
    ]
    assert all(c.thread_id for c in found)
    assert found[0].body == first.body


def test_summary_is_created_then_edited_in_place(fake: FakeGitLab, forge: GitLabForge) -> None:
    mr = open_mr(fake)

    note_id = forge.upsert_summary(mr.iid, f"3 findings\n{SUMMARY_MARKER}", None)
    [existing] = forge.bot_comments(mr.iid)
    again = forge.upsert_summary(mr.iid, f"1 finding\n{SUMMARY_MARKER}", existing)

    assert again == note_id == existing.comment_id
    assert [n.body for _, n in mr.notes()] == [f"1 finding\n{SUMMARY_MARKER}"]


def test_a_deleted_summary_is_posted_again(fake: FakeGitLab, forge: GitLabForge) -> None:
    mr = open_mr(fake)
    forge.upsert_summary(mr.iid, f"old\n{SUMMARY_MARKER}", None)
    [existing] = forge.bot_comments(mr.iid)
    mr.discussions.clear()  # a maintainer deleted it

    new_id = forge.upsert_summary(mr.iid, f"new\n{SUMMARY_MARKER}", existing)

    assert new_id != existing.comment_id
    assert [(str(n.id), n.body) for _, n in mr.notes()] == [(new_id, f"new\n{SUMMARY_MARKER}")]


def test_update_and_resolve_a_finding(fake: FakeGitLab, forge: GitLabForge) -> None:
    mr = open_mr(fake)
    ours = forge.merge_request(mr.iid)
    forge.post_review(ours, parse_diff(forge.diff(ours)), [finding("app.py", 5)])
    [comment] = forge.bot_comments(mr.iid)

    forge.update_comment(mr.iid, comment, f"edited\n{finding_marker(comment.fingerprint or '')}")
    forge.resolve_comment(mr.iid, comment)

    [after] = forge.bot_comments(mr.iid)
    assert after.body.startswith("edited")
    assert after.resolved
    assert (after.comment_id, after.thread_id) == (comment.comment_id, comment.thread_id)


def test_editing_a_note_of_someone_else_is_a_permanent_error(fake: FakeGitLab, forge: GitLabForge) -> None:
    mr = open_mr(fake)
    note = fake.add_note(mr, user(fake, "alice"), "mine")
    theirs = BotComment(str(note.id), None, "finding", "12345678", note.body, False)
    with pytest.raises(ForgeError, match="HTTP 403") as caught:
        forge.update_comment(mr.iid, theirs, "hijacked")
    assert not caught.value.retryable
    assert note.body == "mine"


def test_a_short_rate_limit_is_waited_out(fake: FakeGitLab, forge: GitLabForge) -> None:
    mr = open_mr(fake)
    fake.fail("GET", r"/merge_requests/1$", 429, headers={"Retry-After": "1"})

    started = time.monotonic()
    assert forge.merge_request(mr.iid).number == 1

    assert time.monotonic() - started >= 1.0
    assert fake.requests.count(("GET", "/api/v4/projects/group/app/merge_requests/1")) == 2


def test_a_persistent_rate_limit_is_a_retryable_error_with_its_wait(
    fake: FakeGitLab, forge: GitLabForge
) -> None:
    mr = open_mr(fake)
    fake.fail("GET", r"/discussions$", 429, times=10, headers={"Retry-After": "1"})

    with pytest.raises(ForgeError, match="HTTP 429") as caught:
        forge.bot_comments(mr.iid)

    assert caught.value.retryable
    assert caught.value.retry_after_s == 1.0
    assert fake.requests.count(("GET", "/api/v4/projects/group/app/merge_requests/1/discussions")) == 3


def test_persistent_5xx_is_retryable_and_says_where(fake: FakeGitLab, forge: GitLabForge, url: str) -> None:
    mr = open_mr(fake)
    fake.fail("GET", r"/diffs$", 502, times=10)
    ours = forge.merge_request(mr.iid)

    with pytest.raises(ForgeError) as caught:
        forge.diff(ours)

    message = str(caught.value)
    assert caught.value.retryable
    assert caught.value.retry_after_s is None
    assert url in message
    assert "group/app" in message
    assert "read the diff of merge request !1" in message
    assert "HTTP 502" in message
    assert fake.requests.count(("GET", "/api/v4/projects/group/app/merge_requests/1/diffs")) == 3


def test_a_transient_5xx_on_a_read_is_retried(fake: FakeGitLab, forge: GitLabForge) -> None:
    mr = open_mr(fake)
    fake.fail("GET", r"/diffs$", 503)
    assert "app.py" in forge.diff(forge.merge_request(mr.iid))


def test_a_5xx_while_posting_is_not_retried_blindly(fake: FakeGitLab, forge: GitLabForge) -> None:
    mr = open_mr(fake)
    ours = forge.merge_request(mr.iid)
    diff = parse_diff(forge.diff(ours))
    fake.fail("POST", r"/discussions$", 502)

    with pytest.raises(ForgeError, match="post a discussion") as caught:
        forge.post_review(ours, diff, [finding("app.py", 5)])

    assert caught.value.retryable
    assert fake.writes() == [("POST", "/api/v4/projects/group/app/merge_requests/1/discussions")]


def test_a_bad_token_is_a_permanent_error(url: str) -> None:
    with pytest.raises(ForgeError, match=r"HTTP 401.*access token") as caught:
        GitLabForge(url, "wrong-token", "group/app")
    assert not caught.value.retryable
    assert url in str(caught.value)


def test_an_unknown_merge_request_or_project_is_a_permanent_error(url: str, forge: GitLabForge) -> None:
    with pytest.raises(ForgeError, match="HTTP 404") as caught:
        forge.merge_request(99)
    assert not caught.value.retryable
    assert "read merge request !99" in str(caught.value)
    with pytest.raises(ForgeError, match=r"project group/nope.*HTTP 404"):
        GitLabForge(url, BOT_TOKEN, "group/nope").bot_comments(1)


def test_an_unreachable_gitlab_is_retryable() -> None:
    with live_server(FakeGitLab().app) as url:
        pass  # the port is free again: nothing listens there
    with pytest.raises(ForgeError, match="unreachable") as caught:
        GitLabForge(url, BOT_TOKEN, "group/app", timeout_s=1)
    assert caught.value.retryable


def test_acknowledge_a_reviewers_command(fake: FakeGitLab, forge: GitLabForge) -> None:
    mr = open_mr(fake)
    ours = forge.merge_request(mr.iid)
    forge.post_review(ours, parse_diff(forge.diff(ours)), [finding("app.py", 5)])
    [comment] = forge.bot_comments(mr.iid)
    discussion = next(d for d in mr.discussions if d.id == comment.thread_id)
    command = Note(9999, user(fake, "alice"), "/severity minor", resolvable=True)
    discussion.notes.append(command)

    forge.acknowledge(mr.iid, "9999", comment.thread_id, "Noted: severity minor.")
    forge.acknowledge(mr.iid, "9999", comment.thread_id, "Noted: severity minor.")  # a retried job

    assert command.awards == [(user(fake, "reviewbot"), "eyes")]
    assert [n.body for n in discussion.notes[2:]] == ["Noted: severity minor."] * 2


@pytest.mark.parametrize(
    ("level", "inherited", "role"),
    [
        (10, False, Role.GUEST),
        (15, False, Role.GUEST),  # Planner: a guest who plans
        (20, False, Role.REPORTER),
        (30, True, Role.DEVELOPER),  # a member of the project's group
        (40, False, Role.MAINTAINER),
        (50, True, Role.OWNER),
        (5, False, Role.NONE),  # Minimal Access
    ],
)
def test_member_role_is_the_access_level_inherited_or_not(
    fake: FakeGitLab, forge: GitLabForge, level: int, inherited: bool, role: Role
) -> None:
    fake.add_member(fake.projects[0], user(fake, "alice"), level, inherited=inherited)
    assert forge.member_role("alice") is role


def test_a_stranger_or_unknown_user_has_no_role(forge: GitLabForge) -> None:
    assert forge.member_role("alice") is Role.NONE  # a user, not a member
    assert forge.member_role("nobody") is Role.NONE


def test_open_merge_requests_updated_since_across_pages(fake: FakeGitLab, forge: GitLabForge) -> None:
    old = [open_mr(fake) for _ in range(45)]  # three pages of the fake's 20
    for mr in old:
        mr.updated_at = datetime.now(UTC) - timedelta(days=3)
    draft = open_mr(fake, draft=True)
    open_mr(fake, state="merged")
    pushed = old[30]
    fake.push(pushed, [change("app.py", OLD, NEW + "more\n")])
    since = datetime.now(UTC) - timedelta(hours=1)

    recent = forge.open_merge_requests(since)
    assert [(mr.number, mr.head_sha, mr.draft, mr.author, mr.state) for mr in recent] == [
        (pushed.iid, pushed.sha, False, "alice", "open"),
        (draft.iid, draft.sha, True, "alice", "open"),
    ]
    assert all(mr.updated_at is not None and mr.updated_at >= since for mr in recent)

    everything = forge.open_merge_requests(None)
    assert sorted(mr.number for mr in everything) == sorted([*(mr.iid for mr in old), draft.iid])
