"""The diff model: a unified diff (``git diff`` output) as files, hunks and numbered lines.

unidiff parses; this module adds decoded paths, file status, bare line texts, and sets aside (with the
reason) the files not worth reviewing.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from unidiff.errors import UnidiffParseError
from unidiff.patch import Hunk as UnidiffHunk
from unidiff.patch import PatchedFile, PatchSet

from bot.models import Side

# git's "a/" and "b/", and its mnemonic prefixes (diff.mnemonicPrefix; "1/" "2/" with --no-index)
_PREFIX = re.compile(r"[abciow12]/")
_C_QUOTES = {
    7: "\\a",
    8: "\\b",
    9: "\\t",
    10: "\\n",
    11: "\\v",
    12: "\\f",
    13: "\\r",
    34: '\\"',
    92: "\\\\",
}  # for quote_path
_C_ESCAPES = {b"a": b"\a", b"b": b"\b", b"t": b"\t", b"n": b"\n", b"v": b"\v", b"f": b"\f", b"r": b"\r"}
_GLOB_TOKENS = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}


class LineKind(StrEnum):
    ADDED = "added"
    REMOVED = "removed"
    CONTEXT = "context"


_KINDS = {"+": LineKind.ADDED, "-": LineKind.REMOVED, " ": LineKind.CONTEXT}


@dataclass(frozen=True)
class DiffLine:
    kind: LineKind
    old_no: int | None  # None for added lines
    new_no: int | None  # None for removed lines
    text: str  # without the "+/-/ " prefix and the line ending

    @property
    def side(self) -> Side:
        return Side.OLD if self.kind is LineKind.REMOVED else Side.NEW

    @property
    def number(self) -> int:
        number = self.old_no if self.kind is LineKind.REMOVED else self.new_no
        assert number is not None  # the parser numbers every line on its own side
        return number


@dataclass(frozen=True)
class Hunk:
    old_start: int
    old_count: int
    new_start: int
    new_count: int
    section: str  # the function context git prints after the second "@@", may be ""
    lines: tuple[DiffLine, ...]

    @property
    def changed(self) -> tuple[DiffLine, ...]:
        return tuple(line for line in self.lines if line.kind is not LineKind.CONTEXT)


class FileStatus(StrEnum):
    ADDED = "added"
    DELETED = "deleted"
    MODIFIED = "modified"
    RENAMED = "renamed"


@dataclass(frozen=True)
class FileDiff:
    path: str  # the new path; for a deleted file, its old path
    old_path: str | None  # None for an added file
    status: FileStatus
    hunks: tuple[Hunk, ...]
    old_mode: str | None = None  # both set only when the mode changed, e.g. "100644" -> "100755"
    new_mode: str | None = None

    def line(self, side: Side, number: int) -> DiffLine | None:
        """The diff line at that position (a context line has one on both sides), if the diff shows it."""
        for hunk in self.hunks:
            for line in hunk.lines:
                if (line.old_no if side == Side.OLD else line.new_no) == number:
                    return line
        return None


@dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str  # for people, e.g. "binary file" or "ignored by pattern '*.lock'"


@dataclass(frozen=True)
class Diff:
    files: tuple[FileDiff, ...]  # the files to review
    skipped: tuple[SkippedFile, ...]


DEFAULT_IGNORE_GLOBS: tuple[str, ...] = (
    # lock files ("*.lock" covers yarn, poetry, Cargo, composer, Gemfile, uv), vendored, generated, minified
    *("*.lock", "package-lock.json", "pnpm-lock.yaml", "go.sum"),
    *("vendor/**", "third_party/**", "node_modules/**"),
    *("*_pb2.py", "*.pb.go", "*.generated.*", "dist/**", "build/**"),
    *("*.min.js", "*.min.css", "*.map"),
)


OMISSION_PREFIX = "# reviewbot omitted\t"


def omission_note(path: str, reason: str) -> str:
    """A line a forge adapter puts before the diff for a file whose diff the forge did not send
    (too large, past a file limit), so ``parse_diff`` reports it as skipped for that reason."""
    return f"{OMISSION_PREFIX}{quote_path(path)}\t{' '.join(reason.split())}\n"


def _omissions(text: str) -> dict[str, str]:
    notes = {}
    for line in text.splitlines():
        if not line.startswith(OMISSION_PREFIX):
            break  # the notes come before the first file
        path, _, reason = line.removeprefix(OMISSION_PREFIX).partition("\t")
        notes[_unquote(path) if path.startswith('"') else path] = reason
    return notes


def parse_diff(patch: str | bytes, ignore_globs: Sequence[str] = DEFAULT_IGNORE_GLOBS) -> Diff:
    """Parse a unified diff; deleted, binary, ignored and content-less files go to ``skipped``, and
    so do the files named by ``omission_note`` lines, with the reason given there.

    Bytes are decoded as UTF-8 with replacement characters, so any input either parses or raises
    ``ValueError`` saying what is wrong with it.
    """
    text = patch.decode("utf-8", errors="replace") if isinstance(patch, bytes) else patch
    if text.partition("\n")[0].endswith("\r"):  # the whole patch went through a CRLF conversion
        text = text.replace("\r\n", "\n")
    try:
        patch_set = PatchSet(text)
    except UnidiffParseError as exc:
        raise ValueError(f"malformed diff: {exc}; pass the complete output of `git diff`") from exc
    if not patch_set and text.strip():
        raise ValueError("no file diff found: expected a unified diff such as `git diff` prints")
    omitted = _omissions(text)
    files: list[FileDiff] = []
    skipped: list[SkippedFile] = []
    for patched in patch_set:
        file = _file_diff(patched)
        reason = omitted.pop(file.path, None) or _skip_reason(file, patched.is_binary_file, ignore_globs)
        if reason is None:
            files.append(file)
        else:
            skipped.append(SkippedFile(file.path, reason))
    skipped += [SkippedFile(path, reason) for path, reason in omitted.items()]  # not in the diff at all
    return Diff(tuple(files), tuple(skipped))


def _file_diff(patched: PatchedFile) -> FileDiff:
    # "rename from/to" are exact, while unidiff splits "diff --git a/x b/y" at a guess when names hold " b/"
    old = _header_value(patched, "rename from ") or _path(patched.source_file)
    new = _header_value(patched, "rename to ") or _path(patched.target_file)
    path = new if new is not None else old
    if path is None:
        raise ValueError("malformed diff: a file with /dev/null as both its old and its new path")
    if old is None or new is None:
        status = FileStatus.ADDED if old is None else FileStatus.DELETED
    else:
        status = FileStatus.MODIFIED if old == new else FileStatus.RENAMED
    return FileDiff(
        path=path,
        old_path=old,
        status=status,
        hunks=tuple(_hunk(hunk) for hunk in patched),
        old_mode=_header_value(patched, "old mode "),
        new_mode=_header_value(patched, "new mode "),
    )


def _hunk(hunk: UnidiffHunk) -> Hunk:
    lines = tuple(  # "\\ No newline at end of file" has a line type of its own: a marker, not a line
        DiffLine(_KINDS[line.line_type], line.source_line_no, line.target_line_no, _text(line.value))
        for line in hunk
        if line.line_type in _KINDS
    )
    numbers = (hunk.source_start, hunk.source_length, hunk.target_start, hunk.target_length)
    return Hunk(*numbers, hunk.section_header, lines)


def _skip_reason(file: FileDiff, binary: bool, ignore_globs: Sequence[str]) -> str | None:
    glob = next((glob for glob in ignore_globs if matches_glob(file.path, glob)), None)
    if glob is not None:
        return f"ignored by pattern '{glob}'"
    if file.status is FileStatus.DELETED:
        return "file deleted"
    if binary:
        return "binary file"
    if file.hunks:
        return None
    if file.status is FileStatus.RENAMED:
        return "renamed without changes"
    return "mode change only" if file.old_mode else "no content changes"  # e.g. an empty new file


def _text(value: str) -> str:
    # One "\r" goes with the "\n": that is a CRLF line ending; any other "\r" is content.
    return value.removesuffix("\n").removesuffix("\r")


def _header_value(patched: PatchedFile, key: str) -> str | None:
    for line in patched.patch_info or ():
        if line.startswith(key):
            return _unquote(line[len(key) :].rstrip("\n"))
    return None


def _path(name: str) -> str | None:
    if name == "/dev/null":
        return None
    name = _unquote(name)
    return name[2:] if _PREFIX.match(name) else name


def _unquote(name: str) -> str:
    """Undo git's C-style quoting of unusual paths: ``"a/caf\\303\\251 \\"x\\".txt"``."""
    if len(name) < 2 or name[0] != '"' or name[-1] != '"':
        return name
    raw = re.sub(rb"\\([0-7]{3}|.)", _unescape, name[1:-1].encode("utf-8", errors="replace"), flags=re.DOTALL)
    return raw.decode("utf-8", errors="replace")  # git escapes each byte of a UTF-8 name on its own


def _unescape(match: re.Match[bytes]) -> bytes:
    escaped = match[1]
    return bytes([int(escaped, 8) & 0xFF]) if len(escaped) == 3 else _C_ESCAPES.get(escaped, escaped)


def matches_glob(path: str, pattern: str) -> bool:
    """Whether ``path`` ("/"-separated, relative to the repository root) matches a gitignore-like glob.

    - ``*`` and ``?`` match within one path segment; ``**`` matches across segments, and ``**/``
      also matches no directory at all; every other character matches itself.
    - A pattern without a slash matches a file or directory name at any depth: ``*.lock`` matches
      ``poetry.lock`` and ``web/yarn.lock``.
    - A pattern with a slash (a trailing one aside) is anchored at the root: ``vendor/**`` matches
      ``vendor/x/y.go`` but not ``src/vendor/y.go``; ``**/x/**`` matches under an ``x`` directory
      at any depth.
    - A pattern that matches a directory matches everything under it; a trailing slash restricts a
      pattern to directories (``build/`` matches ``build/x`` and ``src/build/x``, not a file ``build``).
    """
    return _glob_regex(pattern).fullmatch(path) is not None


@functools.cache
def _glob_regex(pattern: str) -> re.Pattern[str]:
    pieces = re.split(r"(\*\*/|\*\*|[*?])", pattern.strip("/"))
    body = "".join(_GLOB_TOKENS.get(piece) or re.escape(piece) for piece in pieces)
    head = "" if "/" in pattern.rstrip("/") else "(?:.*/)?"
    tail = "/.*" if pattern.endswith("/") else "(?:/.*)?"
    return re.compile(head + body + tail, re.DOTALL)


def quote_path(name: str) -> str:
    """A path as git writes it in a diff header: C-quoted when it holds quotes, controls or non-ASCII."""
    raw = name.encode()
    if not any(byte < 0x20 or byte >= 0x7F or byte in b'"\\' for byte in raw):
        return name
    quoted = "".join(
        _C_QUOTES.get(byte) or (chr(byte) if 0x20 <= byte < 0x7F else f"\\{byte:03o}") for byte in raw
    )
    return f'"{quoted}"'
