"""The review job: one queued Review row → findings posted on its merge request.

Idempotent and safe to retry at any point: the forge is asked which findings the bot has already
posted (hidden fingerprints) before anything is posted, so a job that died after posting does not
post twice; a job for a head that is no longer the MR's head does nothing.

Stages: load the review → ask the forge for the MR (superseded?) → diff, minus files unchanged since
the last review → the pipeline → superseded again? → post new findings, resolve outdated ones, edit
the summary → record findings, addressed signals and the file digests, mark done.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlmodel import Session, col, select

from bot import metrics
from bot.config import Settings
from bot.diff import DEFAULT_IGNORE_GLOBS, Diff, FileDiff, SkippedFile, parse_diff
from bot.events import SignalKind
from bot.feedback.signals import record_signal
from bot.forges import ForgeFactory
from bot.forges.base import BotComment, Forge, InlineComment, MergeRequest, PostedComment
from bot.llm import LLMClient
from bot.models import Finding, Project, Review, ReviewStatus, Severity, Task
from bot.review.pipeline import ReviewFinding, ReviewResult, render_hunk, review_diff
from bot.review.render import comment_body, summary_body
from bot.serving import load_missing_adapters, served_models
from bot.untrusted import body_limit

log = logging.getLogger(__name__)


def file_digest(file: FileDiff) -> str:
    return hashlib.sha256("\n".join(render_hunk(h) for h in file.hunks).encode()).hexdigest()[:16]


def unchanged_since(diff: Diff, previous: dict[str, str]) -> Diff:
    """Only the files whose diff changed since the last review; the rest are skipped, with why."""
    keep, same = [], []
    for file in diff.files:
        if previous.get(file.path) == file_digest(file):
            same.append(SkippedFile(file.path, "unchanged since the last review"))
        else:
            keep.append(file)
    return Diff(tuple(keep), diff.skipped + tuple(same))


def _set(engine: sa.Engine, review_id: int, **values: object) -> None:
    with Session(engine) as session:
        review = session.get(Review, review_id)
        assert review is not None
        for name, value in values.items():
            setattr(review, name, value)
        session.add(review)
        session.commit()


def mark_failed(engine: sa.Engine, review_id: int, error: str) -> None:
    _set(engine, review_id, status=ReviewStatus.FAILED, error=error, finished_at=datetime.now(UTC))


@dataclass(frozen=True)
class _Job:
    """A review to run: its row, its project, and the file digests of the MR's last done review."""

    review: Review
    project: Project
    previous_digests: dict[str, str]

    @property
    def review_id(self) -> int:
        assert self.review.id is not None
        return self.review.id


@dataclass(frozen=True)
class _Posted:
    new: list[PostedComment]  # posted by this review
    before: dict[str, BotComment]  # posted by an earlier one, by fingerprint
    resolved: int  # earlier comments resolved as outdated


def run_review_job(review_id: int, settings: Settings, engine: sa.Engine, forge_for: ForgeFactory) -> str:
    """Run one review; returns its final status. Raises ForgeError/LLMError for the queue to retry."""
    job = _load(engine, review_id)
    if isinstance(job, str):
        return job  # a repeated job: nothing to do
    forge = forge_for(job.project)
    mr = forge.merge_request(job.review.mr_number)
    if _superseded(engine, job.review, mr):
        return ReviewStatus.SUPERSEDED
    running = {"status": ReviewStatus.RUNNING, "started_at": datetime.now(UTC), "error": None}
    _set(engine, review_id, **running, mr_author=mr.author)  # whose signals on its findings are the author's

    full = parse_diff(forge.diff(mr), job.project.ignore_globs or DEFAULT_IGNORE_GLOBS)
    diff = unchanged_since(full, job.previous_digests)
    result = asyncio.run(_review(settings, engine, diff, Severity(job.project.severity_threshold)))

    # A push during the review makes these findings stale (and GitLab would refuse their positions):
    # the review queued for the new head will post instead.
    if _superseded(engine, job.review, forge.merge_request(mr.number)):
        return ReviewStatus.SUPERSEDED
    posted = _post(engine, forge, mr, full, diff, result, body_limit(job.project.forge))
    _finish(engine, job, result, posted, full, diff)
    return ReviewStatus.DONE


def _load(engine: sa.Engine, review_id: int) -> _Job | str:
    """The job, or the status of a review that needs no run (done or superseded already)."""
    with Session(engine, expire_on_commit=False) as session:
        review = session.get(Review, review_id)
        if review is None:
            raise LookupError(f"review {review_id} does not exist")
        if review.status in (ReviewStatus.DONE, ReviewStatus.SUPERSEDED):
            return review.status
        project = session.get(Project, review.project_id)
        assert project is not None
        previous = session.exec(
            select(Review)
            .where(Review.project_id == review.project_id, Review.mr_number == review.mr_number)
            .where(Review.status == ReviewStatus.DONE, Review.id != review_id)
            .order_by(sa.desc(sa.column("finished_at")))
        ).first()
        return _Job(review, project, dict(previous.file_digests) if previous else {})


def _superseded(engine: sa.Engine, review: Review, mr: MergeRequest) -> bool:
    if mr.head_sha == review.head_sha and mr.state == "open":
        return False
    why = f"merge request is {mr.state} at {mr.head_sha[:12]}; this review was for {review.head_sha[:12]}"
    assert review.id is not None
    _set(engine, review.id, status=ReviewStatus.SUPERSEDED, error=why, finished_at=datetime.now(UTC))
    return True


async def _review(settings: Settings, engine: sa.Engine, diff: Diff, threshold: Severity) -> ReviewResult:
    async with LLMClient.student(settings) as llm:
        await load_missing_adapters(engine, llm)
        return await review_diff(
            diff,
            llm,
            served_models(settings, engine),
            threshold=threshold,
            chunk_tokens=settings.review_chunk_tokens,
        )


def _inline(finding: ReviewFinding, limit: int) -> InlineComment:
    body = comment_body(finding, limit)
    return InlineComment(finding.fingerprint, finding.path, finding.line, finding.side, body)


def _post(
    engine: sa.Engine,
    forge: Forge,
    mr: MergeRequest,
    full: Diff,
    reviewed: Diff,
    result: ReviewResult,
    limit: int,
) -> _Posted:
    """Post the findings not posted before, resolve the outdated ones, edit the summary; each body
    at most ``limit`` characters."""
    existing = forge.bot_comments(mr.number)
    before = {c.fingerprint: c for c in existing if c.kind == "finding" and c.fingerprint}
    fresh = [f for f in result.findings if f.fingerprint not in before]
    new = forge.post_review(mr, full, [_inline(f, limit) for f in fresh]) if fresh else []
    resolved = _resolve_outdated(engine, forge, mr, existing, result, reviewed)
    summary = next((c for c in existing if c.kind == "summary"), None)
    forge.upsert_summary(mr.number, summary_body(result, mr, len(new), resolved, limit), summary)
    return _Posted(new, before, resolved)


def _finish(
    engine: sa.Engine, job: _Job, result: ReviewResult, posted: _Posted, full: Diff, reviewed: Diff
) -> None:
    """Record the findings, the addressed ones, the file digests and the review as done, at once."""
    failed_paths = {f.path for f in result.failed}  # not reviewed: the next push must look at them again
    digests = {
        **job.previous_digests,
        **{f.path: file_digest(f) for f in full.files if f.path not in failed_paths},
    }
    for path in failed_paths:
        digests.pop(path, None)
    with Session(engine) as session:
        _record_findings(session, job.review_id, result, posted)
        _mark_addressed(session, job.review, full, {f.path for f in reviewed.files})
        review = session.get(Review, job.review_id)
        assert review is not None
        review.status, review.finished_at = ReviewStatus.DONE, datetime.now(UTC)
        review.timings = {"wall_seconds": result.stats.wall_seconds}
        review.file_digests = digests
        review.error = "; ".join(f"{f.path}: {f.error}" for f in result.failed) or None
        for failure in result.failed:  # the summary says it in plain words only
            log.warning("review %d: %s: %s", job.review_id, failure.path, failure.error)
        session.add(review)
        session.commit()
    metrics.REVIEW_SECONDS.observe(result.stats.wall_seconds)
    for finding in result.findings:
        metrics.FINDINGS.labels(finding.severity.value).inc()


def _resolve_outdated(
    engine: sa.Engine,
    forge: Forge,
    mr: MergeRequest,
    existing: list[BotComment],
    result: ReviewResult,
    reviewed: Diff,
) -> int:
    """Resolve the bot's open comments on re-reviewed files that this review did not find again.

    A comment's file comes from the finding recorded when it was posted; a comment the database
    does not know, or one on a file that was not reviewed again, is left alone.
    """
    current = {f.fingerprint for f in result.findings}
    reviewed_paths = {f.path for f in reviewed.files} - {f.path for f in result.failed}
    candidates = [
        c for c in existing if c.kind == "finding" and not c.resolved and c.fingerprint not in current
    ]
    with Session(engine) as session:
        ids = [c.comment_id for c in candidates]
        known = select(Finding.forge_comment_id, Finding.path).where(sa.column("forge_comment_id").in_(ids))
        paths = dict(session.exec(known).all())
    resolved = 0
    for comment in candidates:
        if paths.get(comment.comment_id) in reviewed_paths:
            forge.resolve_comment(mr.number, comment)
            resolved += 1
    return resolved


def _mark_addressed(session: Session, review: Review, full: Diff, changed_paths: set[str]) -> None:
    """Earlier findings of this MR whose line a push removed are addressed: a feedback signal of its own.

    Only files whose diff changed since the last review are looked at; a file that left the MR's
    diff altogether (its change reverted) addresses all its findings.
    """
    files = {f.path: f for f in full.files}
    reviewed = {f.path for f in full.files} | {s.path for s in full.skipped}
    earlier = session.exec(
        select(Finding)
        .join(Review, col(Finding.review_id) == col(Review.id))
        .where(col(Review.project_id) == review.project_id, col(Review.mr_number) == review.mr_number)
        .where(col(Review.id) != review.id, col(Finding.anchor_text) != "")
    ).all()
    for finding in earlier:
        file = files.get(finding.path)
        if finding.path in reviewed and finding.path not in changed_paths:
            continue  # that file's diff did not change since it was reviewed
        texts = (
            {line.text.strip() for h in file.hunks for line in h.lines if line.side == finding.side}
            if file
            else set()
        )
        if finding.anchor_text.strip() not in texts:
            assert finding.id is not None
            record_signal(session, finding.id, SignalKind.ADDRESSED, "", "", f"addressed:{finding.id}")


def _record_findings(session: Session, review_id: int, result: ReviewResult, posted: _Posted) -> None:
    comments = {p.fingerprint: (p.comment_id, p.thread_id) for p in posted.new}
    comments.update({fp: (c.comment_id, c.thread_id) for fp, c in posted.before.items()})
    model = result.stats.models[Task.SEVERITY.value]
    for finding in result.findings:
        comment_id, thread_id = comments.get(finding.fingerprint, (None, None))
        session.add(
            Finding(
                review_id=review_id,
                path=finding.path,
                line=finding.line,
                side=finding.side,
                severity=finding.severity,
                title=finding.title,
                review=finding.review,
                explanation=finding.explanation,
                code=finding.code,
                anchor_text=finding.anchor_text,
                fingerprint=finding.fingerprint,
                forge_comment_id=comment_id,
                forge_thread_id=thread_id,
                model_version=model,
            )
        )
