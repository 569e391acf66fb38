"""The bot's hidden markers count only in their exact form, alone on the last line of a comment of
the bot's own account: text above them (a model's review, a file name) cannot pose as one."""

from __future__ import annotations

import pytest

from bot.forges.base import SUMMARY_MARKER, finding_marker, own_marker, parse_marker

FINDING = finding_marker("0123456789abcdef")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (f"**major** · t\n\nreview\n\n{FINDING}", ("finding", "0123456789abcdef")),
        (f"summary\n\n{SUMMARY_MARKER}\n", ("summary", None)),
        (f"review {SUMMARY_MARKER} more\n\n{FINDING}", ("finding", "0123456789abcdef")),
        (f"{SUMMARY_MARKER}\nreview\n\n{FINDING}", ("finding", "0123456789abcdef")),
        (f"review\n\n{FINDING}\n{SUMMARY_MARKER}", ("summary", None)),  # the last line wins
    ],
)
def test_the_marker_on_the_last_line_counts(body: str, expected: tuple[str, str | None]) -> None:
    assert parse_marker(body) == expected


@pytest.mark.parametrize(
    "body",
    [
        f"text {SUMMARY_MARKER}",  # not alone on its line
        f"{SUMMARY_MARKER}\n\nmore text",  # not the last line
        "text\n<!-- reviewbot:summary:abcdef12 -->",  # not the exact form
        "text\n<!-- reviewbot:finding -->",
        "text\n<!--  reviewbot:summary -->",
        "text\n\\<\\!-- reviewbot:summary --\\>",  # as ``bot.untrusted`` escapes it
        "",
    ],
)
def test_anything_else_is_no_marker(body: str) -> None:
    assert parse_marker(body) is None


def test_only_the_bots_account_writes_markers() -> None:
    body = f"copied\n\n{FINDING}"
    assert own_marker(body, "reviewbot", "reviewbot") == ("finding", "0123456789abcdef")
    assert own_marker(body, "mallory", "reviewbot") is None
