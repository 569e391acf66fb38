"""Analyzer findings → the flywheel's examples, as the review pipeline would have asked them.

Each Python file is shown as the pipeline shows a newly added file (``bot.review.pipeline``: its
chunks, its snippets, its line numbers), so a question here reads exactly like one a review asks.

- severity: ``{code: the lines around the finding, review: the rule's message}`` → the table's level;
- explanation: the same plus ``issue_type`` → the rule's rationale, trimmed (``rationale``);
- find: ``{path, code: a chunk}`` → the chunk's findings, most severe first (a JSONL file only: the
  flywheel does not train ``find``).

Whole files go to one side (train or held out: ``meta.source_file`` is the split's group), each
question once (the flywheel's digest, and once more blind to line numbers, so a copied file cannot
put the same question on both sides), and each side is balanced: no level has more than ``balance``
times as many examples as the rarest level present, the cut spread over the level's rules.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.diff import Diff, DiffLine, FileDiff, FileStatus, Hunk, LineKind
from bot.models import ExampleSplit, Severity, Task
from bot.review.pipeline import SNIPPET_RADIUS, Chunk, chunk_diff, snippet
from flywheel.bootstrap import analyzers, mapping
from flywheel.bootstrap.analyzers import Finding
from flywheel.bootstrap.rationale import rationale
from flywheel.data import DataError, Example, clipped, parse_example, split_for
from flywheel.dedupe import line_blind_text
from flywheel.spec import spec_for
from prompts.answers import MAX_ISSUES_PER_CHUNK, CandidateIssue, FindAnswer, SeverityQuestion

DEFAULT_BALANCE = 2.0
REVIEW_CHARS = int(SeverityQuestion.model_json_schema()["properties"]["review"]["maxLength"])
TITLE_CHARS = int(CandidateIssue.model_json_schema()["properties"]["title"]["maxLength"])
_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # Python's (and the analyzers') lines; not str.splitlines'


@dataclass(frozen=True)
class Labelled:
    finding: Finding
    level: Severity


@dataclass
class Report:
    """What a build found, kept and left out, and why."""

    table_version: int
    files: int = 0
    unparsed: list[str] = field(default_factory=list)  # files an analyzer could not parse
    findings: Counter[str] = field(default_factory=Counter)  # by analyzer
    skipped: Counter[str] = field(default_factory=Counter)  # "ruff E402": not in the table / skipped
    unusable: int = 0  # no rationale to explain with, or a question too long for the task
    duplicates: int = 0  # the same question seen before (line numbers aside)
    capped: int = 0  # left out to balance the levels
    kept: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))  # split -> label

    @property
    def total(self) -> int:
        return sum(sum(labels.values()) for labels in self.kept.values())


@dataclass(frozen=True)
class Built:
    examples: list[Example]
    report: Report


@dataclass(frozen=True)
class Analysis:
    """A repository's labelled findings: what every task's examples are made from."""

    root: Path
    table: mapping.SeverityMap
    labelled: list[Labelled]
    report: Report  # the analysis's counts; each task's build adds its own to a copy


def analyze(
    root: Path,
    *,
    table: mapping.SeverityMap | None = None,
    exclude: Sequence[str] = (),
    on_files: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> Analysis:
    """Run the analyzers over ``root``'s Python files and label their findings with the table.
    ``on_files`` is told how many files there are, ``on_progress`` how many more were analyzed."""
    table = table or mapping.load()
    root = root.resolve()  # the analyzers report absolute paths
    paths = analyzers.python_files(root, exclude)
    if on_files:
        on_files(len(paths))
    found, unparsed = analyzers.analyze(root, paths, table.ruff_select, on_progress)
    report = Report(table.version, files=len(paths), unparsed=unparsed)
    report.findings.update(f.analyzer for f in found)
    return Analysis(root, table, _labelled(found, table, report), report)


def examples_for(
    analysis: Analysis,
    task: Task,
    *,
    heldout_share: float,
    balance: float = DEFAULT_BALANCE,
    limit: int | None = None,
    chunk_tokens: int = 2500,
) -> Built:
    """``task``'s examples from the analysis: split by file, each question once, balanced
    (``balance`` 0 keeps every level whole), at most ``limit``."""
    report = Report(
        analysis.report.table_version, analysis.report.files, analysis.report.unparsed,
        analysis.report.findings, analysis.report.skipped,
    )  # fmt: skip
    if task == Task.FIND:
        candidates = _find_examples(analysis.root, analysis.labelled, chunk_tokens, analysis.table.version)
    else:
        candidates = _rated_examples(analysis.root, analysis.labelled, task, analysis.table, report)
    unique = _unique(candidates, report)
    if task == Task.FIND and limit is not None:
        unique = sorted(unique, key=lambda e: e.key)[:limit]  # a sample unrelated to file order
    sides: dict[str, list[Example]] = defaultdict(list)
    for example in unique:
        sides[split_for(example.group, heldout_share)].append(example)
    kept = sides if task == Task.FIND else _balanced(sides, balance, limit, report)
    examples = [e for side in (ExampleSplit.TRAIN, ExampleSplit.HELDOUT) for e in kept.get(side, [])]
    for side, chosen in kept.items():
        report.kept[side].update(_label(e) for e in chosen)
    return Built(examples, report)


def build(
    root: Path,
    task: Task,
    *,
    heldout_share: float,
    balance: float = DEFAULT_BALANCE,
    limit: int | None = None,
    chunk_tokens: int = 2500,
    exclude: Sequence[str] = (),
    on_files: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> Built:
    """``analyze`` then ``examples_for``."""
    analysis = analyze(root, exclude=exclude, on_files=on_files, on_progress=on_progress)
    return examples_for(
        analysis, task, heldout_share=heldout_share, balance=balance, limit=limit, chunk_tokens=chunk_tokens
    )


def _labelled(found: Iterable[Finding], table: mapping.SeverityMap, report: Report) -> list[Labelled]:
    labelled = []
    for finding in found:
        if finding.analyzer == "ruff":
            level = table.ruff_level(finding.rule)
        else:
            level = table.bandit_level(finding.rule, finding.severity, finding.confidence)
        if level is None:
            report.skipped[f"{finding.analyzer} {finding.rule}"] += 1
        else:
            labelled.append(Labelled(finding, level))
    return sorted(labelled, key=lambda x: (x.finding.path, x.finding.line, x.finding.rule, x.finding.message))


def as_new_file(path: str, text: str) -> FileDiff | None:
    """The file as a diff that adds it: how the review pipeline shows a new file. None when empty."""
    lines = _LINE_BREAK.split(text)
    if lines and lines[-1] == "":
        lines.pop()  # the text after the last line break
    if not lines:
        return None
    added = tuple(DiffLine(LineKind.ADDED, None, number, line) for number, line in enumerate(lines, 1))
    hunk = Hunk(old_start=0, old_count=0, new_start=1, new_count=len(added), section="", lines=added)
    return FileDiff(path=path, old_path=None, status=FileStatus.ADDED, hunks=(hunk,))


def _by_file(root: Path, labelled: list[Labelled]) -> Iterable[tuple[FileDiff, list[Labelled]]]:
    files: dict[str, list[Labelled]] = defaultdict(list)
    for item in labelled:
        files[item.finding.path].append(item)
    for path, items in files.items():
        try:
            text = (root / path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue  # gone since the analyzers read it
        diff = as_new_file(path, text)
        if diff is not None:
            yield diff, items


def _meta(finding: Finding, level: Severity, table_version: int) -> dict[str, Any]:
    return {
        "source_file": finding.path,  # the split's group: a whole file on one side
        "analyzer": finding.analyzer,
        "rule": finding.rule,
        "line": finding.line,
        "level": level.value,
        "severity_table": table_version,
    }


def _rated_examples(
    root: Path, labelled: list[Labelled], task: Task, table: mapping.SeverityMap, report: Report
) -> list[Example]:
    spec = spec_for(task)
    examples = []
    for diff, items in _by_file(root, labelled):
        (hunk,) = diff.hunks
        for item in items:
            finding = item.finding
            at = min(max(finding.line, 1), len(hunk.lines)) - 1
            # The pipeline's snippet, given only the lines it can show: it searches its hunk for the
            # target, and a whole file's hunk made that quadratic.
            nearby = hunk.lines[max(0, at - SNIPPET_RADIUS) : at + SNIPPET_RADIUS + 1]
            piece = Hunk(hunk.old_start, 0, nearby[0].number, len(nearby), "", nearby)
            question: dict[str, Any] = {
                "code": snippet(Chunk(diff, (piece,)), hunk.lines[at]),
                "review": clipped(finding.message.strip(), REVIEW_CHARS - 30),
            }
            if task == Task.SEVERITY:
                answer: dict[str, Any] = {"issue_type": item.level.value}
            else:
                question["issue_type"] = item.level.value
                answer = {"explanation": rationale(finding, table)}
            meta = _meta(finding, item.level, table.version)
            try:
                examples.append(
                    parse_example(spec, {"question": question, "answer": answer, "meta": meta}, "")
                )
            except DataError:
                report.unusable += 1  # no rationale, an empty message, a line too long for a question
    return examples


def _find_examples(
    root: Path, labelled: list[Labelled], chunk_tokens: int, table_version: int
) -> list[Example]:
    examples = []
    for diff, items in _by_file(root, labelled):
        for chunk in chunk_diff(Diff((diff,), ()), chunk_tokens):
            numbers = {line.number for line in chunk.changed}
            inside = [item for item in items if item.finding.line in numbers]
            if not inside:
                continue
            inside.sort(key=lambda item: (-item.level.rank, item.finding.line))
            issues = [
                CandidateIssue(
                    line=item.finding.line,
                    side="new",
                    title=clipped(item.finding.title, TITLE_CHARS - 30) or item.finding.rule,
                    review=clipped(item.finding.message.strip(), REVIEW_CHARS - 30),
                )
                for item in inside[:MAX_ISSUES_PER_CHUNK]
            ]
            answer = FindAnswer(issues=issues).model_dump(mode="json")
            meta = {
                "source_file": diff.path,
                "rules": sorted({item.finding.rule for item in inside}),
                "findings": len(inside),  # in the chunk; the answer lists the most severe few
                "severity_table": table_version,
            }
            examples.append(Example({"path": diff.path, "code": chunk.text()}, answer, None, meta))
    return examples


def _unique(examples: Iterable[Example], report: Report) -> list[Example]:
    """Each question once: by the flywheel's digest, and blind to line numbers (a copied file)."""
    seen: set[str] = set()
    unique = []
    for example in examples:
        keys = {example.key, line_blind_text(example.question)}
        if keys & seen:
            report.duplicates += 1
            continue
        seen |= keys
        unique.append(example)
    return unique


def _label(example: Example) -> str:
    level = example.meta.get("level")
    return str(level) if level else "chunks"  # find examples: chunks with findings, not one level


def _balanced(
    sides: dict[str, list[Example]], balance: float, limit: int | None, report: Report
) -> dict[str, list[Example]]:
    """Per side: each level at most ``balance`` × the rarest present level's count (and, with a
    ``limit``, the largest such cap that keeps the total within it), rules taken in turn."""
    by_level = {side: _group(examples, _label) for side, examples in sides.items()}
    # Per side: its own rarest level decides (a level absent from a side is not counted).
    caps = {
        side: math.ceil(balance * min(map(len, levels.values()))) if balance else len(sides[side])
        for side, levels in by_level.items()
    }
    if limit is not None:
        caps = _within(by_level, caps, limit)
    kept: dict[str, list[Example]] = {}
    for side, levels in by_level.items():
        chosen = []
        for level in sorted(levels, key=lambda name: -Severity(name).rank):
            group = levels[level]
            taken = _spread(group, caps[side])
            report.capped += len(group) - len(taken)
            chosen += taken
        kept[side] = chosen
    return kept


def _within(
    by_level: dict[str, dict[str, list[Example]]], caps: dict[str, int], limit: int
) -> dict[str, int]:
    """The caps scaled down together until the examples they keep are at most ``limit``."""

    def total(scale: float) -> int:
        return sum(
            min(len(group), int(caps[side] * scale))
            for side, levels in by_level.items()
            for group in levels.values()
        )

    low, high = 0.0, 1.0
    if total(high) <= limit:
        return caps
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if total(middle) <= limit else (low, middle)
    return {side: int(cap * low) for side, cap in caps.items()}


def _group(examples: Iterable[Example], key: Callable[[Example], str]) -> dict[str, list[Example]]:
    groups: dict[str, list[Example]] = defaultdict(list)
    for example in examples:
        groups[key(example)].append(example)
    return groups


def _spread(examples: list[Example], count: int) -> list[Example]:
    """``count`` of ``examples``, the rules taken in turn (so one loud rule cannot fill a level), each
    rule's examples in the order of their digest (stable, and unrelated to file order)."""
    if len(examples) <= count:
        return examples
    rules = _group(examples, lambda e: str(e.meta.get("rule")))
    queues = [sorted(rules[rule], key=lambda e: e.key) for rule in sorted(rules)]
    chosen: list[Example] = []
    depth = 0
    while len(chosen) < count:
        for queue in queues:
            if depth < len(queue) and len(chosen) < count:
                chosen.append(queue[depth])
        depth += 1
    return chosen
