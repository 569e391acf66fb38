"""The console's reviews page and ``/api/v1/reviews``: newest first, filtered by project and status,
paged; each review's report (findings by severity, posted, suppressed, listed, skipped and failed
files) and error, with untrusted text escaped; the merge request's link on either forge."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from bot.forges import github_web_root, merge_request_url
from bot.models import Finding, FindingStatus, Project, Review
from tests.support.console import Admin, bearer, console_client, sign_in
from tests.support.db import session_scope

HOSTILE = "<script>alert(1)</script>"
T0 = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)


@dataclass
class World:
    gitlab: int  # project ids
    github: int
    done: int  # review ids
    failed: int
    old: int


def report(skipped: int = 7) -> dict[str, object]:
    """A review's report as bot.review.job writes it."""
    files = [[f"gen/file{i}.py", "generated"] for i in range(skipped - 1)] + [[f"{HOSTILE}.py", "binary"]]
    return {
        "findings": {"critical": 1, "major": 2, "minor": 0, "trivial": 0},
        "posted": 2, "suppressed": 1, "listed": 0,
        "skipped": files, "skipped_total": skipped + 3,
        "failed": [["lib/big.py", "the model timed out"]], "failed_total": 1,
        "stopped": None, "models": {"find": "student", "severity": "severity-v2"},
    }  # fmt: skip


def seed(engine: sa.Engine) -> World:
    with session_scope(engine) as session:
        gitlab = Project(forge="gitlab", forge_url="http://gitlab.test/", path="team/app", webhook_secret="s")
        github = Project(forge="github", forge_url="https://github.com", path="octo/repo", webhook_secret="s")
        session.add_all([gitlab, github])
        session.flush()
        old = Review(project_id=gitlab.id, mr_number=3, head_sha="0" * 40, created_at=T0)  # before reports
        done = Review(project_id=gitlab.id, mr_number=7, head_sha="a" * 40, status="done", report=report(),
                      created_at=T0 + timedelta(minutes=1), started_at=T0 + timedelta(minutes=1),
                      finished_at=T0 + timedelta(minutes=1, seconds=42))  # fmt: skip
        failed = Review(project_id=github.id, mr_number=5, head_sha="b" * 40, status="failed",
                        error=f"the forge said 500: {HOSTILE}\nTraceback (most recent call last): ...",
                        created_at=T0 + timedelta(minutes=2))  # fmt: skip
        session.add_all([old, done, failed])
        session.flush()
        session.add(Finding(review_id=done.id, path=f"src/{HOSTILE}.py", line=4, severity="critical",
                            title=f"Injection {HOSTILE}", review="r", fingerprint="f1",
                            model_version="severity-v2", status=FindingStatus.POSTED,
                            confidence=0.91))  # fmt: skip
        assert gitlab.id
        assert github.id
        assert done.id
        assert failed.id
        assert old.id
        return World(gitlab.id, github.id, done.id, failed.id, old.id)


@pytest.fixture
def client(engine: sa.Engine) -> Iterator[TestClient]:
    with console_client(engine) as client:
        yield client


@pytest.fixture
def admin(client: TestClient) -> Admin:
    return sign_in(client)


def row_ids(html: str) -> list[str]:
    return [part.split('"')[0] for part in html.split('<tr id="review-')[1:]]


def test_the_page_lists_reviews_newest_first_with_their_reports(engine: sa.Engine, admin: Admin) -> None:
    world = seed(engine)
    page = admin.client.get("/admin/reviews")
    assert page.status_code == 200
    html = page.text
    assert '<table id="reviews">' in html
    assert 'id="status-filter"' in html
    assert "<h1>Reviews</h1>" in html
    assert row_ids(html) == [str(world.failed), str(world.done), str(world.old)]
    assert 'href="http://gitlab.test/team/app/-/merge_requests/7"' in html
    assert 'href="https://github.com/octo/repo/pull/5"' in html
    assert "1 critical" in html
    assert "2 major" in html
    assert "0 minor" not in html
    assert "2 / 1 / 0" in html  # posted / suppressed / listed
    assert "42.0 s" in html  # how long it took
    assert '<details class="files"><summary>10 skipped</summary>' in html  # many: folded
    assert "and 3 more" in html  # the report names at most REPORT_LISTED of them
    assert "the model timed out" in html  # one failed file: shown as it is


def test_untrusted_text_is_escaped(engine: sa.Engine, admin: Admin) -> None:
    world = seed(engine)
    for path in ("/admin/reviews", f"/admin/reviews/{world.done}", f"/admin/reviews/{world.failed}"):
        html = admin.client.get(path).text
        assert HOSTILE not in html, path
    listing = admin.client.get("/admin/reviews").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.py" in listing  # a skipped file's name
    assert "the forge said 500: &lt;script&gt;" in listing  # the full error, escaped
    detail = admin.client.get(f"/admin/reviews/{world.done}").text
    assert "Injection &lt;script&gt;" in detail  # a finding's title


def test_filters_by_status_and_project(engine: sa.Engine, admin: Admin) -> None:
    world = seed(engine)
    failed = admin.client.get("/admin/reviews?status=failed").text
    assert row_ids(failed) == [str(world.failed)]
    assert '<option value="failed" selected>' in failed
    gitlab = admin.client.get(f"/admin/reviews?project={world.gitlab}&status=").text
    assert row_ids(gitlab) == [str(world.done), str(world.old)]
    nothing = admin.client.get(f"/admin/reviews?project={world.github}&status=done").text
    assert 'class="empty"' in nothing
    assert "No reviews match these filters" in nothing


def test_bad_filters_say_so_and_show_every_review(engine: sa.Engine, admin: Admin) -> None:
    seed(engine)
    page = admin.client.get("/admin/reviews?status=%3Cb%3Ebogus&project=999")
    assert page.status_code == 200
    assert "no review status &#39;&lt;b&gt;bogus&#39;" in page.text
    assert "no project 999" in page.text
    assert len(row_ids(page.text)) == 3


def test_the_empty_page_says_so(admin: Admin) -> None:
    html = admin.client.get("/admin/reviews").text
    assert '<p class="empty">No reviews yet' in html
    assert 'id="status-filter"' in html


def test_a_long_list_pages_on(engine: sa.Engine, admin: Admin) -> None:
    world = seed(engine)
    with session_scope(engine) as session:
        session.add_all(
            Review(project_id=world.github, mr_number=100 + n, head_sha="c" * 40, status="done")
            for n in range(100)
        )
    first = admin.client.get("/admin/reviews").text
    assert len(row_ids(first)) == 100
    link = first.split('<a id="older" href="')[1].split('"')[0].replace("&amp;", "&")
    rest = admin.client.get(link).text
    assert row_ids(rest) == [str(world.failed), str(world.done), str(world.old)]
    assert 'id="older"' not in rest


def test_one_review_with_its_findings(engine: sa.Engine, admin: Admin) -> None:
    world = seed(engine)
    html = admin.client.get(f"/admin/reviews/{world.done}").text
    assert f"<h1>Review {world.done}</h1>" in html
    assert f'<tr id="review-{world.done}">' in html
    assert '<table id="findings">' in html
    assert "0.91" in html
    assert "severity-v2" in html
    missing = admin.client.get("/admin/reviews/4242")
    assert (missing.status_code, "no review 4242" in missing.text) == (404, True)


def test_the_api_lists_reviews(engine: sa.Engine, client: TestClient) -> None:
    world = seed(engine)
    answer = client.get("/api/v1/reviews", headers=bearer())
    assert answer.status_code == 200
    body = answer.json()
    assert body["older"] is None
    assert [r["id"] for r in body["reviews"]] == [world.failed, world.done, world.old]
    done = body["reviews"][1]
    assert done["mr_url"] == "http://gitlab.test/team/app/-/merge_requests/7"
    assert done["findings"] == {"critical": 1, "major": 2, "minor": 0, "trivial": 0}
    assert (done["posted"], done["suppressed"], done["listed"]) == (2, 1, 0)
    assert done["skipped_total"] == 10
    assert len(done["skipped"]) == 7
    assert done["skipped"][-1] == {"path": f"{HOSTILE}.py", "why": "binary"}  # JSON: the text as it is
    assert done["failed"] == [{"path": "lib/big.py", "why": "the model timed out"}]
    assert done["duration_s"] == 42.0
    assert done["queued_at"].startswith("2026-03-02T09:31:00")
    assert done["models"] == {"find": "student", "severity": "severity-v2"}
    old = body["reviews"][2]
    assert (old["findings"], old["posted"], old["skipped"]) == ({}, None, [])  # from before reports
    assert body["reviews"][0]["error"].startswith("the forge said 500")


def test_the_api_filters_and_pages(engine: sa.Engine, client: TestClient) -> None:
    world = seed(engine)
    first = client.get("/api/v1/reviews?limit=2", headers=bearer()).json()
    assert [r["id"] for r in first["reviews"]] == [world.failed, world.done]
    assert first["older"] == world.done
    rest = client.get(f"/api/v1/reviews?limit=2&before={first['older']}", headers=bearer()).json()
    assert ([r["id"] for r in rest["reviews"]], rest["older"]) == ([world.old], None)
    failed = client.get("/api/v1/reviews?status=failed", headers=bearer()).json()
    assert [r["id"] for r in failed["reviews"]] == [world.failed]
    of_gitlab = client.get(f"/api/v1/reviews?project={world.gitlab}", headers=bearer()).json()
    assert {r["project"] for r in of_gitlab["reviews"]} == {"team/app"}
    one = client.get(f"/api/v1/reviews/{world.done}", headers=bearer()).json()
    assert one["review"]["id"] == world.done
    assert one["findings"][0]["severity"] == "critical"


@pytest.mark.parametrize(
    ("query", "code", "said"),
    [
        ("status=bogus", 422, "'queued', 'running', 'done', 'failed' or 'superseded'"),
        ("limit=0", 422, "greater than or equal to 1"),
        ("limit=501", 422, "less than or equal to 500"),
        ("project=999", 404, "no project 999"),
    ],
)
def test_the_api_refuses_bad_input(client: TestClient, query: str, code: int, said: str) -> None:
    answer = client.get(f"/api/v1/reviews?{query}", headers=bearer())
    assert answer.status_code == code
    assert said in answer.text


def test_an_unknown_review_is_404(client: TestClient) -> None:
    answer = client.get("/api/v1/reviews/4242", headers=bearer())
    assert (answer.status_code, answer.json()["detail"]) == (404, "no review 4242")


def test_the_admin_token_is_needed(client: TestClient) -> None:
    for path in ("/api/v1/reviews", "/api/v1/reviews/1"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers=bearer("wrong-token-0123456789")).status_code == 401
    page = client.get("/admin/reviews", follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"].startswith("/admin/login")


def test_the_api_is_documented(client: TestClient) -> None:
    paths = client.get("/openapi.json", headers=bearer()).json()["paths"]
    assert paths["/api/v1/reviews"]["get"]["tags"] == ["reviews"]
    assert "/api/v1/reviews/{review_id}" in paths
    assert "/admin/reviews" not in paths


@pytest.mark.parametrize(
    ("forge", "forge_url", "path", "url"),
    [
        ("gitlab", "https://gitlab.com", "g/sub/app", "https://gitlab.com/g/sub/app/-/merge_requests/9"),
        (
            "gitlab",
            "https://git.example/gitlab/",
            "g/app",
            "https://git.example/gitlab/g/app/-/merge_requests/9",
        ),
        ("github", "https://github.com", "o/r", "https://github.com/o/r/pull/9"),
        ("github", "https://api.github.com/", "o/r", "https://github.com/o/r/pull/9"),
        ("github", "https://ghe.example/api/v3", "o/r", "https://ghe.example/o/r/pull/9"),
        ("github", "http://127.0.0.1:8123", "o/r", "http://127.0.0.1:8123/o/r/pull/9"),  # a test server
        ("gitlab", "http://gitlab.test", "g/a b#c", "http://gitlab.test/g/a%20b%23c/-/merge_requests/9"),
    ],
)
def test_merge_request_url(forge: str, forge_url: str, path: str, url: str) -> None:
    assert merge_request_url(forge, forge_url, path, 9) == url


def test_github_web_root() -> None:
    assert github_web_root("https://api.github.com") == "https://github.com"
    assert github_web_root("https://HOST/api/v3/") == "https://HOST"
    assert github_web_root("https://api.acme.ghe.com") == "https://acme.ghe.com"
