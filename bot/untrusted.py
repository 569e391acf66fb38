"""Untrusted text (the model's words, file names, reviewers' words) made safe to post as the bot.

GitLab and GitHub both render CommonMark-based Markdown, and both act on more than the rendering:
GitLab runs quick actions (a line starting with ``/``) with the poster's rights, both forges notify
``@`` mentions and cross-reference ``#1``/``!1``-style references, and the bot itself recognises its
comments by HTML-comment markers. Every value that did not come from the bot's own code goes through
one of ``text`` (a paragraph), ``inline`` (one line) or ``code`` (an inline code span, for file
names) before it is put into a body, and the whole body through ``fit``. What they do:

- Markdown that could hide, link, embed or restructure (``\\ ` * _ [ ] < > & ~ | #``) is
  backslash-escaped, which CommonMark renders as the character itself: no raw HTML or HTML comment
  (so no marker), no ``[x](y)`` link or image, no code span to break out of.
- A line never starts with ``/`` (it becomes ``\\/``, shown as ``/``): no quick action, no command;
  nor with what would make it a heading, a rule or a list item.
- Mentions and references (``@all``, ``#1``, ``!1``, ``~label``, ``%milestone``, ``$1``, ``&1``,
  ``GH-1``) and autolinks (``https://``, ``www.``) get an invisible U+2060 WORD JOINER after their
  sigil: the text reads the same, but neither forge's reference or autolink pattern matches it.
  A backslash cannot do this: both forges find references in the rendered text, after escapes are gone.
- Control and bidirectional-override characters are dropped; each value is capped, visibly.
"""

from __future__ import annotations

import re

from bot.models import ForgeKind

WORD_JOINER = "\u2060"
TRUNCATED = " … (truncated)"

# The longest comment body each forge accepts, in characters.
BODY_LIMITS = {ForgeKind.GITHUB: 65_536, ForgeKind.GITLAB: 1_000_000}
# Room left in a body for the header a forge adapter puts before it (a file name, a line number).
ADAPTER_RESERVE = 1_024

TEXT_LIMIT = 5_000  # a paragraph of the model's (a review, an explanation)
INLINE_LIMIT = 300  # a title, a file name, a reason

_DROPPED = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_ESCAPED = re.compile(r"[\\`*_\[\]<>&~|#]")
_SIGIL = re.compile(r"(?<=[@#!~%$&])(?=[\w\"'])")  # a mention or a reference starts here
_SCHEME = re.compile(r"(?i)(\b[a-z][a-z0-9+.\-]*:)(?=//)")
_AUTOLINK_WORD = re.compile(r"(?i)\b(www(?=\.)|gh-(?=\d))")
_LINE_START = re.compile(r"(?m)^(?=[/=+-])")  # a quick action; a setext underline, a rule, a list
_ORDERED_ITEM = re.compile(r"(?m)^(\d{1,9})(?=[.)])")


def terminal(value: str) -> str:
    """Text from a forge, a server or the command line made safe for a terminal, on one line: no
    control characters (ANSI escapes, bidirectional overrides) to rewrite what the admin sees."""
    return " ".join(_DROPPED.sub("", value).split())


def terminal_lines(value: str) -> str:
    """Several lines of untrusted text (code) made safe for a terminal: each line's control characters
    dropped, its indentation kept."""
    return "\n".join(_DROPPED.sub("", line.replace("\t", "    ")) for line in value.splitlines())


def truncate(value: str, limit: int) -> tuple[str, bool]:
    """``value`` cut to ``limit`` characters, and whether it was cut."""
    return (value, False) if len(value) <= limit else (value[:limit], True)


def _neutralise(value: str) -> str:
    value = _ESCAPED.sub(r"\\\g<0>", value).replace("\\<!", "\\<\\!")  # no "<!--", even inert
    value = _SIGIL.sub(WORD_JOINER, value)
    value = _SCHEME.sub(rf"\1{WORD_JOINER}", value)
    value = _AUTOLINK_WORD.sub(rf"\1{WORD_JOINER}", value)
    value = _ORDERED_ITEM.sub(r"\1\\", value)
    return _LINE_START.sub(r"\\", value)


def text(value: str, limit: int = TEXT_LIMIT) -> str:
    """A paragraph of untrusted text, its line breaks kept, each line's leading blanks dropped (so no
    line is an indented code block, and no ``/`` hides behind spaces)."""
    lines = (_DROPPED.sub("", line).replace("\t", " ").strip() for line in value.splitlines())
    cut, truncated = truncate("\n".join(lines).strip(), limit)
    return _neutralise(cut) + (TRUNCATED if truncated else "")


def inline(value: str, limit: int = INLINE_LIMIT) -> str:
    """Untrusted text on one line (its whitespace runs, line breaks included, become one space)."""
    cut, truncated = truncate(" ".join(_DROPPED.sub("", value).split()), limit)
    return _neutralise(cut) + (TRUNCATED if truncated else "")


def code(value: str, limit: int = INLINE_LIMIT) -> str:
    """An inline code span (a file name) that the value cannot close: its fence is longer than any
    run of backticks inside, and it stays on one line. Forges find no mention, reference, link or
    HTML inside a code span, so only an HTML comment's opening is broken (no marker, even inert)."""
    cut, truncated = truncate(" ".join(_DROPPED.sub("", value).split()), limit)
    cut = cut.replace("<!", f"<{WORD_JOINER}!")
    fence = "`" * (max((len(run) for run in re.findall(r"`+", cut)), default=0) + 1)
    pad = " " if cut.startswith("`") or cut.endswith("`") else ""
    return f"{fence}{pad}{cut}{pad}{fence}" + (TRUNCATED if truncated else "")


def body_limit(forge: ForgeKind | str) -> int:
    """How long a body the bot composes may be on ``forge``, leaving room for the adapter's header."""
    return BODY_LIMITS[ForgeKind(forge)] - ADAPTER_RESERVE


def fit(body: str, tail: str, limit: int) -> str:
    """``body`` then ``tail`` (the bot's marker), within ``limit`` characters: past it, ``body`` is
    cut at a line break and says so; ``tail`` is always kept whole, as the last line."""
    notice = "\n\n… (truncated: longer than the forge allows)"
    room = limit - len(tail) - 2
    if len(body) > room:
        cut = body[: room - len(notice)]
        body = cut[: cut.rfind("\n")] if "\n" in cut else cut
        body += notice
    return f"{body}\n\n{tail}"
