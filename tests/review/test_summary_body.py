"""The summary within any body limit: long lists collapse to what fits, then a count."""

from __future__ import annotations

import re

from bot.forges.base import SUMMARY_MARKER, MergeRequest
from bot.review.pipeline import Failure, ReviewResult, ReviewStats
from bot.review.render import summary_body

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


def test_long_lists_collapse_to_fit_a_small_limit() -> None:
    body = summary_body(result(1_500, 300, "review call limit reached (400 calls)"), MR, 0, 0, 6_000)
    assert len(body) <= 6_000
    assert body.endswith(SUMMARY_MARKER)
    assert "truncated" not in body  # collapsed, not cut
    assert "The review stopped early: review call limit reached (400 calls)." in body
    skipped = re.search(r"Not reviewed \(1,500\): (.*?); and ([\d,]+) more files\n", body)
    failed = re.search(
        r"Could not review \(300\): (.*?); and ([\d,]+) more, see `reviewbot project reviews`", body
    )
    assert skipped is not None
    assert failed is not None
    for listed, total in ((skipped, 1_500), (failed, 300)):
        shown = listed.group(1).split("; ")
        assert len(shown) + int(listed.group(2).replace(",", "")) == total
        assert 0 < len(shown) < 50  # the limit, not LISTED, decided
    assert "10.0.0.5" not in body


def test_short_lists_are_listed_whole() -> None:
    body = summary_body(result(3, 1), MR, 0, 0, 65_000)
    assert "Not reviewed (3): " in body
    assert "more" not in body
    assert body.count("vendor/lib") == 3
