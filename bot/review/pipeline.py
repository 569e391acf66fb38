"""The review pipeline: diff → chunks → find → anchor check → rate → threshold → explain → result.

It knows nothing of forges or the database: ``review.job`` feeds it a forge's diff and posts what it
returns, ``reviewbot review`` feeds it a local git range.

Chunks are sized to the model's context: its length from the server (``/v1/models``), each prompt
counted by the server's tokenizer when it has one (else estimated), and a chunk the server still
refuses as too long is split and sent again, so no changed line goes unreviewed for length.

All calls of a stage go out at once (bounded by the LLM client's concurrency), so vLLM batches them:
every chunk's find call, then every candidate's rate call, then every finding's explain call, with
the caller's check (a newer push?) in between. A call that fails after its retries costs only its own
chunk or finding, which the result reports under ``failed``. A review's ``Limits`` (model calls, wall
time) stop it early: what it did not reach is listed under ``skipped`` with the reason.

The repository's own settings (``bot.repo_config``) come in as plain values: which files to review,
each file's instructions (shown to the find and explain prompts as a data block, and counted in the
chunk budget), and how many findings a file may get (the most severe are kept).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bot.diff import Diff, DiffLine, FileDiff, Hunk, LineKind, SkippedFile, matches_glob
from bot.llm import Answer, LLMBadAnswer, LLMClient, LLMError, LLMRejected, LLMTooLong, LLMUnavailable
from bot.models import Severity, Side, Task
from prompts import MAX_ISSUES_PER_CHUNK, ExplainAnswer, FindAnswer, RateAnswer, conversation
from prompts.answers import MAX_ANSWER_TOKENS, CandidateIssue

CHARS_PER_TOKEN = 3  # a safe under-estimate for code with Llama 3's tokenizer (about 3.5-4)
SNIPPET_RADIUS = 6  # lines of the hunk shown around a finding to the rate and explain prompts
SPLIT_OVERLAP = 2  # context lines repeated at the edges of the pieces of a split hunk
MIN_CHUNK_TOKENS = 64  # however small the context, a chunk holds a few lines (a refusal splits it further)
CALLS_PER_CHUNK = 3  # a find call, then about two to rate and explain what it found (a wave's size)
NOT_IN_REVIEW_GLOBS = "not in the repository file's review globs"
UNCHANGED = "unchanged since the last review"  # a re-review's skip reason: routine, not news

log = logging.getLogger(__name__)


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
    confidence: float | None = None  # the model's probability of its severity answer, when known


@dataclass(frozen=True)
class Failure:
    """A part of the review that failed. ``error`` in full, for the operator (logs, the review row,
    ``reviewbot review``); ``public`` in plain words for the merge request: the model server's URL
    and the model's raw output are nobody else's business, and the latter is the diff author's."""

    path: str
    error: str
    public: str
    unreachable: bool = False  # the model server was down: worth running the whole review again


def _failure(path: str, error: str, public: str, exc: LLMError) -> Failure:
    return Failure(path, error, public, unreachable=isinstance(exc, LLMUnavailable))


def plain_reason(exc: LLMError) -> str:
    """What went wrong with a model call, by its kind only, never its message."""
    if isinstance(exc, LLMUnavailable):
        return "the model server was unreachable"
    if isinstance(exc, LLMBadAnswer):
        return "the model's answer was not valid"
    if isinstance(exc, LLMTooLong):
        return "a line is longer than the model's context"
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
    below_threshold: int  # rated below the threshold: not explained, not posted (``ReviewResult.below``)
    anchors_moved: int  # pointed at a line not in the diff: moved to the nearest changed line
    file_level: int  # pointed at a line not in the diff, with no changed line to move to
    merged: int  # identical findings (same fingerprint) merged into one
    findings: int
    threshold: str
    models: dict[str, str]  # task -> served model
    stages: dict[str, StageStats]  # task -> its calls
    wall_seconds: float
    capped: int = 0  # past the repository file's max_findings_per_file (the least severe of their file)


@dataclass
class ReviewResult:
    findings: list[ReviewFinding]
    skipped: list[tuple[str, str]]  # (path, why): ignored by the diff, or left when a limit was reached
    failed: list[Failure]
    stats: ReviewStats
    stopped: str | None = None  # the limit that ended the review early, in plain words
    unfinished: frozenset[str] = frozenset()  # files not wholly reviewed (a failure or a limit)
    # Rated below the threshold, unexplained: never posted, kept for the blind audit set (a finding
    # the model under-rates is otherwise never seen).
    below: list[ReviewFinding] = field(default_factory=list)

    def severity_counts(self) -> dict[Severity, int]:
        """Findings per severity, most severe first, zeros included."""
        return {s: sum(f.severity == s for f in self.findings) for s in Severity}

    def to_json(self) -> dict[str, Any]:
        keys = ("path", "line", "side", "severity", "confidence", "title", "review", "explanation")
        return {
            "findings": [{k: asdict(f)[k] for k in keys} for f in self.findings],
            "skipped": [{"path": path, "reason": reason} for path, reason in self.skipped],
            "failed": [{"path": f.path, "error": f.error} for f in self.failed],
            "stopped": self.stopped,
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


class LimitReached(Exception):
    """The review's call limit or deadline is spent: a call was not made, or was cut off."""


@dataclass(frozen=True)
class Limits:
    """What one review may spend: model calls, and wall time counted from ``started``."""

    max_calls: int | None = None
    deadline_s: float | None = None
    started: float = field(default_factory=time.monotonic)


@dataclass
class _Budget:
    limits: Limits
    calls: int = 0
    spent: str | None = None  # why no more calls are made, once they are not

    def left(self) -> int | None:
        return None if self.limits.max_calls is None else self.limits.max_calls - self.calls

    def seconds_left(self) -> float | None:
        if self.limits.deadline_s is None:
            return None
        return self.limits.started + self.limits.deadline_s - time.monotonic()

    def take(self) -> None:
        """Count one call, or raise ``LimitReached`` when none is left."""
        seconds, left = self.seconds_left(), self.left()
        if seconds is not None and seconds <= 0:
            raise self.out_of_time()
        if left is not None and left <= 0:
            self.spent = f"review call limit reached ({self.limits.max_calls} calls)"
            raise LimitReached(self.spent)
        self.calls += 1

    def out_of_time(self) -> LimitReached:
        self.spent = f"review deadline reached ({self.limits.deadline_s:g} s)"
        return LimitReached(self.spent)

    def wave(self, pending: int) -> int:
        """How many of ``pending`` chunks to review next: all of them, unless the calls left are
        too few to rate and explain what they would find."""
        left = self.left()
        return pending if left is None else max(1, min(pending, left // CALLS_PER_CHUNK))


def split_chunk(chunk: Chunk) -> list[Chunk]:
    """Smaller chunks holding the chunk's changed lines between them, for a prompt the model's context
    cannot take: its hunks in halves, else its one hunk's lines in halves (a half with no changed
    line dropped); [] for a single line, which cannot be split."""
    if len(chunk.hunks) > 1:
        middle = len(chunk.hunks) // 2
        return [Chunk(chunk.file, chunk.hunks[:middle]), Chunk(chunk.file, chunk.hunks[middle:])]
    (hunk,) = chunk.hunks
    if len(hunk.lines) < 2:
        return []
    middle = len(hunk.lines) // 2
    halves = (_piece(hunk, hunk.lines[:middle]), _piece(hunk, hunk.lines[middle:]))
    return [Chunk(chunk.file, (half,)) for half in halves if half.changed]


def _lines(chunk: Chunk) -> str:
    first, last = chunk.hunks[0], chunk.hunks[-1]
    return f"lines {first.new_start}-{last.new_start + max(last.new_count, 1) - 1}"


Instructions = Callable[[str], Sequence[str]]  # a file's path -> the repository file's guidance for it


def no_instructions(_path: str) -> Sequence[str]:
    return ()


def joined(texts: Sequence[str]) -> str:
    """A file's instructions as one prompt value (and as a finding records them): "" for none."""
    return "\n\n".join(texts)


def _find_values(chunk: Chunk, instructions: str) -> dict[str, Any]:
    return {
        "path": chunk.file.path,
        "code": chunk.text(),
        "max_issues": MAX_ISSUES_PER_CHUNK,
        "instructions": instructions,
    }


@dataclass(frozen=True)
class _Rated:
    """A rated candidate: at or above the threshold, waiting for its explanation."""

    chunk: Chunk
    issue: CandidateIssue
    target: DiffLine | None
    note: str | None
    code: str
    severity: Severity
    confidence: float | None

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.chunk.file.path, self.target, self.issue.review)

    def finding(self, explanation: str) -> ReviewFinding:
        target = self.target
        return ReviewFinding(
            path=self.chunk.file.path,
            line=target.number if target else None,
            side=target.side if target else Side.NEW,
            severity=self.severity,
            title=self.issue.title,
            review=self.issue.review,
            explanation=explanation,
            code=self.code,
            fingerprint=self.fingerprint,
            anchor_text=target.text if target else "",
            anchor_note=self.note,
            confidence=self.confidence,
        )


@dataclass
class _Run:
    """State of one review while its calls are in flight."""

    llm: LLMClient
    models: dict[Task, str]
    threshold: Severity
    budget: _Budget
    window: int | None = None  # the find model's context length (prompt and answer), when known
    instructions: Instructions = no_instructions
    max_per_file: int | None = None  # findings a file may get, the most severe first; None: any number
    findings: list[ReviewFinding] = field(default_factory=list)
    below: list[ReviewFinding] = field(default_factory=list)  # rated below the threshold: kept, unexplained
    failed: list[Failure] = field(default_factory=list)
    cut: list[tuple[str, str]] = field(default_factory=list)  # (path, what a limit left undone)
    stages: dict[str, StageStats] = field(default_factory=lambda: {t.value: StageStats() for t in Task})
    counts: Counter[str] = field(default_factory=Counter)  # the counters of ``ReviewStats``

    async def call(self, task: Task, answer_type: type[Any], template: str, **values: Any) -> Any:
        return (await self.answer(task, answer_type, template, **values)).value

    async def answer(
        self, task: Task, answer_type: type[Any], template: str, *, logprobs: bool = False, **values: Any
    ) -> Answer[Any]:
        self.budget.take()
        try:
            async with asyncio.timeout(self.budget.seconds_left()):
                answer = await self.llm.ask(
                    conversation(template, **values),
                    answer_type,
                    self.models[task],
                    max_tokens=MAX_ANSWER_TOKENS[task],
                    logprobs=logprobs,
                )
        except TimeoutError:  # the review's deadline, not the call's own timeout (an LLMError)
            raise self.budget.out_of_time() from None
        except LLMError as exc:
            self.stages[task.value].add(exc)
            raise
        self.stages[task.value].add(answer)
        return answer

    def guidance(self, path: str) -> str:
        return joined(self.instructions(path))

    def chunk_budget(self, chunk_tokens: int, path: str) -> int:
        """``chunk_tokens``, or less when the find prompt (with ``path``'s instructions) and its answer
        would not fit the context."""
        if self.window is None:
            return chunk_tokens
        room = self.window - context_needed(0, self.guidance(path))
        return max(MIN_CHUNK_TOKENS, min(chunk_tokens, room))

    def chunks(self, diff: Diff, chunk_tokens: int) -> list[Chunk]:
        """Each file's chunks, sized to what its own instructions leave of the context."""
        return [
            chunk
            for file in diff.files
            for chunk in chunk_diff(Diff((file,), ()), self.chunk_budget(chunk_tokens, file.path))
        ]

    async def fit(self, chunk: Chunk) -> list[Chunk]:
        """``chunk``, split until each piece's find prompt fits the context by the server's own
        count; as it is when the server cannot count (a refusal splits it then)."""
        if self.window is None:
            return [chunk]
        try:
            tokens = await self.llm.count_tokens(
                self.models[Task.FIND],
                conversation("find", **_find_values(chunk, self.guidance(chunk.file.path))),
            )
        except LLMError:
            return [chunk]
        pieces = split_chunk(chunk)
        if tokens is None or tokens + MAX_ANSWER_TOKENS[Task.FIND] <= self.window or not pieces:
            return [chunk]
        return [fitted for done in await asyncio.gather(*map(self.fit, pieces)) for fitted in done]

    async def review(self, chunks: list[Chunk], between_stages: Callable[[], Awaitable[None]] | None,
                     on_chunk_done: Callable[[], None] | None) -> None:  # fmt: skip
        """Find in every chunk at once, then rate every candidate, then explain every finding; the
        check runs between stages that have work."""

        async def find(chunk: Chunk) -> list[tuple[Chunk, CandidateIssue]]:
            try:
                return await self.find(chunk)
            finally:
                if on_chunk_done is not None:
                    on_chunk_done()

        candidates = [c for found in await asyncio.gather(*map(find, chunks)) for c in found]
        if candidates and between_stages is not None:
            await between_stages()
        rated = [r for r in await asyncio.gather(*(self.rate(*c) for c in candidates)) if r]
        rated = self.cap(rated)  # no explain call for a finding the cap would drop anyway
        if rated and between_stages is not None:
            await between_stages()
        await asyncio.gather(*map(self.explain, rated))

    def cap(self, rated: list[_Rated]) -> list[_Rated]:
        """The most severe ``max_per_file`` findings of each file among ``rated`` (identical ones,
        merged later, count once); the rest counted as capped. The final cap over every wave's
        findings is ``cap_per_file``."""
        if self.max_per_file is None:
            return rated
        kept: set[int] = set()
        seen: dict[str, set[str]] = {}
        for item in sorted(rated, key=lambda r: -r.severity.rank):  # stable: the model's order within
            prints = seen.setdefault(item.chunk.file.path, set())
            if item.fingerprint in prints or len(prints) < self.max_per_file:
                prints.add(item.fingerprint)
                kept.add(id(item))
            else:
                self.counts["capped"] += 1
        return [item for item in rated if id(item) in kept]

    async def find(self, chunk: Chunk) -> list[tuple[Chunk, CandidateIssue]]:
        path = chunk.file.path
        try:
            values = _find_values(chunk, self.guidance(path))
            found: FindAnswer = await self.call(Task.FIND, FindAnswer, "find", **values)
        except LLMTooLong as exc:  # the estimate was wrong for this server: smaller pieces, never a loss
            pieces = split_chunk(chunk)
            if pieces:
                return [c for done in await asyncio.gather(*map(self.find, pieces)) for c in done]
            self._not_reviewed(chunk, exc)
            return []
        except LLMError as exc:
            self._not_reviewed(chunk, exc)
            return []
        except LimitReached as exc:
            self.cut.append((path, f"{_lines(chunk)} not reviewed: {exc}"))
            return []
        self.counts["changed_lines_reviewed"] += len(list(chunk.changed))
        self.counts["candidates"] += len(found.issues)
        return [(chunk, issue) for issue in found.issues]

    def _not_reviewed(self, chunk: Chunk, exc: LLMError) -> None:
        why = f"not reviewed ({_lines(chunk)}): "
        self.failed.append(_failure(chunk.file.path, f"{why}{exc}", f"{why}{plain_reason(exc)}", exc))

    async def rate(self, chunk: Chunk, issue: CandidateIssue) -> _Rated | None:
        path = chunk.file.path
        target, note = anchor(chunk, issue.line, Side(issue.side))
        if note:
            self.counts["anchors_moved" if target else "file_level"] += 1
        code = snippet(chunk, target)
        try:
            # The answer's probability is the finding's confidence: it ranks findings of one
            # severity against the review's comment cap.
            rated: Answer[RateAnswer] = await self.answer(
                Task.SEVERITY, RateAnswer, "rate", logprobs=True, code=code, review=issue.review
            )
        except LLMError as exc:
            public = f"a finding was not rated: {plain_reason(exc)}"
            self.failed.append(_failure(path, f"finding {issue.title!r} not rated: {exc}", public, exc))
            return None
        except LimitReached as exc:
            self.cut.append((path, f"a finding was not rated: {exc}"))
            return None
        severity = Severity(rated.value.issue_type)
        confidence = None if rated.logprob is None else round(math.exp(rated.logprob), 4)
        found = _Rated(chunk, issue, target, note, code, severity, confidence)
        if severity.rank < self.threshold.rank:
            self.counts["below_threshold"] += 1
            self.below.append(found.finding(""))
            return None
        return found

    async def explain(self, rated: _Rated) -> None:
        path, issue = rated.chunk.file.path, rated.issue
        explanation = ""  # the finding stands without its explanation
        try:
            explained: ExplainAnswer = await self.call(
                Task.EXPLANATION, ExplainAnswer, "explain",
                code=rated.code, review=issue.review, issue_type=rated.severity.value,
                instructions=self.guidance(path),
            )  # fmt: skip
            explanation = explained.explanation
        except LLMError as exc:
            public = f"a finding was not explained: {plain_reason(exc)}"
            self.failed.append(_failure(path, f"finding {issue.title!r} not explained: {exc}", public, exc))
        except LimitReached as exc:
            self.cut.append((path, f"a finding was not explained: {exc}"))
        self.findings.append(rated.finding(explanation))


def merge_identical(findings: list[ReviewFinding]) -> list[ReviewFinding]:
    """One finding per fingerprint, keeping the most severe; ordered by file, then line."""
    best: dict[str, ReviewFinding] = {}
    for finding in findings:
        kept = best.get(finding.fingerprint)
        if kept is None or finding.severity.rank > kept.severity.rank:
            best[finding.fingerprint] = finding
    return sorted(best.values(), key=lambda f: (f.path, f.line or 0, f.side.value, -f.severity.rank))


def cap_per_file(findings: list[ReviewFinding], most: int | None) -> tuple[list[ReviewFinding], int]:
    """The ``most`` most severe findings of each file (all when None), in their order; and how many
    were dropped."""
    if most is None:
        return findings, 0
    ranked = sorted(findings, key=lambda f: -f.severity.rank)  # stable: by file and line within one
    per_file: Counter[str] = Counter()
    kept: set[int] = set()
    for finding in ranked:
        if per_file[finding.path] < most:
            per_file[finding.path] += 1
            kept.add(id(finding))
    return [f for f in findings if id(f) in kept], len(findings) - len(kept)


def context_needed(chunk_tokens: int, instructions: str = "") -> int:
    """The context a find call with ``chunk_tokens`` of diff needs: the prompt's template (with a
    file's ``instructions``, if any), the chunk and the longest answer (estimated; the server's
    exact count splits what does not fit)."""
    empty = conversation("find", path="", code="", max_issues=MAX_ISSUES_PER_CHUNK, instructions=instructions)
    template = estimate_tokens("".join(str(m.get("content") or "") for m in empty))
    return template + chunk_tokens + MAX_ANSWER_TOKENS[Task.FIND]


def only_reviewed(diff: Diff, review_globs: Sequence[str]) -> Diff:
    """``diff`` with only the files matching one of ``review_globs`` left to review (every file when
    there are none); the others are skipped, with why."""
    if not review_globs:
        return diff
    keep: list[FileDiff] = []
    left: list[SkippedFile] = []
    for file in diff.files:
        if any(matches_glob(file.path, glob) for glob in review_globs):
            keep.append(file)
        else:
            left.append(SkippedFile(file.path, NOT_IN_REVIEW_GLOBS))
    return Diff(tuple(keep), diff.skipped + tuple(left))


async def _context_window(llm: LLMClient, model: str) -> int | None:
    try:
        return await llm.max_model_len(model)
    except LLMError as exc:  # the calls themselves will fail and say so, if the server is down
        log.warning("the context length of %s is not known (%s); chunks are sized by estimate", model, exc)
        return None


async def review_diff(
    diff: Diff,
    llm: LLMClient,
    models: dict[Task, str],
    *,
    threshold: Severity = Severity.TRIVIAL,
    chunk_tokens: int = 2500,
    limits: Limits | None = None,
    between_stages: Callable[[], Awaitable[None]] | None = None,
    on_chunks: Callable[[int], None] | None = None,
    on_chunk_done: Callable[[], None] | None = None,
    review_globs: Sequence[str] = (),
    instructions: Instructions = no_instructions,
    max_findings_per_file: int | None = None,
) -> ReviewResult:
    """Review every reviewable file of ``diff``; ``threshold`` drops findings below that severity.

    Within ``limits``, what is left when they are spent is listed as skipped, with why;
    ``between_stages`` runs between find, rate and explain, and whatever it raises stops the review.
    The repository file's settings: only files matching ``review_globs`` are reviewed (all when
    empty); ``instructions`` gives a file's guidance for its prompts; ``max_findings_per_file``
    keeps the most severe findings of each file.
    """
    started = time.perf_counter()
    budget = _Budget(limits or Limits())
    window = await _context_window(llm, models[Task.FIND])
    run = _Run(llm, models, threshold, budget, window, instructions=instructions,
               max_per_file=max_findings_per_file)  # fmt: skip
    diff = only_reviewed(diff, review_globs)
    chunks = run.chunks(diff, chunk_tokens)
    chunks = [fitted for done in await asyncio.gather(*map(run.fit, chunks)) for fitted in done]
    if on_chunks is not None:
        on_chunks(len(chunks))
    run.counts["changed_lines"] = sum(len(list(c.changed)) for c in chunks)
    pending = chunks
    while pending and budget.spent is None:
        size = budget.wave(len(pending))
        await run.review(pending[:size], between_stages, on_chunk_done)
        pending = pending[size:]
    for chunk in pending:  # a limit was reached before them
        run.cut.append((chunk.file.path, f"{_lines(chunk)} not reviewed: {budget.spent}"))
        if on_chunk_done is not None:
            on_chunk_done()
    findings, capped = cap_per_file(merge_identical(run.findings), max_findings_per_file)
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
        merged=len(run.findings) - len(findings) - capped,
        capped=counts["capped"] + capped,
        findings=len(findings),
        threshold=threshold.value,
        models={task.value: name for task, name in models.items()},
        stages=run.stages,
        wall_seconds=round(time.perf_counter() - started, 3),
    )
    skipped = [(s.path, s.reason) for s in diff.skipped] + sorted(run.cut)
    failed = sorted(run.failed, key=lambda f: f.path)
    unfinished = frozenset(path for path, _ in run.cut) | {f.path for f in failed}
    shown = {f.fingerprint for f in findings}  # rated at or above the threshold elsewhere: that one stands
    below = [f for f in merge_identical(run.below) if f.fingerprint not in shown]
    return ReviewResult(findings, skipped, failed, stats, budget.spent, unfinished, below)
