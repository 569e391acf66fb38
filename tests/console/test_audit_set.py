"""The console's blind severity audit (``/admin/severity-audit``) and ``/api/v1/severity-audit``:
behind sign-in and CSRF like every page, the item shown without the model's severity, explanation or
posting, its texts escaped, the label recorded with the admin's name and final, and the model's
severity told only once labelled."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from bot.models import AuditItem, Finding, FindingStatus, Project, Review
from tests.support.console import Admin, bearer, console_client, sign_in
from tests.support.db import session_scope

HOSTILE = "<script>alert(1)</script>"
PAGE = "/admin/severity-audit"


def seed(engine: sa.Engine) -> None:
    """Two findings of the complete week before this one: a critical one posted, a trivial one below
    the threshold, each with hostile text."""
    when = datetime.now(UTC) - timedelta(weeks=1)
    with session_scope(engine) as session:
        project = Project(
            forge="gitlab", forge_url="http://forge.test", path=f"g/{HOSTILE}", webhook_secret="s"
        )
        session.add(project)
        session.flush()
        review = Review(project_id=project.id, mr_number=9, head_sha="a" * 40)
        session.add(review)
        session.flush()
        for n, (severity, status) in enumerate((("critical", "posted"), ("trivial", FindingStatus.BELOW))):
            session.add(
                Finding(
                    review_id=review.id,
                    path=f"{HOSTILE}.py",
                    line=n + 1,
                    severity=severity,
                    title=f"{HOSTILE} title {n}",
                    review=f"{HOSTILE} review {n}",
                    code=f"  {n + 1} +{HOSTILE}",
                    explanation=f"WHY-{severity}",
                    fingerprint=f"fp{n}",
                    model_version="base",
                    status=status,
                    created_at=when,
                )
            )


@pytest.fixture
def client(engine: sa.Engine) -> Iterator[TestClient]:
    seed(engine)
    with console_client(engine) as client:
        yield client


@pytest.fixture
def admin(client: TestClient) -> Admin:
    return sign_in(client)


def item_section(html: str) -> str:
    """The item as shown, less its form (whose buttons name every label)."""
    section = html.split('<div id="audit-item">')[1].split("</div>")[0]
    return section.split("<form")[0]


def labels(engine: sa.Engine) -> list[tuple[str | None, str | None]]:
    with Session(engine) as session:
        return [(i.label, i.auditor) for i in session.exec(select(AuditItem).order_by(AuditItem.id)).all()]


def test_the_page_and_api_need_the_admin(client: TestClient) -> None:
    page = client.get(PAGE, follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"].startswith("/admin/login?next=/admin/severity-audit")
    assert client.get("/api/v1/severity-audit/next").status_code == 401
    assert client.post("/api/v1/severity-audit/1", json={"label": "major"}).status_code == 401
    assert client.post(f"{PAGE}/1", data={"label": "major"}, follow_redirects=False).status_code == 303


def test_an_item_is_shown_blind_and_escaped_and_labelled_once(engine: sa.Engine, admin: Admin) -> None:
    html = admin.client.get(PAGE).text
    shown = item_section(html)
    number = int(re.search(r"<dd>(\d+) \(week", shown)[1])  # type: ignore[index]
    assert HOSTILE not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; title" in shown
    for hidden in ("critical", "trivial", "WHY-", "below", "posted"):
        assert hidden not in shown, hidden
    assert f'action="/admin/severity-audit/{number}"' in html

    for form in ({}, {"csrf_token": "stale"}):
        refused = admin.client.post(
            f"{PAGE}/{number}", data={"label": "major", **form}, follow_redirects=False
        )
        assert refused.status_code == 403
    assert labels(engine) == [(None, None), (None, None)]
    bad = admin.form(f"{PAGE}/{number}", {"label": "blocker"})
    assert "choose%20one%20of" in bad.headers["location"]

    done = admin.form(f"{PAGE}/{number}", {"label": "major"})
    assert done.status_code == 303
    with Session(engine) as session:
        item = session.get(AuditItem, number)
        assert item is not None
        finding = session.get(Finding, item.finding_id)
        assert finding is not None
    said = "over-rated" if finding.severity == "critical" else "under-rated"
    notice = admin.client.get(done.headers["location"]).text
    assert f"item {number}: recorded major; the model had said {finding.severity}: {said}" in notice
    again = admin.form(f"{PAGE}/{number}", {"label": "minor"})
    assert "labels%20are%20final" in again.headers["location"]
    assert sorted(labels(engine), key=str) == sorted([("major", "admin token"), (None, None)], key=str)


def test_the_api_labels_blind_too(engine: sa.Engine, client: TestClient) -> None:
    auth = bearer()
    first = client.get("/api/v1/severity-audit/next", headers=auth).json()
    assert set(first) == {"id", "week", "project", "mr_number", "path", "line", "title", "review", "code"}
    assert (
        client.post(f"/api/v1/severity-audit/{first['id']}", headers=auth, json={"label": "huge"}).status_code
        == 422
    )
    answer = client.post(
        f"/api/v1/severity-audit/{first['id']}", headers=auth, json={"label": "not_an_issue"}
    )
    assert answer.status_code == 200
    assert answer.json()["agreement"] == "not an issue"
    assert (
        client.post(
            f"/api/v1/severity-audit/{first['id']}", headers=auth, json={"label": "minor"}
        ).status_code
        == 409
    )
    assert client.post("/api/v1/severity-audit/99", headers=auth, json={"label": "minor"}).status_code == 404
    second = client.get("/api/v1/severity-audit/next", headers=auth).json()
    client.post(f"/api/v1/severity-audit/{second['id']}", headers=auth, json={"label": "skip"})
    assert client.get("/api/v1/severity-audit/next", headers=auth).json() is None
    stats = client.get("/api/v1/severity-audit/stats", headers=auth).json()
    assert (stats["labelled"], stats["labelled_this_week"], stats["waiting"]) == (2, 2, 0)
    assert (stats["agreement"]["not an issue"], stats["agreement"]["skipped"]) == (1, 1)
    listed = client.get("/api/v1/severity-audit/labelled", headers=auth).json()
    assert {row["label"] for row in listed} == {"not_an_issue", "skip"}
    assert sorted(labels(engine), key=str) == [("not_an_issue", "admin token"), ("skip", "admin token")]
