"""The versioned table (``severity_map.toml``) that turns an analyzer's rule and severity into the
student's four levels, loaded and checked strictly: an unknown key, level or rule code is an error
that names it, never a silently ignored line."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from bot.models import Severity

TABLE = Path(__file__).with_name("severity_map.toml")
SKIP = "skip"  # a bandit test a reviewer would not raise
BANDIT_LEVELS = ("LOW", "MEDIUM", "HIGH")  # bandit's severities and confidences, weakest first
_RUFF_CODE = re.compile(r"[A-Z]+[0-9]*")
_BANDIT_TEST = re.compile(r"B[0-9]{1,3}")
T = TypeVar("T")


class MappingError(ValueError):
    """The table is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class SeverityMap:
    version: int
    ruff_select: tuple[str, ...]
    ruff_rules: Mapping[str, Severity]  # a code or a prefix of codes
    bandit_min_confidence: str
    bandit_severity: Mapping[str, Severity]  # bandit's severity -> level, for tests without an entry
    bandit_tests: Mapping[str, Severity | None]  # a test id or prefix -> level; None: skipped
    cwe_names: Mapping[int, str]

    def ruff_level(self, code: str) -> Severity | None:
        """The level of a ruff rule; None when the table has no entry for it."""
        return _longest_prefix(self.ruff_rules, code, None)

    def bandit_level(self, test_id: str, severity: str, confidence: str) -> Severity | None:
        """The level of a bandit finding; None when it is skipped (a skipped test, or bandit unsure)."""
        if _rank(confidence) < _rank(self.bandit_min_confidence):
            return None
        default = self.bandit_severity.get(severity)
        return _longest_prefix(self.bandit_tests, test_id, default)


def _rank(level: str) -> int:
    return BANDIT_LEVELS.index(level) if level in BANDIT_LEVELS else -1


def _longest_prefix(table: Mapping[str, T], code: str, default: T) -> T:
    for end in range(len(code), 0, -1):
        if code[:end] in table:
            return table[code[:end]]
    return default


def load(path: Path = TABLE) -> SeverityMap:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise MappingError(f"{path}: cannot read the severity table: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise MappingError(f"{path}: not TOML: {exc}") from None
    return parse(raw, str(path))


def parse(raw: Mapping[str, Any], where: str) -> SeverityMap:
    table = _Table(raw, where)
    version = table.take("version", int)
    if version < 1:
        raise MappingError(f"{where}: version must be a positive integer, got {version}")
    ruff = _Table(table.take("ruff", dict), f"{where} [ruff]")
    bandit = _Table(table.take("bandit", dict), f"{where} [bandit]")
    table.done()
    select = ruff.take("select", list)
    for code in select:
        _check_code(code, _RUFF_CODE, f"{ruff.where} select")
    rules = {
        _check_code(code, _RUFF_CODE, f"{ruff.where}.rules"): _level(value, f"{ruff.where}.rules {code}")
        for code, value in ruff.take("rules", dict).items()
    }
    ruff.done()
    confidence = bandit.take("min_confidence", str)
    if confidence not in BANDIT_LEVELS:
        raise MappingError(f"{bandit.where} min_confidence: {confidence!r} is not one of {BANDIT_LEVELS}")
    by_severity = bandit.take("severity", dict)
    for name in by_severity:
        if name not in BANDIT_LEVELS:
            raise MappingError(f"{bandit.where}.severity: {name!r} is not one of bandit's {BANDIT_LEVELS}")
    tests = {
        _check_code(test, _BANDIT_TEST, f"{bandit.where}.tests"): (
            None if value == SKIP else _level(value, f"{bandit.where}.tests {test}", SKIP)
        )
        for test, value in bandit.take("tests", dict).items()
    }
    cwe = {}
    for number, name in bandit.take("cwe", dict).items():
        if not number.isdigit() or not isinstance(name, str) or not name:
            raise MappingError(f"{bandit.where}.cwe: {number!r} = {name!r} is not a CWE number and its name")
        cwe[int(number)] = name
    bandit.done()
    return SeverityMap(
        version=version,
        ruff_select=tuple(select),
        ruff_rules=rules,
        bandit_min_confidence=confidence,
        bandit_severity={
            name: _level(v, f"{bandit.where}.severity {name}") for name, v in by_severity.items()
        },
        bandit_tests=tests,
        cwe_names=cwe,
    )


class _Table:
    """A TOML table read key by key; ``done`` fails on any key nobody took (a typo is an error)."""

    def __init__(self, raw: Mapping[str, Any], where: str) -> None:
        self.raw, self.where, self.taken = raw, where, set[str]()

    def take(self, key: str, kind: type[T]) -> T:
        if key not in self.raw:
            raise MappingError(f"{self.where}: {key} is missing")
        value = self.raw[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise MappingError(f"{self.where}: {key} must be a {kind.__name__}, got {value!r}")
        self.taken.add(key)
        return value

    def done(self) -> None:
        unknown = sorted(set(self.raw) - self.taken)
        if unknown:
            raise MappingError(f"{self.where}: unknown key(s) {unknown}")


def _check_code(code: Any, pattern: re.Pattern[str], where: str) -> str:
    if not isinstance(code, str) or not pattern.fullmatch(code):
        raise MappingError(f"{where}: {code!r} is not a rule code or a prefix of one")
    return code


def _level(value: Any, where: str, *also: str) -> Severity:
    try:
        return Severity(value)
    except ValueError:
        allowed = [level.value for level in Severity] + list(also)
        raise MappingError(f"{where}: {value!r} is not one of {allowed}") from None
