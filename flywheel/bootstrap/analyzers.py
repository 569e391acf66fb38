"""Run the static analyzers over a repository's Python files and read their findings.

ruff and bandit, both from PyPI, run as subprocesses of this Python with JSON output: each finding
has a file, a line, a message and a rule, and each rule a documented rationale (``ruff rule``'s
explanation; bandit's issue text and CWE). The files are listed here, once, so both analyzers see
the same ones: git's own list when the folder is a repository (its .gitignore respected), else a
walk that skips virtual environments, caches and build folders; and never a file the review
pipeline would skip (``bot.diff.DEFAULT_IGNORE_GLOBS``: vendored, generated, build output).
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.diff import DEFAULT_IGNORE_GLOBS, matches_glob

BATCH_FILES = 200  # files per analyzer call: a bounded command line, and a progress bar that moves
SKIPPED_DIRS = frozenset(
    {"__pycache__", "node_modules", "site-packages", "venv", "build", "dist", "htmlcov"}
)  # and every folder whose name starts with a dot (.git, .venv, .tox, .mypy_cache, …)


_RULE_CODE = re.compile(r"[A-Z]+[0-9]+")


class AnalyzerError(RuntimeError):
    """An analyzer could not run or gave output that is not its JSON report."""


@dataclass(frozen=True)
class Finding:
    analyzer: str  # "ruff" or "bandit"
    rule: str  # ruff's code (B006) or bandit's test id (B602)
    path: str  # relative to the repository, "/"-separated
    line: int
    message: str
    title: str  # a few words: the rule's name
    severity: str = ""  # bandit's own severity and confidence; "" for ruff
    confidence: str = ""
    cwe: int | None = None


def python_files(root: Path, exclude: Sequence[str] = ()) -> list[str]:
    """The repository's Python files, relative to ``root``, sorted; none matching an ``exclude``
    glob (``bot.diff.matches_glob``'s syntax)."""
    listed = _git_files(root)
    paths = listed if listed is not None else _walk(root)
    return sorted(
        path
        for path in paths
        if path.endswith(".py")
        and not any(matches_glob(path, glob) for glob in (*DEFAULT_IGNORE_GLOBS, *exclude))
        and not set(path.split("/")[:-1]) & SKIPPED_DIRS
        and (root / path).is_file()
        and not (root / path).is_symlink()  # it may point out of the repository
    )


def _git_files(root: Path) -> list[str] | None:
    """git's list of the folder's files (tracked, and untracked ones not ignored); None when the
    folder is not in a git work tree, or is one that git ignores (a virtual environment)."""

    def git(*args: str) -> subprocess.CompletedProcess[bytes] | None:
        try:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, check=False)
        except OSError:
            return None  # no git here: walk the folder

    ignored = git("check-ignore", "-q", ".")
    if ignored is None or ignored.returncode != 1:  # 0: ignored, 128: not a repository
        return None
    listed = git("ls-files", "-z", "--cached", "--others", "--exclude-standard")
    if listed is None or listed.returncode != 0:
        return None
    return [os.fsdecode(name) for name in listed.stdout.split(b"\0") if name]


def _walk(root: Path) -> Iterator[str]:
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in SKIPPED_DIRS]
        relative = Path(folder).relative_to(root)
        for name in files:
            yield (relative / name).as_posix()


def batches(paths: list[str], size: int = BATCH_FILES) -> Iterator[list[str]]:
    for start in range(0, len(paths), size):
        yield paths[start : start + size]


def analyze(
    root: Path, paths: list[str], ruff_select: Iterable[str], on_batch: Callable[[int], None] | None = None
) -> tuple[list[Finding], list[str]]:
    """Every finding of ruff and bandit in ``paths`` (under ``root``), and the files they could not
    parse (a syntax error, an undecodable file), each once."""
    findings: list[Finding] = []
    failed: set[str] = set()
    select = ",".join(ruff_select)
    for batch in batches(paths):
        absolute = {str(root / path): path for path in batch}
        ruff = _start([*_RUFF, f"--select={select}", "--", *absolute], root)
        bandit = _start([*_BANDIT, "--", *absolute], root)  # the two run side by side
        ruff_found, ruff_failed = _ruff_findings(_finish(ruff, "ruff"), absolute)
        bandit_found, bandit_failed = _bandit_findings(_finish(bandit, "bandit"), absolute)
        findings += ruff_found + bandit_found
        failed |= ruff_failed | bandit_failed
        if on_batch:
            on_batch(len(batch))
    return findings, sorted(failed)


# --isolated: the repository's own ruff settings do not choose what is found, the table does.
_RUFF = [sys.executable, "-m", "ruff", "check", "--isolated", "--no-cache", "--output-format=json"]
_BANDIT = [sys.executable, "-m", "bandit", "--format=json", "--quiet"]


def _start(command: list[str], root: Path) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        raise AnalyzerError(f"cannot start {command[2]}: {exc}") from None


def _finish(process: subprocess.Popen[bytes], name: str) -> Any:
    """The analyzer's JSON report (its exit code is 1 when it found something, so the report is
    what tells a run from a failure)."""
    out, err = process.communicate()
    try:
        return json.loads(out)
    except json.JSONDecodeError:
        why = err.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        raise AnalyzerError(
            f"{name} exited with {process.returncode} and no report: {why[0]} "
            "(is it installed? pip install 'reviewbot[train]')"
        ) from None


def _ruff_findings(report: Any, paths: dict[str, str]) -> tuple[list[Finding], set[str]]:
    found, failed = [], set()
    for item in report:
        path = paths.get(item.get("filename", ""))
        if path is None:
            continue
        if not _RULE_CODE.fullmatch(item.get("code") or ""):  # "invalid-syntax": not a rule
            failed.add(path)
            continue
        found.append(
            Finding(
                analyzer="ruff",
                rule=item["code"],
                path=path,
                line=int(item["location"]["row"]),
                message=item["message"],
                title=item.get("name", item["code"]).replace("-", " "),
            )
        )
    return found, failed


def _bandit_findings(report: Any, paths: dict[str, str]) -> tuple[list[Finding], set[str]]:
    failed = {paths[e["filename"]] for e in report.get("errors", []) if e.get("filename") in paths}
    found = []
    for item in report.get("results", []):
        path = paths.get(item.get("filename", ""))
        if path is None:
            continue
        cwe = item.get("issue_cwe") or {}
        found.append(
            Finding(
                analyzer="bandit",
                rule=item["test_id"],
                path=path,
                line=int(item["line_number"]),
                message=item["issue_text"],
                title=_bandit_title(item),
                severity=item["issue_severity"],
                confidence=item["issue_confidence"],
                cwe=int(cwe["id"]) if cwe.get("id") else None,
            )
        )
    return found, failed


def _bandit_title(item: dict[str, Any]) -> str:
    # "blacklist" names bandit's whole family of call and import checks: its anchor says which one
    name: str = item["test_name"]
    if name == "blacklist":
        anchor = str(item.get("more_info", "")).rpartition("#")[2]
        name = re.sub(r"^b[0-9]+-", "", anchor) or name
    return name.replace("_", " ").replace("-", " ")


@functools.cache
def ruff_explanations() -> dict[str, str]:
    """Every ruff rule's documentation (Markdown), by code: one ``ruff rule --all`` call."""
    done = subprocess.run(
        [sys.executable, "-m", "ruff", "rule", "--all", "--output-format=json"],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        raise AnalyzerError(f"ruff rule --all exited with {done.returncode}: {done.stderr.decode()[-300:]}")
    return {rule["code"]: rule.get("explanation", "") for rule in json.loads(done.stdout)}
