"""The review pipeline: diff → chunks → find → anchor check → rate → threshold → explain → result.

It knows nothing of forges or the database: ``review.job`` feeds it a forge's diff and posts what it
returns, ``reviewbot review`` feeds it a local git range.

All model calls of one review go out at once (bounded by the LLM client's concurrency), chunk by
chunk, so vLLM batches them and a slow chunk does not hold the others back. A call that fails after
its retries costs only its own chunk or finding, which the result reports under ``failed``.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from bot.diff import Diff, DiffLine, FileDiff, Hunk, LineKind
from bot.llm import Answer, LLMBadAnswer, LLMClient, LLMError, LLMRejected, LLMUnavailable
from bot.models import Severity, Side, Task
from prompts import MAX_ISSUES_PER_CHUNK, ExplainAnswer, FindAnswer, RateAnswer, conversation
from prompts.answers import MAX_ANSWER_TOKENS, CandidateIssue

CHARS_PER_TOKEN = 3  # a safe under-estimate for code with Llama 3's tokenizer (about 3.5-4)
SNIPPET_RADIUS = 6  # lines of the hunk shown around a finding to the rate and explain prompts
SPLIT_OVERLAP = 2  # context lines repeated at the edges of the pieces of a split hunk


@dataclass(frozen=True)
class Chunk:
    """Part of one file's diff that fits one find call."""

    file: FileDiff
    hunks: tuple[Hunk, ...]

    @property
    def changed(self) -> Iterator[DiffLine]:
        for hunk in self.hunks:
            yield from hunk.changed

    def text(self) -> str:
        return "\n".join(render_hunk(hunk) for hunk in self.hunks)


@dataclass
class ReviewFinding:
    """A finding of this review, before it is posted (the ``Finding`` table records it after)."""

    path: str
    line: int | None  # None: a file-level finding
    side: Side
    severity: Severity
    title: str
    review: str
    explanation: str
    code: str  # the snippet the severity was judged on
    fingerprint: str
    anchor_text: str = ""  # the text of the line it is on ("" for a file-level finding)
    anchor_note: str | None = None  # why the model's anchor was moved, if it was


@dataclass(frozen=True)
class Failure:
    """A part of the review that failed. ``error`` in full, for the operator (logs, the review row,
    ``reviewbot review``); ``public`` in plain words for the merge request: the model server's URL
    and the model's raw output are nobody else's business, and the latter is the diff author's."""

    path: str
    error: str
    public: str


def plain_reason(exc: LLMError) -> str:
    """What went wrong with a model call, by its kind only, never its message."""
    if isinstance(exc, LLMUnavailable):
        return "the model server was unreachable"
    if isinstance(exc, LLMBadAnswer):
        return "the model's answer was not valid"
    if isinstance(exc, LLMRejected):
        return "the model server refused the request"
    return "the model call failed"


@dataclass
class StageStats:
    calls: int = 0
    failed: int = 0
    seconds: float = 0.0  # summed over calls; they overlap, so this exceeds the wall time
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, answer: Answer[Any] | LLMError) -> None:
        self.calls += 1
        if isinstance(answer, LLMError):
            self.failed += 1
            return
        self.seconds += answer.seconds
        self.prompt_tokens += answer.prompt_tokens
        self.completion_tokens += answer.completion_tokens


@dataclass
class ReviewStats:
    """What a review did: sizes, where candidates went, the model calls per task, the wall time."""

    files: int
    chunks: int
    changed_lines: int
    changed_lines_reviewed: int
    candidates: int  # issues the find step proposed
    below_threshold: int  # rated below the threshold: dropped
    anchors_moved: int  # pointed at a line not in the diff: moved to the nearest changed line
    file_level: int  # pointed at a line not in the diff, with no changed line to move to
    merged: int  # identical findings (same fingerprint) merged into one
    findings: int
    threshold: str
    models: dict[str, str]  # task -> served model
    stages: dict[str, StageStats]  # task -> its calls
    wall_seconds: float


@dataclass
class ReviewResult:
    findings: list[ReviewFinding]
    skipped: list[tuple[str, str]]
    failed: list[Failure]
    stats: ReviewStats

    def severity_counts(self) -> dict[Severity, int]:
        """Findings per severity, most severe first, zeros included."""
        return {s: sum(f.severity == s for f in self.findings) for s in Severity}

    def to_json(self) -> dict[str, Any]:
        keys = ("path", "line", "side", "severity", "title", "review", "explanation")
        return {
            "findings": [{k: asdict(f)[k] for k in keys} for f in self.findings],
            "skipped": [{"path": path, "reason": reason} for path, reason in self.skipped],
            "failed": [{"path": f.path, "error": f.error} for f in self.failed],
            "stats": asdict(self.stats),
        }


def estimate_tokens(text: str) -> int:
    return len(text) // CHARS_PER_TOKEN + 1


def render_line(line: DiffLine) -> str:
    sign = {LineKind.ADDED: "+", LineKind.REMOVED: "-", LineKind.CONTEXT: " "}[line.kind]
    return f"{line.number:>6} {sign}{line.text}"


def render_hunk(hunk: Hunk) -> str:
    header = f"@@ -{hunk.old_start},{hunk.old_count} +{hunk.new_start},{hunk.new_count} @@ {hunk.section}"
    return "\n".join([header.rstrip(), *(render_line(line) for line in hunk.lines)])


def _piece(hunk: Hunk, lines: tuple[DiffLine, ...]) -> Hunk:
    old = [line.old_no for line in lines if line.old_no is not None]
    new = [line.new_no for line in lines if line.new_no is not None]
    return Hunk(
        old_start=old[0] if old else hunk.old_start,
        old_count=len(old),
        new_start=new[0] if new else hunk.new_start,
        new_count=len(new),
        section=hunk.section,
        lines=lines,
    )


def _split_hunk(hunk: Hunk, budget: int) -> list[Hunk]:
    """Pieces of a hunk, each within ``budget`` tokens (unless one line alone exceeds it), that
    together hold every changed line exactly once."""
    lines = hunk.lines
    header = estimate_tokens(render_hunk(_piece(hunk, ()))) + 1
    pieces: list[Hunk] = []
    start = 0
    while start < len(lines):
        lo = start  # lead in with the context lines just before the piece, never changed ones
        while lo > 0 and start - lo < SPLIT_OVERLAP and lines[lo - 1].kind is LineKind.CONTEXT:
            lo -= 1
        used = header + sum(estimate_tokens(render_line(line)) + 1 for line in lines[lo:start])
        end = start
        while end < len(lines):
            cost = estimate_tokens(render_line(lines[end])) + 1
            if end > start and used + cost > budget:
                break
            used += cost
            end += 1
        pieces.append(_piece(hunk, lines[lo:end]))
        start = end
    return pieces


def chunk_diff(diff: Diff, budget_tokens: int) -> list[Chunk]:
    """Pack each file's hunks into chunks of at most ``budget_tokens``; split hunks that are larger.

    Every changed line of every reviewable file lands in exactly one chunk (split pieces repeat a
    few context lines, never changed ones).
    """
    chunks: list[Chunk] = []
    for file in diff.files:
        pending: list[Hunk] = []
        used = 0
        for hunk in file.hunks:
            size = estimate_tokens(render_hunk(hunk))
            pieces = [hunk] if size <= budget_tokens else _split_hunk(hunk, budget_tokens)
            for piece in pieces:
                piece_size = estimate_tokens(render_hunk(piece))
                if pending and used + piece_size > budget_tokens:
                    chunks.append(Chunk(file, tuple(pending)))
                    pending, used = [], 0
                pending.append(piece)
                used += piece_size
        if pending:
            chunks.append(Chunk(file, tuple(pending)))
    return chunks


def anchor(chunk: Chunk, line: int, side: Side) -> tuple[DiffLine | None, str | None]:
    """The diff line a candidate points at, or the nearest changed line of the closest hunk of its
    chunk, or None (file-level); with the reason when the model's anchor was not used as given."""
    for hunk in chunk.hunks:
        for candidate in hunk.lines:
            if candidate.side == side and candidate.number == line:
                return candidate, None
    changed = list(chunk.changed)
    if not changed:
        return None, f"line {line} ({side}) is not in the diff and the chunk changes no line"
    nearest = min(changed, key=lambda c: (abs(c.number - line), c.side != side))
    return nearest, f"line {line} ({side}) is not in the diff; moved to the nearest changed line"


def snippet(chunk: Chunk, target: DiffLine | None) -> str:
    """The lines around ``target`` in its hunk, as the model saw them (whole first hunk if None)."""
    for hunk in chunk.hunks:
        if target in hunk.lines:
            at = hunk.lines.index(target)
            lines = hunk.lines[max(0, at - SNIPPET_RADIUS) : at + SNIPPET_RADIUS + 1]
            return "\n".join(render_line(line) for line in lines)
    return "\n".join(render_line(line) for line in chunk.hunks[0].lines[: 2 * SNIPPET_RADIUS + 1])


def fingerprint(path: str, target: DiffLine | None, review: str) -> str:
    """Stable across pushes that only shift line numbers: path, the anchored code, the review."""
    code = target.text.strip() if target else ""
    side = target.side.value if target else "file"
    normalized = " ".join(review.lower().split())
    return hashlib.sha256("\x00".join([path, side, code, normalized]).encode()).hexdigest()[:16]


@dataclass
class _Run:
    """State of one review while its calls are in flight."""

    llm: LLMClient
    models: dict[Task, str]
    threshold: Severity
    findings: list[ReviewFinding] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    stages: dict[str, StageStats] = field(default_factory=lambda: {t.value: StageStats() for t in Task})
    counts: Counter[str] = field(default_factory=Counter)  # the counters of ``ReviewStats``

    async def call(self, task: Task, answer_type: type[Any], template: str, **values: Any) -> Any:
        try:
            answer = await self.llm.ask(
                conversation(template, **values),
                answer_type,
                self.models[task],
                max_tokens=MAX_ANSWER_TOKENS[task],
            )
        except LLMError as exc:
            self.stages[task.value].add(exc)
            raise
        self.stages[task.value].add(answer)
        return answer.value

    async def review_chunk(self, chunk: Chunk) -> None:
        path = chunk.file.path
        changed = sum(1 for _ in chunk.changed)
        self.counts["changed_lines"] += changed
        try:
            found: FindAnswer = await self.call(
                Task.FIND, FindAnswer, "find",
                path=path, code=chunk.text(), max_issues=MAX_ISSUES_PER_CHUNK,
            )  # fmt: skip
        except LLMError as exc:
            first, last = chunk.hunks[0], chunk.hunks[-1]
            where = f"lines {first.new_start}-{last.new_start + max(last.new_count, 1) - 1}"
            why = f"not reviewed ({where}): "
            self.failed.append(Failure(path, f"{why}{exc}", f"{why}{plain_reason(exc)}"))
            return
        self.counts["changed_lines_reviewed"] += changed
        self.counts["candidates"] += len(found.issues)
        await asyncio.gather(*(self.judge(chunk, issue) for issue in found.issues))

    async def judge(self, chunk: Chunk, issue: CandidateIssue) -> None:
        path = chunk.file.path
        target, note = anchor(chunk, issue.line, Side(issue.side))
        if note:
            self.counts["anchors_moved" if target else "file_level"] += 1
        code = snippet(chunk, target)
        try:
            rated: RateAnswer = await self.call(
                Task.SEVERITY, RateAnswer, "rate", code=code, review=issue.review
            )
        except LLMError as exc:
            public = f"a finding was not rated: {plain_reason(exc)}"
            self.failed.append(Failure(path, f"finding {issue.title!r} not rated: {exc}", public))
            return
        severity = Severity(rated.issue_type)
        if severity.rank < self.threshold.rank:
            self.counts["below_threshold"] += 1
            return
        try:
            explained: ExplainAnswer = await self.call(
                Task.EXPLANATION, ExplainAnswer, "explain",
                code=code, review=issue.review, issue_type=severity.value,
            )  # fmt: skip
            explanation = explained.explanation
        except LLMError as exc:  # the finding stands without its explanation
            public = f"a finding was not explained: {plain_reason(exc)}"
            self.failed.append(Failure(path, f"finding {issue.title!r} not explained: {exc}", public))
            explanation = ""
        self.findings.append(
            ReviewFinding(
                path=path,
                line=target.number if target else None,
                side=target.side if target else Side.NEW,
                severity=severity,
                title=issue.title,
                review=issue.review,
                explanation=explanation,
                code=code,
                fingerprint=fingerprint(path, target, issue.review),
                anchor_text=target.text if target else "",
                anchor_note=note,
            )
        )


def merge_identical(findings: list[ReviewFinding]) -> list[ReviewFinding]:
    """One finding per fingerprint, keeping the most severe; ordered by file, then line."""
    best: dict[str, ReviewFinding] = {}
    for finding in findings:
        kept = best.get(finding.fingerprint)
        if kept is None or finding.severity.rank > kept.severity.rank:
            best[finding.fingerprint] = finding
    return sorted(best.values(), key=lambda f: (f.path, f.line or 0, f.side.value, -f.severity.rank))


async def review_diff(
    diff: Diff,
    llm: LLMClient,
    models: dict[Task, str],
    *,
    threshold: Severity = Severity.TRIVIAL,
    chunk_tokens: int = 2500,
    on_chunks: Callable[[int], None] | None = None,
    on_chunk_done: Callable[[], None] | None = None,
) -> ReviewResult:
    """Review every reviewable file of ``diff``; ``threshold`` drops findings below that severity."""
    started = time.perf_counter()
    chunks = chunk_diff(diff, chunk_tokens)
    if on_chunks is not None:
        on_chunks(len(chunks))
    run = _Run(llm, models, threshold)

    async def one(chunk: Chunk) -> None:
        try:
            await run.review_chunk(chunk)
        finally:
            if on_chunk_done is not None:
                on_chunk_done()

    await asyncio.gather(*(one(chunk) for chunk in chunks))
    findings = merge_identical(run.findings)
    counts = run.counts
    stats = ReviewStats(
        files=len(diff.files),
        chunks=len(chunks),
        changed_lines=counts["changed_lines"],
        changed_lines_reviewed=counts["changed_lines_reviewed"],
        candidates=counts["candidates"],
        below_threshold=counts["below_threshold"],
        anchors_moved=counts["anchors_moved"],
        file_level=counts["file_level"],
        merged=len(run.findings) - len(findings),
        findings=len(findings),
        threshold=threshold.value,
        models={task.value: name for task, name in models.items()},
        stages=run.stages,
        wall_seconds=round(time.perf_counter() - started, 3),
    )
    skipped = [(s.path, s.reason) for s in diff.skipped]
    return ReviewResult(findings, skipped, sorted(run.failed, key=lambda f: f.path), stats)
