"""``bot.untrusted``: hostile text rendered with a CommonMark renderer (markdown-it, as both forges'
Markdown is CommonMark-based) reads as what was written, and nothing in it acts: no HTML, link,
image, code span, heading or quote, no line starting with ``/``, no mention, reference or autolink."""

from __future__ import annotations

import html
import re

import pytest
from markdown_it import MarkdownIt

from bot import untrusted
from bot.models import ForgeKind

HOSTILE = [
    "/approve",
    "Looks fine.\n/merge\n  /label ~security\n\t/assign @mallory",
    "cc @all and @alice.",
    "Fixes #1, see !1, group/project#2, GH-3, ~bug, %v1, $4, &5.",
    "<!-- reviewbot:summary -->",
    "<!-- reviewbot:finding:deadbeef -->",
    "<script>alert(1)</script><img src=x onerror=alert(1)>",
    "[x](https://evil.example) ![p](https://evil.example/p.png) <https://evil.example> www.evil.example",
    "x` [click me](https://evil.example/) @all `",
    "```\n/approve\n```",
    "~~~\n/approve",
    "&#64;all &lt;b&gt;",
    "\\/approve \\[x\\](y)",
    "    /approve, indented",
    "> /approve\n# Heading\n***bold*** __init__\n---",
    "Steps:\n1. one\n2) two\n- three\n+ four\nTitle\n===",
]
WJ = untrusted.WORD_JOINER
ACTIVE_TAGS = re.compile(r"<(?!/?p>)[^>]*>")  # any element but the paragraph itself
LIVE = re.compile(r"[@#!~%$&](?=[\w\"'])|[a-z]+://|\bwww\.|\bgh-\d", re.IGNORECASE)


def rendered(markdown: str) -> str:
    return str(MarkdownIt("commonmark").render(markdown))


def visible(page: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def words(value: str) -> str:
    return " ".join(value.replace(WJ, "").split())


@pytest.mark.parametrize("hostile", HOSTILE)
def test_text_reads_as_written(hostile: str) -> None:
    assert words(visible(rendered(untrusted.text(hostile)))) == words(hostile)


@pytest.mark.parametrize("hostile", HOSTILE)
def test_text_renders_no_element(hostile: str) -> None:
    page = rendered(untrusted.text(hostile))
    assert ACTIVE_TAGS.findall(page) == [], page
    assert "<!--" not in untrusted.text(hostile)


@pytest.mark.parametrize("hostile", HOSTILE)
def test_text_has_no_line_starting_with_a_slash(hostile: str) -> None:
    assert not [line for line in untrusted.text(hostile).splitlines() if line.lstrip().startswith("/")]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_text_has_no_live_mention_reference_or_link(hostile: str) -> None:
    assert LIVE.findall(visible(rendered(untrusted.text(hostile)))) == []


@pytest.mark.parametrize("hostile", HOSTILE)
def test_inline_is_one_line_and_inert(hostile: str) -> None:
    line = untrusted.inline(hostile)
    assert "\n" not in line
    assert not line.startswith("/")
    assert ACTIVE_TAGS.findall(rendered(line)) == []
    assert LIVE.findall(visible(rendered(line))) == []


@pytest.mark.parametrize(
    "name", ["x` [click me](https://evil.example/) @all `", "``a", "a`", "dir/\n/approve.py", "a\u202eb"]
)
def test_a_file_name_cannot_leave_its_code_span(name: str) -> None:
    page = rendered(f"In {untrusted.code(name)} here")
    spans = re.findall(r"<code>(.*?)</code>", page)
    assert len(spans) == 1
    assert page.replace(f"<code>{spans[0]}</code>", "") == "<p>In  here</p>\n"
    assert html.unescape(spans[0]) == " ".join(name.replace("\u202e", "").split())


def test_code_span_holds_no_html_comment_opening() -> None:
    assert "<!--" not in untrusted.code("<!-- reviewbot:summary -->")


def test_control_and_bidi_characters_are_dropped() -> None:
    assert untrusted.text("a\u202eevil\u2066\x07b\r\nc") == "aevilb\nc"


def test_long_text_is_cut_visibly() -> None:
    cut = untrusted.text("word " * 10_000)
    assert len(cut) < untrusted.TEXT_LIMIT + 50
    assert cut.endswith("(truncated)")
    assert untrusted.inline("x" * 1000).endswith("(truncated)")
    assert untrusted.code("x" * 1000).endswith("(truncated)")


def test_fit_keeps_the_marker_as_the_last_line_within_the_limit() -> None:
    body = "\n".join(f"line {i}" for i in range(100_000))
    fitted = untrusted.fit(body, "<!-- reviewbot:summary -->", untrusted.body_limit("github"))
    assert len(fitted) <= untrusted.BODY_LIMITS[ForgeKind.GITHUB]
    assert fitted.splitlines()[-1] == "<!-- reviewbot:summary -->"
    assert "truncated" in fitted
    assert untrusted.fit("short", "tail", 100) == "short\n\ntail"
