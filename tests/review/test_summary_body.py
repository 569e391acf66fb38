"""The summary within any body limit: long lists collapse to what fits, then a count."""

from __future__ import annotations

import re

from bot.forges.base import SUMMARY_MARKER, MergeRequest
from bot.review.pipeline import Failure, ReviewResult, ReviewStats
from bot.review.render import Outcome, summary_body

MR = MergeRequest(7, "t", "open", False, "alice", "c" * 40, "b" * 40)


def result(skipped: int, failed: int, stopped: str | None = None) -> ReviewResult:
    stats = ReviewStats(
        files=1, chunks=1, changed_lines=2, changed_lines_reviewed=2, candidates=0, below_threshold=0,
        anchors_moved=0, file_level=0, merged=0, findings=0, threshold="minor", models={},
        stages={}, wall_seconds=0.1,
    )  # fmt: skip
    return ReviewResult(
        [],
        [(f"vendor/lib{n}/{'x' * 120}.go", "ignored (vendor/**)") for n in range(skipped)],
        [
            Failure(f"src/{'y' * 120}/m{n}.py", "http://10.0.0.5 said no", "the model call failed")
            for n in range(failed)
        ],
        stats,
        stopped,
    )


def _block(body: str, title: str) -> list[str]:
    """The entries of the summary's list titled ``title`` (folded or not)."""
    at = body.index(title)
    lines = body[at:].split("\n\n", 2)[1]
    return [line.removeprefix("- ") for line in lines.splitlines()]


def test_long_lists_collapse_to_fit_a_small_limit() -> None:
    body = summary_body(
        result(1_500, 300, "review call limit reached (400 calls)"), MR, Outcome(), 6_000, "gitlab"
    )
    assert len(body) <= 6_000
    assert body.endswith(SUMMARY_MARKER)
    assert "truncated" not in body  # collapsed, not cut
    assert "The review stopped early: review call limit reached (400 calls)." in body
    assert "<details><summary>Not reviewed (1,500)</summary>" in body  # a long list is folded
    skipped = _block(body, "Not reviewed (1,500)")
    failed = _block(body, "Could not review (300)")
    assert re.fullmatch(r"and ([\d,]+) more files", skipped[-1])
    assert re.fullmatch(r"and ([\d,]+) more, see `reviewbot project reviews`", failed[-1])
    for listed, total in ((skipped, 1_500), (failed, 300)):
        left = int(re.findall(r"[\d,]+", listed[-1])[0].replace(",", ""))
        assert len(listed) - 1 + left == total
        assert 0 < len(listed) - 1 < 50  # the limit, not LISTED, decided
    assert "10.0.0.5" not in body


def test_short_lists_are_listed_whole_and_open() -> None:
    body = summary_body(result(3, 1), MR, Outcome(), 65_000, "gitlab")
    assert "Not reviewed (3):\n\n- " in body
    assert "<details>" not in body
    assert "more" not in body
    assert body.count("vendor/lib") == 3
