"""The review pipeline's own logic: chunking, anchoring, merging, fingerprints (no model needed)."""

from __future__ import annotations

from pathlib import Path

from bot.diff import parse_diff
from bot.models import Severity, Side
from bot.review.localgit import diff_range
from bot.review.pipeline import (
    Chunk,
    ReviewFinding,
    ReviewResult,
    ReviewStats,
    StageStats,
    anchor,
    chunk_diff,
    estimate_tokens,
    fingerprint,
    merge_identical,
    render_hunk,
)
from tests.support.gitrepo import commit, git, init_repo

OLD = "".join(f"line {i}\n" for i in range(1, 401))


def _edited(every: int) -> str:
    return "".join(f"line {i}\n" if i % every else f"changed {i}\n" for i in range(1, 401))


def make_diff(tmp_path: Path, files: dict[str, str | bytes | None]) -> bytes:
    repo = init_repo(tmp_path / "repo", {"big.py": OLD, "small.py": "a\nb\nc\n"})
    git(repo, "checkout", "-q", "-b", "feature")
    commit(repo, files, "change")
    return diff_range(repo, "main", "HEAD")


def changed_positions(diff_files: object) -> set[tuple[str, str, int]]:
    return {
        (f.path, line.side.value, line.number)
        for f in diff_files  # type: ignore[attr-defined]
        for h in f.hunks
        for line in h.changed
    }


def test_chunks_cover_every_changed_line_once_and_respect_the_budget(tmp_path: Path) -> None:
    diff = parse_diff(make_diff(tmp_path, {"big.py": _edited(2), "small.py": "a\nB\nc\n"}))
    budget = 300
    chunks = chunk_diff(diff, budget)
    covered = [(c.file.path, line.side.value, line.number) for c in chunks for line in c.changed]
    assert len(covered) == len(set(covered))
    assert set(covered) == changed_positions(diff.files)
    assert len(chunks) > 3  # the big file was split
    for chunk in chunks:
        assert sum(estimate_tokens(render_hunk(h)) for h in chunk.hunks) <= budget


def test_one_small_file_is_one_chunk(tmp_path: Path) -> None:
    diff = parse_diff(make_diff(tmp_path, {"small.py": "a\nB\nc\nd\n"}))
    (chunk,) = chunk_diff(diff, 2500)
    assert chunk.file.path == "small.py"


def test_anchor_keeps_a_diff_line_and_moves_others(tmp_path: Path) -> None:
    diff = parse_diff(make_diff(tmp_path, {"big.py": _edited(100)}))
    chunk = Chunk(diff.files[0], diff.files[0].hunks[:1])  # the hunk around line 100
    kept, note = anchor(chunk, 100, Side.NEW)
    assert kept is not None
    assert kept.number == 100
    assert note is None
    context, note = anchor(chunk, 98, Side.NEW)  # a context line is a valid anchor too
    assert context is not None
    assert context.text == "line 98"
    assert note is None
    moved, note = anchor(chunk, 5000, Side.NEW)
    assert moved is not None
    assert moved.number == 100
    assert moved.side == Side.NEW
    assert note is not None
    assert "5000" in note


def _finding(path: str, line: int, severity: Severity, review: str) -> ReviewFinding:
    return ReviewFinding(path, line, Side.NEW, severity, "t", review, "", "", fingerprint(path, None, review))


def test_identical_findings_merge_keeping_the_most_severe() -> None:
    findings = [
        _finding("a.py", 3, Severity.MINOR, "Leaks the handle"),
        _finding("a.py", 3, Severity.MAJOR, "leaks   the handle"),
        _finding("a.py", 1, Severity.TRIVIAL, "Other"),
    ]
    merged = merge_identical(findings)
    assert [(f.line, f.severity) for f in merged] == [(1, Severity.TRIVIAL), (3, Severity.MAJOR)]


def test_fingerprint_survives_a_line_shift(tmp_path: Path) -> None:
    first = parse_diff(make_diff(tmp_path / "1", {"small.py": "a\nB\nc\n"}))
    second = parse_diff(make_diff(tmp_path / "2", {"small.py": "z\nz\na\nB\nc\n"}))
    line_1 = next(line for line in first.files[0].hunks[0].changed if line.text == "B")
    line_2 = next(line for line in second.files[0].hunks[0].changed if line.text == "B")
    assert line_1.number != line_2.number
    assert fingerprint("small.py", line_1, "Bad") == fingerprint("small.py", line_2, "bad")
    assert fingerprint("small.py", line_1, "Bad") != fingerprint("other.py", line_1, "Bad")


def test_json_shape() -> None:
    stats = ReviewStats(
        files=1, chunks=1, changed_lines=3, changed_lines_reviewed=3, candidates=1, below_threshold=0,
        anchors_moved=0, file_level=0, merged=0, findings=1, threshold="minor",
        models={"severity": "student"}, stages={"severity": StageStats(calls=1)}, wall_seconds=0.5,
    )  # fmt: skip
    result = ReviewResult([_finding("a.py", 3, Severity.MAJOR, "r")], [("x.lock", "ignored")], [], stats)
    data = result.to_json()
    assert set(data) == {"findings", "skipped", "failed", "stopped", "stats"}
    assert set(data["findings"][0]) == {
        "path",
        "line",
        "side",
        "severity",
        "confidence",
        "title",
        "review",
        "explanation",
    }
    assert data["skipped"] == [{"path": "x.lock", "reason": "ignored"}]
    assert data["stats"]["stages"]["severity"]["calls"] == 1
    assert data["stats"]["models"] == {"severity": "student"}
