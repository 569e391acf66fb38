"""The review job: one queued Review row → findings posted on its merge request.

Idempotent and safe to retry at any point: the forge is asked which findings the bot has already
posted (hidden fingerprints) before anything is posted, so a job that died after posting does not
post twice; findings are recorded (pending) before they are posted, so a comment always has its row;
a job for a head that is no longer the MR's head does nothing.

Stages: load the review → ask the forge for the MR (superseded?) → the repository's settings file,
read at the MR's base commit (so a merge request cannot change how it is itself reviewed), applied
within the admin's controls (``bot.repo_config.effective``) → diff, minus files unchanged since
the last review → the pipeline (find → rate → explain, within the review's call limit and deadline,
the MR asked again between stages: superseded?) → superseded again? → record the findings as pending
(a retry reuses its rows) → post the new ones → mark them posted with their comment ids (a comment
posted by an attempt that died is found by fingerprint) → resolve outdated comments, edit the
summary (unless the file turns it off), add the file's labels → record addressed signals and the
file digests (not of files left unreviewed), mark done. Each finding records the digest of the
settings in force and the instructions its prompts saw.

Errors: ``ForgeError`` and ``LLMError`` are for the queue to retry or fail; anything else is a bug
and propagates as it is.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, SQLModel, col, select

from bot import metrics
from bot.config import Settings
from bot.diff import Diff, FileDiff, SkippedFile, parse_diff
from bot.events import SignalKind
from bot.feedback.signals import record_signal
from bot.forges import ForgeFactory
from bot.forges.base import BotComment, CommitState, Forge, ForgeError, InlineComment, MergeRequest
from bot.llm import LLMClient, LLMUnavailable
from bot.models import Finding, FindingStatus, Project, Review, ReviewStatus, Severity, Side, Task
from bot.outbox import Job, stage
from bot.repo_config import MAX_ERROR_CHARS, Effective, effective, find_config
from bot.review.gate import Verdict, blocking, gate_severity, set_status
from bot.review.noise import Suppressed, cap, dismissed_findings, suppress
from bot.review.pipeline import (
    UNCHANGED,
    Limits,
    ReviewFinding,
    ReviewResult,
    joined,
    only_reviewed,
    render_hunk,
    review_diff,
)
from bot.review.render import Outcome, comment_body, settings_line, summary_body
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
            same.append(SkippedFile(file.path, UNCHANGED))
        else:
            keep.append(file)
    return Diff(tuple(keep), diff.skipped + tuple(same))


def fit_columns(row: SQLModel) -> SQLModel:
    """``row`` with each string cut to its column's length: a forge's file name or a model's title
    can be longer than any limit, and PostgreSQL refuses what SQLite would store."""
    for column in row.__table__.columns:  # type: ignore[attr-defined]
        length = getattr(column.type, "length", None)
        value = getattr(row, column.name, None)
        if isinstance(length, int) and isinstance(value, str) and len(value) > length:
            setattr(row, column.name, value[:length])
    return row


def _stored(path: str) -> str:
    """``path`` as a finding's row holds it (cut to its column), to compare with one."""
    length = Finding.__table__.c.path.type.length  # type: ignore[attr-defined]
    return path[:length]


def _set(engine: sa.Engine, review_id: int, **values: object) -> None:
    with Session(engine) as session:
        review = session.get(Review, review_id)
        assert review is not None
        for name, value in values.items():
            setattr(review, name, value)
        session.add(fit_columns(review))
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


class _MergeRequestMoved(Exception):
    """Found between the pipeline's stages: a newer head, or the MR closed (recorded as superseded)."""


def run_review_job(review_id: int, settings: Settings, engine: sa.Engine, forge_for: ForgeFactory) -> str:
    """Run one review; returns its final status. Raises ForgeError/LLMError for the queue to retry."""
    limits = Limits(settings.review_max_calls, settings.review_deadline_s)  # the clock starts now
    job = _load(engine, review_id)
    if isinstance(job, str):
        return job  # a repeated job: nothing to do
    forge = forge_for(job.project)
    mr = forge.merge_request(job.review.mr_number)
    if _superseded(engine, job.review, mr):
        return ReviewStatus.SUPERSEDED
    running = {"status": ReviewStatus.RUNNING, "started_at": datetime.now(UTC), "error": None}
    _set(engine, review_id, **running, mr_author=mr.author)  # whose signals on its findings are the author's
    if gate_severity(job.project) is not None:
        set_status(forge, mr.head_sha, Verdict(CommitState.PENDING, f"reviewing {mr.head_sha[:12]}"), None)
    final_attempt = job.review.attempts >= settings.review_max_attempts
    config = repository_settings(forge, job.project, mr, final_attempt)
    _record_config_status(engine, job.project, config)

    # Files outside the file's review globs are skipped like ignored ones: no digest, so a later
    # change of the globs reviews them.
    full = only_reviewed(parse_diff(forge.diff(mr), config.ignore_globs), config.review_globs)
    diff = unchanged_since(full, job.previous_digests)

    async def between_stages() -> None:  # the forge's client blocks: off the event loop
        now = await asyncio.to_thread(forge.merge_request, mr.number)
        if await asyncio.to_thread(_superseded, engine, job.review, now):
            raise _MergeRequestMoved

    try:
        merge_request = (job.review.project_id, job.review.mr_number)  # a canary serves some of them
        result = asyncio.run(_review(settings, engine, merge_request, diff, config, limits, between_stages))
    except _MergeRequestMoved:
        return ReviewStatus.SUPERSEDED

    unreachable = [f for f in result.failed if f.unreachable]
    if unreachable and not final_attempt:
        # The server may be restarting: the whole review again later beats one with holes. The last
        # attempt posts what it has and says what it could not review.
        raise LLMUnavailable(unreachable[0].error)

    # A push during the review makes these findings stale (and GitLab would refuse their positions):
    # the review queued for the new head will post instead.
    if _superseded(engine, job.review, forge.merge_request(mr.number)):
        return ReviewStatus.SUPERSEDED
    _post(engine, forge, mr, job, full, diff, result, config, settings)
    _finish(engine, job, result, full, diff, _add_labels(forge, mr, result, config))
    return ReviewStatus.DONE


def repository_settings(forge: Forge, project: Project, mr: MergeRequest, final_attempt: bool) -> Effective:
    """The settings in force: the project's, with the repository's file read at the MR's base commit
    where the admin allows it. A file the forge fails to read is a problem of the review's settings,
    not of the review: it is retried with the job while attempts are left, then the project's
    settings apply and the summary says why."""
    if not project.repo_config:
        return effective(project, None)
    tried: list[str] = []

    def read(path: str) -> str | None:
        tried.append(path)
        return forge.file_at(path, mr.base_sha)

    try:
        found = find_config(read)
    except ForgeError as exc:
        if exc.retryable and not final_attempt:
            raise
        problem = f"{tried[-1]} could not be read at {mr.base_sha[:12]}: {exc}"
        return replace(effective(project, None), problem=" ".join(problem.split())[:MAX_ERROR_CHARS])
    return effective(project, found)


def _record_config_status(engine: sa.Engine, project: Project, config: Effective) -> None:
    """What the last review made of the repository's file, for ``project list`` and the console."""
    with Session(engine) as session:
        row = session.get(Project, project.id)
        assert row is not None
        row.repo_config_status = config.status if project.repo_config else "off"
        row.repo_config_checked_at = datetime.now(UTC)
        session.add(fit_columns(row))
        session.commit()


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


async def _review(
    settings: Settings,
    engine: sa.Engine,
    merge_request: tuple[int, int],
    diff: Diff,
    config: Effective,
    limits: Limits,
    between_stages: Callable[[], Awaitable[None]],
) -> ReviewResult:
    async with LLMClient.student(settings) as llm:
        await load_missing_adapters(engine, llm)
        return await review_diff(
            diff,
            llm,
            served_models(settings, engine, merge_request),
            threshold=config.threshold,
            chunk_tokens=settings.review_chunk_tokens,
            limits=limits,
            between_stages=between_stages,
            instructions=config.instructions_for,
            max_findings_per_file=config.max_findings_per_file,
        )


def _inline(finding: ReviewFinding, limit: int, model: str) -> InlineComment:
    body = comment_body(finding, limit, model)
    return InlineComment(finding.fingerprint, finding.path, finding.line, finding.side, body)


@dataclass(frozen=True)
class _Held:
    """A finding recorded but not posted: suppressed (like a dismissed one) or listed (past the cap)."""

    status: FindingStatus
    like_finding_id: int | None = None
    similarity: float | None = None


def _post(
    engine: sa.Engine,
    forge: Forge,
    mr: MergeRequest,
    job: _Job,
    full: Diff,
    reviewed: Diff,
    result: ReviewResult,
    config: Effective,
    settings: Settings,
) -> None:
    """Record the findings as pending, post those not posted before (less those like a dismissed
    finding, and those past the cap: recorded, named in the summary), mark them posted with their
    comments; then resolve the outdated ones and edit the summary (unless the repository's file
    turns it off, or the project is quiet and there is nothing to say). Each body within the
    forge's limit."""
    project = job.project
    limit = body_limit(project.forge)
    existing = forge.bot_comments(mr.number)
    before = {c.fingerprint: c for c in existing if c.kind == "finding" and c.fingerprint}
    fresh = [f for f in result.findings if f.fingerprint not in before]
    dismissed = dismissed_findings(engine, project) if fresh else []
    fresh, suppressed = suppress(fresh, dismissed, settings.suppress_similarity)
    gate = gate_severity(project)
    to_post, listed = cap(fresh, project.max_comments, gate)
    held = {
        s.finding.fingerprint: _Held(FindingStatus.SUPPRESSED, s.like.finding_id, s.similarity)
        for s in suppressed
    }
    held |= {f.fingerprint: _Held(FindingStatus.LISTED) for f in listed}
    _record_pending(engine, job.review_id, result, config, held)
    model = result.stats.models[Task.SEVERITY.value]
    new = forge.post_review(mr, full, [_inline(f, limit, model) for f in to_post]) if to_post else []
    comments = {fp: (c.comment_id, c.thread_id) for fp, c in before.items()}
    comments.update({p.fingerprint: (p.comment_id, p.thread_id) for p in new})
    _mark_posted(engine, job.review_id, comments)
    resolved = _resolve_outdated(engine, forge, mr, existing, result, reviewed)
    if suppressed:
        metrics.SUPPRESSED.inc(len(suppressed))
    _set(engine, job.review_id, report=_report(result, len(new), suppressed, listed))
    if not config.summary:
        return
    unposted = {s.finding.fingerprint for s in suppressed}
    standing = replace(result, findings=[f for f in result.findings if f.fingerprint not in unposted])
    console = str(settings.console_url).rstrip("/") if settings.console_url else None
    outcome = Outcome(
        posted=len(new),
        resolved=resolved,
        suppressed=suppressed,
        listed=listed,
        cap=project.max_comments,
        gate=gate,
        blocking=_blocking(engine, project, job.review_id, gate),
        settings=settings_line(config.source, config.problem, config.refused),
        console=f"{console}/reviews/{job.review_id}" if console else None,
    )
    summary = next((c for c in existing if c.kind == "summary"), None)
    if project.quiet and summary is None and not outcome.has_news(standing):
        return
    body = summary_body(standing, mr, outcome, limit, project.forge)
    _set(engine, job.review_id, summary_comment_id=forge.upsert_summary(mr.number, body, summary))


REPORT_LISTED = 200  # skipped or failed files a review's report names at most


def _report(
    result: ReviewResult, posted: int, suppressed: list[Suppressed], listed: list[ReviewFinding]
) -> dict[str, Any]:
    """What the review did, for the console (the summary comment says the same on the forge)."""
    unposted = {s.finding.fingerprint for s in suppressed}
    standing = [f for f in result.findings if f.fingerprint not in unposted]
    return {
        "findings": {s.value: sum(f.severity == s for f in standing) for s in Severity},
        "posted": posted,
        "suppressed": len(suppressed),
        "listed": len(listed),
        "skipped": [[path, why] for path, why in result.skipped[:REPORT_LISTED]],
        "skipped_total": len(result.skipped),
        "failed": [[f.path, f.public] for f in result.failed[:REPORT_LISTED]],
        "failed_total": len(result.failed),
        "stopped": result.stopped,
        "models": result.stats.models,
    }


def _blocking(engine: sa.Engine, project: Project, review_id: int, gate: Severity | None) -> int:
    """How many of the review's posted findings fail the gate (reviewers' earlier dismissals count)."""
    if gate is None:
        return 0
    with Session(engine) as session:
        review = session.get(Review, review_id)
        assert review is not None
        return len(blocking(session, project, review, gate)[0])


def _add_labels(forge: Forge, mr: MergeRequest, result: ReviewResult, config: Effective) -> str | None:
    """Add each of the file's labels whose severity a finding of this review reaches (all of them are
    on the merge request now); idempotent, so a retry adds nothing twice. A label the forge refuses
    (the bot may not label) costs the labels only: the error, for the review's row."""
    worst = max((f.severity.rank for f in result.findings), default=None)
    wanted = [name for name, least in config.labels.items() if worst is not None and worst >= least.rank]
    if not wanted:
        return None
    try:
        forge.add_labels(mr.number, wanted)
    except ForgeError as exc:
        if exc.retryable:
            raise
        log.warning("labels %s not added to %d: %s", wanted, mr.number, exc)
        return f"labels not added: {exc}"
    return None


def _record_pending(
    engine: sa.Engine, review_id: int, result: ReviewResult, config: Effective, held: dict[str, _Held]
) -> None:
    """This review's findings as rows, in one transaction: pending, or ``held`` back (suppressed,
    listed), and those rated below the threshold (never posted: kept for the blind audit set). Rows an
    earlier attempt of the same review recorded are kept, not added again, and take this attempt's
    decision. Each records the settings in force (digest) and the instructions its file's prompts saw."""
    model = result.stats.models[Task.SEVERITY.value]
    with Session(engine) as session:
        recorded = {
            row.fingerprint: row
            for row in session.exec(select(Finding).where(Finding.review_id == review_id))
        }
        below = [(f, _Held(FindingStatus.BELOW)) for f in result.below if f.fingerprint not in recorded]
        for finding, hold in [(f, held.get(f.fingerprint)) for f in result.findings] + below:
            row = recorded.get(finding.fingerprint)
            if row is not None:
                if row.status != FindingStatus.POSTED:
                    row.status = hold.status if hold else FindingStatus.PENDING
                    row.like_finding_id = hold.like_finding_id if hold else None
                    row.similarity = hold.similarity if hold else None
                    session.add(row)
                continue
            row = Finding(
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
                model_version=model,
                status=hold.status if hold else FindingStatus.PENDING,
                settings_digest=config.digest,
                instructions=joined(config.instructions_for(finding.path)),
                confidence=finding.confidence,
                like_finding_id=hold.like_finding_id if hold else None,
                similarity=hold.similarity if hold else None,
            )
            session.add(fit_columns(row))
        session.commit()


def _mark_posted(engine: sa.Engine, review_id: int, comments: dict[str, tuple[str, str | None]]) -> None:
    """The review's rows whose comment is on the forge (``comments``, by fingerprint) are posted,
    with its ids, whichever attempt posted it; a pending row with no comment was never posted and
    is not a finding of this attempt: it goes."""
    with Session(engine) as session:
        for row in session.exec(select(Finding).where(Finding.review_id == review_id)).all():
            if row.status == FindingStatus.BELOW:
                continue  # never posted, whatever an earlier review posted with its fingerprint
            if row.fingerprint in comments:
                row.forge_comment_id, row.forge_thread_id = comments[row.fingerprint]
                row.status = FindingStatus.POSTED
                session.add(fit_columns(row))
            elif row.status == FindingStatus.PENDING:
                session.delete(row)
        session.commit()


def _finish(
    engine: sa.Engine, job: _Job, result: ReviewResult, full: Diff, reviewed: Diff, labels_error: str | None
) -> None:
    """Record the addressed findings, the file digests and the review as done, at once."""
    unfinished = result.unfinished  # failed or cut short by a limit: the next push reviews them again
    digests = {
        **job.previous_digests,
        **{f.path: file_digest(f) for f in full.files if f.path not in unfinished},
    }
    for path in unfinished:
        digests.pop(path, None)
    with Session(engine) as session:
        _mark_addressed(session, job.review, full, {f.path for f in reviewed.files})
        review = session.get(Review, job.review_id)
        assert review is not None
        review.status, review.finished_at = ReviewStatus.DONE, datetime.now(UTC)
        review.timings = {"wall_seconds": result.stats.wall_seconds}
        review.file_digests = digests
        problems = [f"{f.path}: {f.error}" for f in result.failed] + ([labels_error] if labels_error else [])
        review.error = (
            "; ".join(([f"stopped: {result.stopped}"] if result.stopped else []) + problems) or None
        )
        for failure in result.failed:  # the summary says it in plain words only
            log.warning("review %d: %s: %s", job.review_id, failure.path, failure.error)
        session.add(review)
        if gate_severity(job.project) is not None:  # the status, after the commit: its own job, retried
            stage(session, Job.GATE, review.project_id, review.mr_number)
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
    reviewed_paths = {_stored(f.path) for f in reviewed.files if f.path not in result.unfinished}
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
    files = {_stored(f.path): f for f in full.files}
    reviewed = {_stored(f.path) for f in full.files} | {_stored(s.path) for s in full.skipped}
    changed_paths = {_stored(path) for path in changed_paths}
    earlier = session.exec(
        select(Finding)
        .join(Review, col(Finding.review_id) == col(Review.id))
        .where(col(Review.project_id) == review.project_id, col(Review.mr_number) == review.mr_number)
        .where(col(Review.id) != review.id, col(Finding.anchor_text) != "")
        .where(col(Finding.status) == FindingStatus.POSTED)  # a never-posted finding has no signals
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


def _from_row(row: Finding) -> ReviewFinding:
    """A recorded finding, as the review that found it had it (less where its anchor was moved)."""
    return ReviewFinding(
        path=row.path,
        line=row.line,
        side=Side(row.side),
        severity=Severity(row.severity),
        title=row.title,
        review=row.review,
        explanation=row.explanation,
        code=row.code,
        fingerprint=row.fingerprint,
        anchor_text=row.anchor_text,
        confidence=row.confidence,
    )


def post_unsuppressed(review_id: int, engine: sa.Engine, forge_for: ForgeFactory) -> str:
    """Post the review's findings that ``reviewbot feedback unsuppress`` set pending again, while the
    merge request is open at the review's head (a comment's position is only valid there); what was
    done, in words. Safe to repeat: a finding already on the forge (by fingerprint) is not posted again."""
    with Session(engine, expire_on_commit=False) as session:
        review = session.get(Review, review_id)
        project = session.get(Project, review.project_id) if review else None
        rows = session.exec(
            select(Finding).where(Finding.review_id == review_id, Finding.status == FindingStatus.PENDING)
        ).all()
    if review is None or project is None or review.status != ReviewStatus.DONE or not rows:
        return "nothing to post"
    forge = forge_for(project)
    mr = forge.merge_request(review.mr_number)
    if mr.state != "open" or mr.head_sha != review.head_sha:
        moved = f"the merge request is {mr.state} at {mr.head_sha[:12]}"
        return f"not posted: {moved}, the review was of {review.head_sha[:12]}"
    before = {
        c.fingerprint: c for c in forge.bot_comments(mr.number) if c.kind == "finding" and c.fingerprint
    }
    limit = body_limit(project.forge)
    fresh = [row for row in rows if row.fingerprint not in before]
    comments = [_inline(_from_row(row), limit, row.model_version) for row in fresh]
    new = forge.post_review(mr, parse_diff(forge.diff(mr)), comments) if comments else []
    posted = {fp: (c.comment_id, c.thread_id) for fp, c in before.items()}
    posted.update({p.fingerprint: (p.comment_id, p.thread_id) for p in new})
    _mark_posted(engine, review_id, posted)
    return f"posted {len(new)}"
