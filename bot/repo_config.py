"""The repository's own review settings (``.reviewbot.toml``): its strict model, line-numbered errors,
and the settings in force once the project's admin controls are applied (``Effective``).

Pure: the caller reads the file (at the merge request's base commit, never its head) and stores what
it needs. A broken file never stops a review: ``effective`` falls back to the project's settings and
says in ``problem``, in one line, what was wrong.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
)

from bot.diff import DEFAULT_IGNORE_GLOBS, matches_glob
from bot.models import Project, Severity

CONFIG_PATHS = (".reviewbot.toml", ".gitlab/reviewbot.toml", ".github/reviewbot.toml")

MAX_FILE_CHARS = 64 * 1024  # the forges' read cap too
MAX_INSTRUCTIONS = 8
MAX_INSTRUCTION_CHARS = 2_000  # each reaches every prompt of its files: the chunk budget pays for it
MAX_GLOBS = 100
MAX_GLOB_CHARS = 256
MAX_LABELS = 10
MAX_LABEL_CHARS = 50
MAX_ERROR_CHARS = 512  # Project.repo_config_status


def _label_name(name: str) -> str:
    if not (1 <= len(name) <= MAX_LABEL_CHARS) or not name.isprintable() or "," in name or not name.strip():
        raise ValueError(f"a label name is 1 to {MAX_LABEL_CHARS} printable characters, without commas")
    return name


Glob = Annotated[StrictStr, Field(min_length=1, max_length=MAX_GLOB_CHARS)]
Globs = Annotated[list[Glob], Field(max_length=MAX_GLOBS)]
LabelName = Annotated[str, AfterValidator(_label_name)]


class Instruction(BaseModel):
    """Extra review guidance for the files its globs match (passed to the prompts as data)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    paths: Annotated[Globs, Field(min_length=1)]
    text: Annotated[StrictStr, Field(min_length=1, max_length=MAX_INSTRUCTION_CHARS)]


class RepoConfig(BaseModel):
    """The file as written; every key optional. Strict types: ``summary = "no"`` is an error, not True."""

    model_config = ConfigDict(extra="forbid")

    threshold: Severity | None = None
    ignore: Globs = []
    review: Globs = []  # empty: every file
    instructions: Annotated[list[Instruction], Field(max_length=MAX_INSTRUCTIONS)] = []
    max_findings_per_file: Annotated[StrictInt, Field(ge=1, le=1_000)] | None = None
    summary: StrictBool = True
    labels: Annotated[dict[LabelName, Severity], Field(max_length=MAX_LABELS)] = {}


class RepoConfigError(ValueError):
    """One line: ``PATH:LINE: key: message`` (no LINE when it cannot be found)."""

    def __init__(self, path: str, line: int | None, key: str, message: str) -> None:
        self.path, self.line, self.key, self.message = path, line, key, message
        where = f"{path}:{line}" if line else path
        text = " ".join(f"{where}: {key}: {message}".split())
        super().__init__(text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…")


def parse(text: str, path: str) -> RepoConfig:
    """The file's settings; RepoConfigError names the first problem with its line."""
    if len(text) > MAX_FILE_CHARS:
        raise RepoConfigError(path, None, "file", f"larger than {MAX_FILE_CHARS // 1024} KiB")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        at = re.search(r"\(at line (\d+), column \d+\)$", message)
        if at:
            message = message[: at.start()].strip()
        raise RepoConfigError(path, int(at.group(1)) if at else None, "TOML syntax", message) from None
    try:
        return RepoConfig.model_validate(data)
    except ValidationError as error:
        errors = error.errors()
        first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])  # a typo says most
        loc = tuple(part for part in first["loc"] if part != "[key]")
        message = _message(first, loc)
        more = error.error_count() - 1
        if more:
            message += f" (and {more} more)"
        raise RepoConfigError(path, _line_of(text, loc), _key_path(loc), message) from None


def _message(error: Any, loc: tuple[str | int, ...]) -> str:
    if error["type"] == "extra_forbidden":
        model = Instruction if len(loc) > 1 and loc[0] == "instructions" else RepoConfig
        return f"unknown key (known: {', '.join(model.model_fields)})"
    if error["type"] == "missing":
        return "required key missing"
    return str(error["msg"]).removeprefix("Value error, ")


def _key_path(loc: tuple[str | int, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            bare = re.fullmatch(r"[A-Za-z0-9_-]+", part)
            path += ("." if path else "") + (part if bare else json.dumps(part))
    return path or "file"


_ARRAY_HEADER = re.compile(r"\s*\[\[\s*([^\]]+?)\s*\]\]")
_TABLE_HEADER = re.compile(r"\s*\[\s*([^\]]+?)\s*\]")
_KEY = re.compile(r"""\s*(?:"((?:[^"\\]|\\.)*)"|'([^']*)'|([A-Za-z0-9_-]+))\s*[=.]""")


TomlTable = tuple[str, int | None]  # a table's name, and its index when it is an array of tables


def _positions(text: str) -> tuple[dict[TomlTable, int], dict[tuple[TomlTable, str], int]]:
    """The first line of each table header, and of each key within its table."""
    headers: dict[TomlTable, int] = {}
    keys: dict[tuple[TomlTable, str], int] = {}
    table: TomlTable = ("", None)
    counts: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if array := _ARRAY_HEADER.match(line):
            name = array.group(1).strip("\"'")
            counts[name] = counts.get(name, -1) + 1
            table = (name, counts[name])
            headers.setdefault(table, number)
        elif header := _TABLE_HEADER.match(line):
            table = (header.group(1).strip("\"'"), None)
            headers.setdefault(table, number)
        elif key := _KEY.match(line):
            keys.setdefault((table, next(group for group in key.groups() if group is not None)), number)
    return headers, keys


def _line_of(text: str, loc: tuple[str | int, ...]) -> int | None:
    """The line of ``loc`` in the file (tomllib gives none): its key's, else its table's."""
    if not loc or not isinstance(loc[0], str):
        return None
    headers, keys = _positions(text)
    top = loc[0]
    at_top = keys.get((("", None), top)) or headers.get((top, None)) or headers.get((top, 0))
    if len(loc) > 1 and isinstance(loc[1], int):  # an element of an array of tables
        element = (top, loc[1])
        inner = keys.get((element, loc[2])) if len(loc) > 2 and isinstance(loc[2], str) else None
        return inner or headers.get(element) or at_top
    if len(loc) > 1:  # a key of a table ([labels])
        return keys.get(((top, None), str(loc[1]))) or at_top
    return at_top


@dataclass(frozen=True)
class Effective:
    """The settings a review applies: the project's, the repository file's where allowed."""

    threshold: Severity
    ignore_globs: list[str]
    review_globs: list[str]
    instructions: tuple[Instruction, ...]
    max_findings_per_file: int | None
    summary: bool
    labels: dict[str, Severity]
    source: str | None  # the file used; None: no file (or not allowed, or broken)
    problem: str | None  # one line: what was wrong with the file, which was then not used
    digest: str  # sha256 of the settings in force: a finding's provenance
    refused: tuple[str, ...] = ()  # keys the file set that the project does not let it set (ignored)

    def reviews(self, path: str) -> bool:
        """Whether ``path`` is reviewed: within the review globs (none: all) and not ignored."""
        wanted = not self.review_globs or any(matches_glob(path, glob) for glob in self.review_globs)
        return wanted and not any(matches_glob(path, glob) for glob in self.ignore_globs)

    def instructions_for(self, path: str) -> list[str]:
        """The texts of the instructions whose globs match ``path``, in the file's order."""
        return [i.text for i in self.instructions if any(matches_glob(path, glob) for glob in i.paths)]

    @property
    def status(self) -> str:
        """``Project.repo_config_status``: "ok: PATH", "none", or the file's problem."""
        return self.problem or (f"ok: {self.source}" if self.source else "none")

    def as_dict(self) -> dict[str, Any]:
        """The settings in force, as JSON-ready data (what the digest is of)."""
        return {
            "threshold": self.threshold.value,
            "ignore": self.ignore_globs,
            "review": self.review_globs,
            "instructions": [i.model_dump() for i in self.instructions],
            "max_findings_per_file": self.max_findings_per_file,
            "summary": self.summary,
            "labels": {name: severity.value for name, severity in self.labels.items()},
        }


def effective(project: Project | None, found: tuple[str, str] | None) -> Effective:
    """The settings in force for ``project`` (None: the defaults) given the file ``found`` at the base
    as (path, text). The admin's controls hold: ``repo_config`` off ignores the file, keys outside
    ``repo_config_keys`` are ignored (and listed in ``refused``), and a file's threshold less severe
    than ``threshold_floor`` is raised to it."""
    threshold = Severity(project.severity_threshold) if project else Severity.MINOR
    ignore = list((project.ignore_globs if project else None) or DEFAULT_IGNORE_GLOBS)
    config, source, problem = RepoConfig(), None, None
    if found is not None and (project is None or project.repo_config):
        try:
            config, source = parse(found[1], found[0]), found[0]
        except RepoConfigError as error:
            problem = str(error)
    refused: tuple[str, ...] = ()
    if project is not None and project.repo_config_keys is not None:
        allowed = set(project.repo_config_keys)
        refused = tuple(sorted(key for key in config.model_fields_set if key not in allowed))
        kept = {key: getattr(config, key) for key in config.model_fields_set if key in allowed}
        config = RepoConfig(**kept)
    if config.threshold is not None:
        threshold = config.threshold
        floor = Severity(project.threshold_floor) if project and project.threshold_floor else None
        if floor is not None and threshold.rank < floor.rank:
            threshold = floor
    settings = Effective(
        threshold=threshold,
        ignore_globs=ignore + [glob for glob in config.ignore if glob not in ignore],
        review_globs=list(config.review),
        instructions=tuple(config.instructions),
        max_findings_per_file=config.max_findings_per_file,
        summary=config.summary,
        labels=dict(config.labels),
        source=source,
        problem=problem,
        digest="",
        refused=refused,
    )
    canonical = json.dumps(settings.as_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return replace(settings, digest=hashlib.sha256(canonical.encode()).hexdigest())


def find_config(read: Callable[[str], str | None]) -> tuple[str, str] | None:
    """The first of CONFIG_PATHS that ``read`` finds, as (path, text); None: the repository has none."""
    for path in CONFIG_PATHS:
        text = read(path)
        if text is not None:
            return path, text
    return None
