"""The diff model, checked against real ``git diff`` output and hand-written special cases."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.diff import (
    DEFAULT_IGNORE_GLOBS,
    Diff,
    DiffLine,
    FileDiff,
    FileStatus,
    Hunk,
    LineKind,
    SkippedFile,
    matches_glob,
    parse_diff,
)
from bot.models import Side

GIT_ENV = {
    **os.environ,
    "GIT_CONFIG_NOSYSTEM": "1",  # no user or system settings (autocrlf, diff.external, ...)
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}
PROPERTY = settings(max_examples=60, deadline=None)  # each example runs git a few times


class Repo:
    """A throwaway git repository: write the old files, commit, change them, commit, diff."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.git("init", "-q")

    def git(self, *args: str) -> bytes:
        done = subprocess.run(["git", *args], cwd=self.root, env=GIT_ENV, capture_output=True, check=True)
        return done.stdout

    def write(self, files: Mapping[str, bytes | None]) -> None:
        """Write each file, or delete it where its content is None."""
        for name, data in files.items():
            path = self.root / name
            if data is None:
                path.unlink()
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)

    def commit(self) -> None:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", "change")

    def diff(self, *options: str) -> bytes:
        return self.git("diff", "--no-color", "--no-ext-diff", *options, "HEAD~1", "HEAD")

    def show(self, revision: str, path: str) -> bytes:
        return self.git("show", f"{revision}:{path}")


def file_lines(data: bytes) -> list[str]:
    """A file's lines as ``DiffLine.text`` has them: decoded as the diff is, without line endings."""
    lines = data.decode("utf-8", errors="replace").split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def apply_hunks(old: list[str], file: FileDiff) -> list[str]:
    """The new file rebuilt from the old one and the hunks, checking each line the hunks take from it."""
    new: list[str] = []
    position = 0  # index into old of the next line not yet copied or removed
    for hunk in file.hunks:
        start = hunk.old_start if hunk.old_count == 0 else hunk.old_start - 1  # -5,0: insert after line 5
        assert start >= position, "hunks out of order or overlapping"
        new += old[position:start]
        position = start
        for line in hunk.lines:
            if line.kind is not LineKind.ADDED:
                assert (line.old_no, line.text) == (position + 1, old[position])
                position += 1
            if line.kind is not LineKind.REMOVED:
                new.append(line.text)
    return new + old[position:]


def check_file(file: FileDiff, old: bytes, new: bytes) -> None:
    """Every line's number points at its text, the header counts hold, and the hunks turn old into new."""
    old_lines, new_lines = file_lines(old), file_lines(new)
    for hunk in file.hunks:
        assert hunk.old_count == sum(line.kind is not LineKind.ADDED for line in hunk.lines)
        assert hunk.new_count == sum(line.kind is not LineKind.REMOVED for line in hunk.lines)
        assert hunk.changed == tuple(line for line in hunk.lines if line.kind is not LineKind.CONTEXT)
        for line in hunk.lines:
            if line.kind is LineKind.ADDED:
                assert line.old_no is None
            else:
                assert line.old_no is not None
                assert old_lines[line.old_no - 1] == line.text
            if line.kind is LineKind.REMOVED:
                assert line.new_no is None
            else:
                assert line.new_no is not None
                assert new_lines[line.new_no - 1] == line.text
            assert file.line(line.side, line.number) == line
    assert apply_hunks(old_lines, file) == new_lines
    assert file.line(Side.NEW, len(new_lines) + 1) is None


# Short lines from a small alphabet, so that edits overlap and lines repeat; with CR at the end (CRLF
# line endings) and inside, non-UTF-8 bytes, and texts that look like diff syntax.
LINES = st.sampled_from(
    [
        *(b"a", b"b", b"c", b"", b"  a", b"\tb"),
        *(b"a\r", b"b\r", b"x\ry", b"\x0c"),
        *(b"caf\xc3\xa9", b"\xff\xfe", b"\xe9t\xe9"),
        *(b"-- a", b"++ b", b"@@ -1 +1 @@", b"\\ No newline at end of file", b"diff --git a/x b/x"),
    ]
)


@st.composite
def contents(draw: st.DrawFn) -> bytes:
    """A text file's bytes: maybe empty, maybe CRLF throughout, maybe without a final newline."""
    lines = draw(st.lists(LINES, max_size=12))
    newline = draw(st.sampled_from([b"\n", b"\r\n"]))
    return newline.join(lines) + (newline if lines and draw(st.booleans()) else b"")


VERSIONS = st.one_of(st.none(), contents())  # None: the file does not exist in that commit


@PROPERTY
@given(
    files=st.lists(st.tuples(VERSIONS, VERSIONS), min_size=1, max_size=3),
    context=st.sampled_from([0, 1, 3]),
    algorithm=st.sampled_from(["myers", "histogram"]),
)
def test_parse_agrees_with_real_git_diff(
    files: list[tuple[bytes | None, bytes | None]], context: int, algorithm: str
) -> None:
    old = {f"f{index}.txt": before for index, (before, _) in enumerate(files)}
    new = {f"f{index}.txt": after for index, (_, after) in enumerate(files)}
    with tempfile.TemporaryDirectory() as root:
        repo = Repo(Path(root))
        repo.write({name: data for name, data in old.items() if data is not None})
        repo.commit()
        repo.write({name: data for name, data in new.items() if data is not None or old[name] is not None})
        repo.commit()
        patch = repo.diff(f"-U{context}", f"--diff-algorithm={algorithm}", "--no-renames")
    diff = parse_diff(patch)

    reviewed = {file.path: file for file in diff.files}
    skipped = {file.path: file.reason for file in diff.skipped}
    changed = {name for name in old if old[name] != new[name]}
    assert reviewed.keys() | skipped.keys() == changed
    assert len(diff.files) + len(diff.skipped) == len(changed)
    for name in changed:
        before, after = old[name], new[name]
        if after is None:
            assert skipped[name] == "file deleted"
        elif before is None and after == b"":
            assert skipped[name] == "no content changes"
        else:
            file = reviewed[name]
            assert file.status is (FileStatus.ADDED if before is None else FileStatus.MODIFIED)
            assert file.old_path == (None if before is None else name)
            check_file(file, before or b"", after)
    # The same patch as text, and after a CRLF conversion of the whole patch, parses the same.
    assert parse_diff(patch.decode("utf-8", errors="replace")) == diff
    assert parse_diff(patch.replace(b"\n", b"\r\n")) == diff


def test_every_kind_of_change_in_one_real_diff(tmp_path: Path) -> None:
    body = b"".join(b"line %d\n" % number for number in range(1, 21))
    repo = Repo(tmp_path)
    repo.write(
        {
            "src/app.py": b"def main():\n    return 1\n",
            "src/old_name.py": body,
            "docs/same.md": b"unchanged\n" * 5,
            "gone.txt": b"bye\n",
            "logo.png": b"\x89PNG\x00\x01",
            "run.sh": b"echo hi\n",
            "tool.sh": b"echo a\n",
            "poetry.lock": b"[[package]]\n",
        }
    )
    repo.commit()
    repo.git("mv", "src/old_name.py", "src/new_name.py")
    repo.git("mv", "docs/same.md", "docs/moved.md")
    repo.write(
        {
            "src/app.py": b"def main():\n    return 2\n",
            "src/new_name.py": body.replace(b"line 7\n", b"line seven\n"),
            "gone.txt": None,
            "logo.png": b"\x89PNG\x00\x02",
            "poetry.lock": b"[[package]]\nname = 'x'\n",
            "added.py": b"print('new')\n",
            "empty.txt": b"",
            "tool.sh": b"echo b\n",
        }
    )
    (tmp_path / "run.sh").chmod(0o755)
    (tmp_path / "tool.sh").chmod(0o755)
    repo.commit()
    patch = repo.diff("-M")
    diff = parse_diff(patch)

    assert {(file.path, file.old_path, file.status, file.old_mode, file.new_mode) for file in diff.files} == {
        ("src/app.py", "src/app.py", FileStatus.MODIFIED, None, None),
        ("src/new_name.py", "src/old_name.py", FileStatus.RENAMED, None, None),
        ("added.py", None, FileStatus.ADDED, None, None),
        ("tool.sh", "tool.sh", FileStatus.MODIFIED, "100644", "100755"),
    }
    assert set(diff.skipped) == {
        SkippedFile("docs/moved.md", "renamed without changes"),
        SkippedFile("gone.txt", "file deleted"),
        SkippedFile("logo.png", "binary file"),
        SkippedFile("run.sh", "mode change only"),
        SkippedFile("poetry.lock", "ignored by pattern '*.lock'"),
        SkippedFile("empty.txt", "no content changes"),
    }
    for file in diff.files:
        old = b"" if file.old_path is None else repo.show("HEAD~1", file.old_path)
        check_file(file, old, repo.show("HEAD", file.path))
    renamed = next(file for file in diff.files if file.status is FileStatus.RENAMED)
    assert [(line.kind, line.number, line.text) for line in renamed.hunks[0].changed] == [
        (LineKind.REMOVED, 7, "line 7"),
        (LineKind.ADDED, 7, "line seven"),
    ]
    # "GIT binary patch" instead of "Binary files ... differ", and a CRLF-converted patch: same model.
    assert parse_diff(repo.diff("-M", "--binary")) == diff
    assert parse_diff(patch.replace(b"\n", b"\r\n")) == diff
    # Without ignore globs the lock file is reviewed.
    assert "poetry.lock" in {file.path for file in parse_diff(patch, ignore_globs=()).files}


@pytest.mark.parametrize("quote_path", ["true", "false"])
def test_paths_as_git_prints_them(tmp_path: Path, quote_path: str) -> None:
    names = ["sp ace/café.txt", "tab\there.txt", 'quo"te.txt', "back\\slash.txt", "日本/語.py"]
    repo = Repo(tmp_path)
    repo.write(dict.fromkeys(names, b"old\n") | {"notes.txt": b"notes\n"})
    repo.commit()
    (tmp_path / "plan b").mkdir()
    repo.git("mv", "notes.txt", "plan b/notes é.txt")  # " b/" inside a name: the header alone is ambiguous
    repo.write(dict.fromkeys(names, b"new\n"))
    repo.commit()
    repo.git("config", "core.quotePath", quote_path)
    diff = parse_diff(repo.diff("-M"))

    assert sorted((file.path, file.old_path) for file in diff.files) == sorted((name, name) for name in names)
    assert diff.skipped == (SkippedFile("plan b/notes é.txt", "renamed without changes"),)


def patch_of(*lines: str) -> str:
    return "".join(line + "\n" for line in lines)


MODIFIED = patch_of(
    "diff --git a/src/app.py b/src/app.py",
    "index 1111111..2222222 100644",
    "--- a/src/app.py",
    "+++ b/src/app.py",
    "@@ -10,3 +10,4 @@ def main():",
    "     x = 1",
    "-    y = 2",
    "+    y = 3",
    "+    z = 4",
    "     return x",
    "@@ -40 +41,0 @@ class App:",
    "-    pass",
)


def test_model_of_a_modified_file() -> None:
    context_line = DiffLine(LineKind.CONTEXT, 10, 10, "    x = 1")
    removed = DiffLine(LineKind.REMOVED, 11, None, "    y = 2")
    first = Hunk(
        10,
        3,
        10,
        4,
        "def main():",
        (
            context_line,
            removed,
            DiffLine(LineKind.ADDED, None, 11, "    y = 3"),
            DiffLine(LineKind.ADDED, None, 12, "    z = 4"),
            DiffLine(LineKind.CONTEXT, 12, 13, "    return x"),
        ),
    )
    second = Hunk(40, 1, 41, 0, "class App:", (DiffLine(LineKind.REMOVED, 40, None, "    pass"),))
    file = FileDiff("src/app.py", "src/app.py", FileStatus.MODIFIED, (first, second))
    assert parse_diff(MODIFIED) == Diff((file,), ())

    assert (removed.side, removed.number) == (Side.OLD, 11)
    assert (context_line.side, context_line.number) == (Side.NEW, 10)
    assert first.changed == first.lines[1:4]
    assert file.line(Side.NEW, 12) == first.lines[3]
    assert file.line(Side.OLD, 11) == removed
    assert file.line(Side.OLD, 12) == first.lines[4]  # a context line, found by its old number too
    assert file.line(Side.OLD, 40) == second.lines[0]
    assert file.line(Side.NEW, 14) is None
    assert file.line(Side.OLD, 13) is None


def test_no_newline_marker_is_not_a_line() -> None:
    patch = patch_of(
        "--- a/x.txt",
        "+++ b/x.txt",
        "@@ -1,2 +1,2 @@",
        " keep",
        "-old",
        "\\ No newline at end of file",
        "+new",
        "\\ No newline at end of file",
    )
    (file,) = parse_diff(patch).files
    assert file.hunks[0].lines == (
        DiffLine(LineKind.CONTEXT, 1, 1, "keep"),
        DiffLine(LineKind.REMOVED, 2, None, "old"),
        DiffLine(LineKind.ADDED, None, 2, "new"),
    )


def test_crlf_line_endings_are_not_part_of_the_text() -> None:
    patch = patch_of("--- a/x.txt", "+++ b/x.txt", "@@ -1,2 +1,2 @@", " one\r", "-t\rwo\r", "+three\r\r")
    (file,) = parse_diff(patch).files
    assert [line.text for line in file.hunks[0].lines] == ["one", "t\rwo", "three\r"]


def test_a_patch_with_crlf_line_endings_throughout() -> None:
    patch = patch_of(
        "diff --git a/new.sh b/new.sh",
        "new file mode 100755",
        "index 0000000..1111111",
        "--- /dev/null",
        "+++ b/new.sh",
        "@@ -0,0 +1 @@",
        "+echo hi",
        "\\ No newline at end of file",
        "diff --git a/run.sh b/run.sh",
        "old mode 100644",
        "new mode 100755",
    )
    crlf = parse_diff(patch.replace("\n", "\r\n").encode())
    assert crlf == parse_diff(patch)
    assert crlf.files == (
        FileDiff(
            "new.sh",
            None,
            FileStatus.ADDED,
            (Hunk(0, 0, 1, 1, "", (DiffLine(LineKind.ADDED, None, 1, "echo hi"),)),),
        ),
    )
    assert crlf.skipped == (SkippedFile("run.sh", "mode change only"),)


def test_non_utf8_bytes_become_replacement_characters() -> None:
    patch = (
        b'diff --git "a/l\\351gacy.txt" "b/l\\351gacy.txt"\n'
        b"index 1111111..2222222 100644\n"
        b'--- "a/l\\351gacy.txt"\n'
        b'+++ "b/l\\351gacy.txt"\n'
        b"@@ -1 +1 @@\n"
        b"-caf\xe9\n"
        b"+caf\xc3\xa9 \xff\n"
    )
    (file,) = parse_diff(patch).files
    assert file.path == "l\ufffdgacy.txt"
    assert [line.text for line in file.hunks[0].lines] == ["caf\ufffd", "café \ufffd"]


def test_quoted_path_escapes() -> None:
    header = '"a/x \\"y\\"\\\\z\\t\\303\\251.txt" "b/x \\"y\\"\\\\z\\t\\303\\251.txt"'
    diff = parse_diff(patch_of(f"diff --git {header}", "old mode 100644", "new mode 100755"))
    assert diff.skipped == (SkippedFile('x "y"\\z\té.txt', "mode change only"),)


@pytest.mark.parametrize("patch", ["", b"", "\n", b"  \n\n"])
def test_empty_diff(patch: str | bytes) -> None:
    assert parse_diff(patch) == Diff((), ())


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (
            patch_of("--- a/x", "+++ b/x", "@@ -1,3 +1,3 @@", " a"),
            "malformed diff: Hunk is shorter than expected",
        ),
        (
            patch_of("--- a/x", "+++ b/x", "@@ -1 +1 @@", "-a", "-b"),
            "malformed diff: Hunk is longer than expected",
        ),
        (patch_of("@@ -1 +1 @@", "-a", "+b"), "malformed diff: Unexpected hunk found"),
        (patch_of("diff --git a/x b/x", "--- a/x", "+++ b/y"), "malformed diff: Target without source"),
        (patch_of("--- /dev/null", "+++ /dev/null", "@@ -0,0 +0,0 @@"), "/dev/null as both"),
        ("<html>502 Bad Gateway</html>\n", "no file diff found"),
    ],
)
def test_malformed_patch_raises_value_error(patch: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_diff(patch)


FRAGMENTS = st.sampled_from(
    [
        *("diff --git a/x b/x", 'diff --git "a/x y" "b/x\\303"', "--- a/x", "+++ b/x", "+++ b/y"),
        *("--- /dev/null", "+++ /dev/null", "new file mode 100644", "deleted file mode 100644"),
        *("old mode 100644", "new mode 100755", "rename from x", 'rename to "y\\777"', "index 1..2 100644"),
        *("@@ -1 +1 @@", "@@ -1,2 +0,0 @@", "@@ -0,0 +1 @@ def f():", "+a", "-a", " a", "", "\r"),
        *("\\ No newline at end of file", "Binary files a/x and b/x differ", "GIT binary patch", "literal 0"),
    ]
)


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(st.one_of(FRAGMENTS, st.text(max_size=6)), max_size=25), noise=st.binary(max_size=8))
def test_any_input_parses_or_raises_value_error(lines: list[str], noise: bytes) -> None:
    text = "\n".join(lines)
    for patch in (text, text.encode("utf-8", errors="surrogatepass") + noise):
        try:
            diff = parse_diff(patch)
        except ValueError:
            continue
        assert all(file.path is not None for file in diff.files)


@pytest.mark.parametrize(
    ("path", "pattern", "expected"),
    [
        ("poetry.lock", "*.lock", True),
        ("web/deep/yarn.lock", "*.lock", True),
        ("lock", "*.lock", False),
        ("x.lock/readme.md", "*.lock", True),  # a matching directory matches what is under it
        ("vendor/github.com/x/y.go", "vendor/**", True),
        ("src/vendor/y.go", "vendor/**", False),
        ("vendor", "vendor/**", False),
        ("x/b.py", "**/x/**", True),
        ("a/b/x/c/d.py", "**/x/**", True),
        ("ax/b.py", "**/x/**", False),
        ("src/c.py", "src/**/c.py", True),
        ("src/a/b/c.py", "src/**/c.py", True),
        ("docs/a.md", "docs/*.md", True),
        ("docs/sub/a.md", "docs/*.md", False),
        ("src/x.py", "/src/*.py", True),
        ("lib/src/x.py", "/src/*.py", False),
        ("a/node_modules/b/c.js", "node_modules", True),
        ("build/x.o", "build/", True),
        ("src/build/x.o", "build/", True),
        ("build", "build/", False),
        ("a.py", "?.py", True),
        ("ab.py", "?.py", False),
        ("a+b(1).py", "a+b(1).py", True),
        ("aab1.py", "a+b(1).py", False),
    ],
)
def test_matches_glob(path: str, pattern: str, expected: bool) -> None:
    assert matches_glob(path, pattern) is expected


@pytest.mark.parametrize(
    ("path", "ignored"),
    [
        ("yarn.lock", True),
        ("web/package-lock.json", True),
        ("pnpm-lock.yaml", True),
        ("go.sum", True),
        ("rust/Cargo.lock", True),
        ("vendor/github.com/x/y.go", True),
        ("third_party/zlib/zlib.h", True),
        ("node_modules/left-pad/index.js", True),
        ("proto/api_pb2.py", True),
        ("api/api.pb.go", True),
        ("src/client.generated.ts", True),
        ("dist/app.js", True),
        ("build/lib/x.py", True),
        ("static/app.min.js", True),
        ("static/app.min.css", True),
        ("static/app.js.map", True),
        ("src/main.py", False),
        ("src/vendor.py", False),
        ("docs/build.md", False),
        ("src/dist/helpers.py", False),
    ],
)
def test_default_ignore_globs(path: str, ignored: bool) -> None:
    assert any(matches_glob(path, pattern) for pattern in DEFAULT_IGNORE_GLOBS) is ignored


@given(st.text(min_size=1, max_size=30).filter(lambda s: "\x00" not in s))
def test_quote_path_is_what_the_parser_unquotes(name: str) -> None:
    from bot.diff import _unquote, quote_path

    quoted = quote_path(name)
    assert (_unquote(quoted) if quoted.startswith('"') else quoted) == name


def test_omission_notes_give_the_skip_reason() -> None:
    from bot.diff import omission_note

    patch = (
        omission_note("data/big\tfile é.json", "the forge shows no diff for it (too large)")
        + omission_note("(12 more files)", "the forge lists only 3000 files")
        + 'diff --git "a/data/big\\tfile \\303\\251.json" "b/data/big\\tfile \\303\\251.json"\n'
        + "diff --git a/app.py b/app.py\n--- a/app.py\n+++ b/app.py\n@@ -1 +1 @@\n-a\n+b\n"
    )
    diff = parse_diff(patch)
    assert [f.path for f in diff.files] == ["app.py"]
    assert {(s.path, s.reason) for s in diff.skipped} == {
        ("data/big\tfile é.json", "the forge shows no diff for it (too large)"),
        ("(12 more files)", "the forge lists only 3000 files"),
    }
