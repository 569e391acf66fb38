"""The repository configuration file: its strict model, line-numbered errors, and the admin's controls."""

from __future__ import annotations

import pytest

from bot.diff import DEFAULT_IGNORE_GLOBS
from bot.models import Project, Severity
from bot.repo_config import (
    CONFIG_PATHS,
    MAX_INSTRUCTION_CHARS,
    MAX_INSTRUCTIONS,
    RepoConfigError,
    effective,
    find_config,
    parse,
)

COMPLETE = """\
threshold = "major"
ignore = ["docs/**", "*.snap"]
review = ["src/**", "api/**"]
max_findings_per_file = 3
summary = false

[labels]
"reviewbot:critical" = "critical"
"needs-care" = "major"

[[instructions]]
paths = ["api/**"]
text = "This is a public API: flag breaking changes as major."

[[instructions]]
paths = ["src/db/**", "*.sql"]
text = "Queries must be parameterised."
"""


def project(**settings: object) -> Project:
    return Project(
        forge="gitlab", forge_url="https://gitlab.example", path="g/p", webhook_secret="s", **settings
    )


def error_of(text: str) -> str:
    with pytest.raises(RepoConfigError) as raised:
        parse(text, ".reviewbot.toml")
    assert "\n" not in str(raised.value)
    return str(raised.value)


def test_a_complete_file_is_read() -> None:
    config = parse(COMPLETE, ".reviewbot.toml")
    assert config.threshold is Severity.MAJOR
    assert config.ignore == ["docs/**", "*.snap"]
    assert config.review == ["src/**", "api/**"]
    assert config.max_findings_per_file == 3
    assert config.summary is False
    assert config.labels == {"reviewbot:critical": Severity.CRITICAL, "needs-care": Severity.MAJOR}
    assert [i.paths for i in config.instructions] == [["api/**"], ["src/db/**", "*.sql"]]


def test_an_empty_file_is_the_defaults() -> None:
    settings = effective(project(), (".reviewbot.toml", ""))
    assert (settings.source, settings.problem, settings.status) == (
        ".reviewbot.toml",
        None,
        "ok: .reviewbot.toml",
    )
    assert settings.threshold is Severity.MINOR
    assert settings.summary is True
    assert settings.labels == {}
    assert settings.instructions == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'threshold = "major"\n\nsevrity = "minor"\n',
            ".reviewbot.toml:3: sevrity: unknown key (known: threshold,",
        ),
        ('summary = true\nthreshold = "huge"\n', ".reviewbot.toml:2: threshold: Input should be 'critical'"),
        ('summary = "no"\n', ".reviewbot.toml:1: summary: Input should be a valid boolean"),
        (
            "max_findings_per_file = 0\n",
            ".reviewbot.toml:1: max_findings_per_file: Input should be greater than",
        ),
        (
            '[[instructions]]\npaths = ["a/**"]\ntext = "x"\n\n[[instructions]]\npaths = ["b"]\ntxt = "y"\n',
            ".reviewbot.toml:7: instructions[1].txt: unknown key (known: paths, text)",
        ),
        (
            '[[instructions]]\npaths = ["a/**"]\ntext = "x"\n\n[[instructions]]\npaths = ["b"]\n',
            ".reviewbot.toml:5: instructions[1].text: required key missing",
        ),
        (
            '[labels]\nok = "minor"\n"a,b" = "critical"\n',
            '.reviewbot.toml:3: labels."a,b": a label name is 1 to 50',
        ),
        (
            'ignore = ["a"]\n[labels]\nx = "severe"\n',
            ".reviewbot.toml:3: labels.x: Input should be 'critical'",
        ),
        (
            'threshold = "major"\nignore = "vendor/**"\n',
            ".reviewbot.toml:2: ignore: Input should be a valid list",
        ),
    ],
)
def test_bad_keys_and_values_are_named_with_their_line(text: str, expected: str) -> None:
    assert error_of(text).startswith(expected)


def test_a_toml_syntax_error_has_its_line() -> None:
    assert error_of('threshold = "major"\nignore = [\n"a",,\n]\n').startswith(
        ".reviewbot.toml:3: TOML syntax: "
    )


def test_caps() -> None:
    too_long = "x" * (MAX_INSTRUCTION_CHARS + 1)
    assert "instructions[0].text: String should have at most 2000 characters" in error_of(
        f'[[instructions]]\npaths = ["*"]\ntext = "{too_long}"\n'
    )
    many = "".join(f'[[instructions]]\npaths = ["*"]\ntext = "t{n}"\n' for n in range(MAX_INSTRUCTIONS + 1))
    assert error_of(many).startswith(".reviewbot.toml:1: instructions: List should have at most 8 items")
    assert "labels" in error_of(f'[labels]\n"{"l" * 51}" = "major"\n')
    assert error_of("x" * 70_000).startswith(".reviewbot.toml: file: larger than 64 KiB")
    assert len(error_of(f'"{"k" * 2000}" = 1\n')) <= 512


def test_the_floor_raises_a_less_severe_threshold() -> None:
    found = (".reviewbot.toml", 'threshold = "trivial"\n')
    assert effective(project(), found).threshold is Severity.TRIVIAL
    assert effective(project(threshold_floor="minor"), found).threshold is Severity.MINOR
    stricter = (".reviewbot.toml", 'threshold = "critical"\n')
    assert effective(project(threshold_floor="minor"), stricter).threshold is Severity.CRITICAL


def test_keys_the_project_does_not_allow_are_ignored_and_named() -> None:
    found = (".reviewbot.toml", 'threshold = "trivial"\nsummary = false\nmax_findings_per_file = 2\n')
    settings = effective(project(repo_config_keys=["max_findings_per_file"]), found)
    assert settings.refused == ("summary", "threshold")
    assert (settings.threshold, settings.summary, settings.max_findings_per_file) == (Severity.MINOR, True, 2)
    assert effective(project(repo_config_keys=None), found).refused == ()  # None: every key
    assert effective(project(repo_config_keys=[]), found).max_findings_per_file is None  # none at all


def test_repo_config_off_ignores_the_file() -> None:
    settings = effective(
        project(repo_config=False, severity_threshold="major"), (".reviewbot.toml", COMPLETE)
    )
    assert (settings.source, settings.problem, settings.status) == (None, None, "none")
    assert settings.threshold is Severity.MAJOR
    assert settings.summary is True
    assert settings.instructions == ()
    assert settings.digest == effective(project(severity_threshold="major"), None).digest


def test_a_broken_file_leaves_the_projects_settings_and_says_why() -> None:
    settings = effective(project(severity_threshold="critical"), (".github/reviewbot.toml", "summary = 1\n"))
    assert settings.source is None
    assert (
        settings.problem
        == settings.status
        == ".github/reviewbot.toml:1: summary: Input should be a valid boolean"
    )
    assert settings.threshold is Severity.CRITICAL
    assert settings.summary is True


def test_ignore_globs_are_added_to_the_projects() -> None:
    found = (".reviewbot.toml", 'ignore = ["docs/**", "*.lock"]\n')
    assert effective(project(), found).ignore_globs == [*DEFAULT_IGNORE_GLOBS, "docs/**"]
    assert effective(project(ignore_globs=["gen/**"]), found).ignore_globs == ["gen/**", "docs/**", "*.lock"]


def test_review_globs_and_ignore_decide_what_is_reviewed() -> None:
    settings = effective(project(), (".reviewbot.toml", COMPLETE))
    assert settings.reviews("src/app.py")
    assert settings.reviews("api/v1/users.py")
    assert not settings.reviews("scripts/x.py")  # outside the review globs
    assert not settings.reviews("src/poetry.lock")  # the project's default ignore globs
    assert effective(project(), None).reviews("scripts/x.py")


def test_instructions_reach_only_the_paths_they_match() -> None:
    settings = effective(project(), (".reviewbot.toml", COMPLETE))
    assert settings.instructions_for("api/v1/users.py") == [
        "This is a public API: flag breaking changes as major."
    ]
    assert settings.instructions_for("src/db/q.py") == ["Queries must be parameterised."]
    assert settings.instructions_for("migrations/001.sql") == ["Queries must be parameterised."]
    assert settings.instructions_for("src/app.py") == []


def test_the_digest_is_stable_and_follows_the_settings() -> None:
    found = (".reviewbot.toml", COMPLETE)
    digest = effective(project(), found).digest
    assert len(digest) == 64
    assert effective(project(), (".github/reviewbot.toml", "\n# same settings\n" + COMPLETE)).digest == digest
    assert (
        effective(project(), (".reviewbot.toml", COMPLETE.replace("max_findings_per_file = 3", ""))).digest
        != digest
    )
    assert (
        effective(project(), (".reviewbot.toml", COMPLETE.replace("parameterised", "bound"))).digest != digest
    )
    assert effective(project(threshold_floor="critical"), found).digest != digest


def test_the_first_config_path_found_wins() -> None:
    files = {".gitlab/reviewbot.toml": "a", ".github/reviewbot.toml": "b"}
    asked: list[str] = []

    def read(path: str) -> str | None:
        asked.append(path)
        return files.get(path)

    assert find_config(read) == (".gitlab/reviewbot.toml", "a")
    assert asked == list(CONFIG_PATHS[:2])
    assert find_config(lambda _path: None) is None
