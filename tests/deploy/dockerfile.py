"""Reads deploy/Dockerfile and the root .dockerignore the way the builder does, for the tests that run
the image's install steps without a container engine and check what the images contain."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: RUN, COPY, ENV...
    arguments: str
    line: int


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        """The stage's ENV settings, as written (``$PATH`` unexpanded)."""
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for item in shlex.split(instruction.arguments):
                name, _, value = item.partition("=")
                values[name] = value
        return values

    def user(self) -> str | None:
        users = self.all("USER")
        return users[-1].arguments if users else None


def parse(path: Path) -> dict[str, Stage]:
    """The stages by name, with their instructions (continuation lines joined, comments dropped)."""
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    args: dict[str, str] = {}  # ARGs before the first FROM: the bases' defaults
    pending, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue  # the builder drops comment lines, also inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text, pending = pending + stripped, ""
        keyword, _, arguments = text.partition(" ")
        keyword, arguments = keyword.upper(), arguments.strip()
        if keyword == "ARG" and current is None:
            name, _, default = arguments.partition("=")
            args[name] = default
        elif keyword == "FROM":
            base, _, name = arguments.partition(" AS ")
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m[1], m[0]), base.strip())
            current = Stage(name.strip() or base, base)
            stages[current.name] = current
        elif current is not None:
            current.instructions.append(Instruction(keyword, arguments, start))
    return stages


def exec_form(arguments: str) -> list[str]:
    """A JSON-array argument (CMD, ENTRYPOINT, HEALTHCHECK's CMD)."""
    value = json.loads(arguments)
    assert isinstance(value, list), f"not in exec form: {arguments}"
    return [str(item) for item in value]


def healthcheck_command(stage: Stage) -> list[str]:
    (check,) = stage.all("HEALTHCHECK")
    _, _, command = check.arguments.partition("CMD ")
    return exec_form(command)


def copy_sources(instruction: Instruction) -> tuple[list[str], str, dict[str, str]]:
    """A COPY's sources, destination and flags (``--from``...)."""
    words = shlex.split(instruction.arguments)
    flags = dict(word[2:].split("=", 1) for word in words if word.startswith("--"))
    paths = [word for word in words if not word.startswith("--")]
    return paths[:-1], paths[-1], flags


def run_command(instruction: Instruction) -> str:
    """A RUN's shell command, less its BuildKit cache mounts (pip's download cache: no effect on what
    is installed). Any other flag is refused, so a new one cannot go unnoticed."""
    text = instruction.arguments
    while text.startswith("--"):
        flag, _, text = text.partition(" ")
        if not flag.startswith("--mount=type=cache,"):
            raise ValueError(f"line {instruction.line}: RUN flag {flag} is not understood by this test")
        text = text.lstrip()
    return text


class DockerIgnore:
    """The .dockerignore rules: each pattern excludes what matches it, a ``!pattern`` takes it back,
    the last matching rule wins, and a folder's rule applies to what is inside it."""

    def __init__(self, path: Path) -> None:
        self.rules: list[tuple[bool, re.Pattern[str]]] = []
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            include = line.startswith("!")
            pattern = line.removeprefix("!").strip().strip("/")
            self.rules.append((include, re.compile(_translate(pattern))))

    def excluded(self, relative: str) -> bool:
        parts = relative.strip("/").split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        verdict = False
        for include, pattern in self.rules:
            if any(pattern.fullmatch(candidate) for candidate in candidates):
                verdict = not include
        return verdict


def _translate(pattern: str) -> str:
    """Docker's path patterns (Go's filepath.Match, plus ``**``) as a regular expression."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return out
