"""The console's reviews: the recent reviews of every project or one, newest first, with what each
did (its ``Review.report``: findings by severity, posted, suppressed, listed, skipped and failed
files) and, for a failed one, the admin's full error; one review with its findings at
``/admin/reviews/{id}`` (the summary comment links there through ``REVIEWBOT_CONSOLE_URL``).

Pages and ``/api/v1/reviews`` share ``recent_reviews`` and ``review_detail``. File names, errors and
titles are untrusted: the templates only ever autoescape them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel
from sqlmodel import Session, col, select

from bot.console import Console
from bot.forges import merge_request_url
from bot.models import Finding, Project, Review, ReviewStatus

PAGE = 100  # reviews a page shows; "older" pages on by id
MAX_LIMIT = 500  # the most an API call may ask for at once
FOLDED = 5  # skipped or failed files shown folded (<details>) past this many


class ProjectChoice(BaseModel):
    id: int
    forge: str
    path: str


class FileNote(BaseModel):
    """A file a review skipped or could not review, and why."""

    path: str
    why: str


class ReviewRow(BaseModel):
    id: int
    project_id: int
    project: str
    forge: str
    mr_number: int
    mr_url: str | None  # None unless an http(s) address
    head_sha: str
    status: str
    queued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None
    findings: dict[str, int]  # by severity; empty for reviews from before reports
    posted: int | None
    suppressed: int | None
    listed: int | None
    skipped: list[FileNote]
    skipped_total: int
    failed: list[FileNote]
    failed_total: int
    stopped: str | None  # the limit that ended the review early
    models: dict[str, str]  # task -> the model that did it
    error: str | None


class ReviewList(BaseModel):
    reviews: list[ReviewRow]
    older: int | None  # pass as ``before`` for the next page; None when there is none


class FindingRow(BaseModel):
    id: int
    path: str
    line: int | None
    severity: str
    title: str
    status: str
    model_version: str
    confidence: float | None


class ReviewDetail(BaseModel):
    review: ReviewRow
    findings: list[FindingRow]


def find_project(engine: sa.Engine, project_id: int) -> Project | None:
    with Session(engine) as session:
        return session.get(Project, project_id)


def page_number(value: str, name: str, problems: list[str]) -> int | None:
    """A page's optional numeric query parameter (a select's "all" sends ""); a bad one is noted in
    ``problems`` and ignored, so the page still shows."""
    if not value.strip():
        return None
    try:
        return int(value)
    except ValueError:
        problems.append(f"{name} must be a number, not {value!r}")
        return None


def project_choices(engine: sa.Engine) -> list[ProjectChoice]:
    """Every project, for a page's project select."""
    with Session(engine) as session:
        rows = session.exec(select(Project).order_by(col(Project.path), col(Project.forge))).all()
    return [ProjectChoice(id=p.id or 0, forge=p.forge, path=p.path) for p in rows]


def recent_reviews(
    engine: sa.Engine,
    project_id: int | None = None,
    status: ReviewStatus | None = None,
    limit: int = PAGE,
    before: int | None = None,
) -> ReviewList:
    """The newest reviews (of one project, in one status; older than review ``before``), and whether
    there are older ones."""
    query = _reviews().order_by(col(Review.id).desc()).limit(limit + 1)
    if project_id is not None:
        query = query.where(col(Review.project_id) == project_id)
    if status is not None:
        query = query.where(col(Review.status) == status.value)
    if before is not None:
        query = query.where(col(Review.id) < before)
    with Session(engine) as session:
        rows = [_row(review, project) for review, project in session.exec(query).all()]
    older = rows[limit - 1].id if len(rows) > limit else None
    return ReviewList(reviews=rows[:limit], older=older)


def review_detail(engine: sa.Engine, review_id: int) -> ReviewDetail | None:
    """One review and its findings (posted or not), in the order they were found."""
    with Session(engine) as session:
        found = session.exec(_reviews().where(col(Review.id) == review_id)).first()
        if found is None:
            return None
        query = select(Finding).where(col(Finding.review_id) == review_id).order_by(col(Finding.id))
        findings = [
            FindingRow(id=f.id or 0, path=f.path, line=f.line, severity=f.severity, title=f.title,
                       status=f.status, model_version=f.model_version, confidence=f.confidence)
            for f in session.exec(query).all()
        ]  # fmt: skip
    return ReviewDetail(review=_row(*found), findings=findings)


def _reviews() -> Any:
    return select(Review, Project).join(Project, col(Review.project_id) == col(Project.id))


def _row(review: Review, project: Project) -> ReviewRow:
    report = review.report or {}
    started, finished = _aware(review.started_at), _aware(review.finished_at)
    return ReviewRow(
        id=review.id or 0, project_id=project.id or 0, project=project.path, forge=project.forge,
        mr_number=review.mr_number,
        mr_url=_web_link(merge_request_url(project.forge, project.forge_url, project.path, review.mr_number)),
        head_sha=review.head_sha, status=review.status, queued_at=_aware(review.created_at),
        started_at=started, finished_at=finished,
        duration_s=round((finished - started).total_seconds(), 1) if started and finished else None,
        findings={str(k): int(v) for k, v in (report.get("findings") or {}).items()},
        posted=report.get("posted"), suppressed=report.get("suppressed"), listed=report.get("listed"),
        skipped=_notes(report.get("skipped")), skipped_total=int(report.get("skipped_total") or 0),
        failed=_notes(report.get("failed")), failed_total=int(report.get("failed_total") or 0),
        stopped=report.get("stopped"),
        models={str(k): str(v) for k, v in (report.get("models") or {}).items()},
        error=review.error,
    )  # fmt: skip


def _web_link(url: str) -> str | None:
    """Only an http(s) address becomes a link (a forge URL is an admin's input, not a script)."""
    return url if url.startswith(("https://", "http://")) else None


def _notes(pairs: Any) -> list[FileNote]:
    return [FileNote(path=str(path), why=str(why)) for path, why in pairs or []]


def _aware(when: datetime | None) -> Any:
    return when.replace(tzinfo=UTC) if when is not None and when.tzinfo is None else when  # SQLite: naive UTC


def _status(value: str | None) -> ReviewStatus | None:
    """The status filter of a page's query; ValueError names the valid ones."""
    if not value:
        return None
    try:
        return ReviewStatus(value)
    except ValueError:
        raise ValueError(f"no review status {value!r}: one of {', '.join(ReviewStatus)}") from None


def router(console: Console) -> APIRouter:
    routes = APIRouter()
    auth, api = console.auth, [Depends(console.auth.api_actor)]

    @routes.get("/admin/reviews", include_in_schema=False)
    def reviews_page(request: Request, project: str = "", status: str = "", before: str = "") -> HTMLResponse:
        actor = auth.page_actor(request)
        problems: list[str] = []
        project_id = page_number(project, "project", problems)
        older_than = page_number(before, "before", problems)
        if project_id is not None and find_project(console.engine, project_id) is None:
            problems.append(f"no project {project_id}: showing every project's reviews")
            project_id = None
        try:
            wanted = _status(status)
        except ValueError as exc:
            wanted = None
            problems.append(str(exc))
        listed = recent_reviews(console.engine, project_id, wanted, PAGE, older_than)
        return console.page(
            request, "reviews.html", actor, projects=project_choices(console.engine), project=project_id,
            status=wanted, statuses=list(ReviewStatus), listed=listed, problems=problems, folded=FOLDED,
            before=older_than, detail=None,
        )  # fmt: skip

    @routes.get("/admin/reviews/{review_id}", include_in_schema=False)
    def review_page(request: Request, review_id: int) -> HTMLResponse:
        actor = auth.page_actor(request)
        detail = review_detail(console.engine, review_id)
        problems = [] if detail is not None else [f"no review {review_id}"]
        values = {"detail": detail, "review_id": review_id, "problems": problems, "folded": FOLDED}
        page = console.page(request, "reviews.html", actor, **values)
        page.status_code = 200 if detail is not None else 404
        return page

    @routes.get("/api/v1/reviews", tags=["reviews"], dependencies=api)
    def list_reviews(
        project: Annotated[int | None, Query(description="Only this project's (its id).")] = None,
        status: Annotated[ReviewStatus | None, Query(description="Only reviews in this status.")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="How many, newest first.")] = PAGE,
        before: Annotated[int | None, Query(description="Only reviews older than this one (its id).")] = None,
    ) -> ReviewList:
        """The recent reviews, newest first, with what each did; pass ``older`` as ``before`` for
        the next page."""
        if project is not None and find_project(console.engine, project) is None:
            raise HTTPException(404, f"no project {project}")
        return recent_reviews(console.engine, project, status, limit, before)

    @routes.get("/api/v1/reviews/{review_id}", tags=["reviews"], dependencies=api)
    def get_review(review_id: int) -> ReviewDetail:
        """One review, with its findings (posted, suppressed, listed)."""
        detail = review_detail(console.engine, review_id)
        if detail is None:
            raise HTTPException(404, f"no review {review_id}")
        return detail

    return routes
