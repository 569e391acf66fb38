"""Changing a project's settings and rotating its webhook secret: the one implementation behind
``reviewbot project set`` / ``rotate-secret``, the console's project page and ``/api/v1/projects``, so
each way in gives the same checks, the same messages and the same audit entry.

A ``ProjectChange`` holds only what an admin gave (every field optional; a field left out keeps its
value) in the words an admin writes (``default``, ``none``, ``all``, GitHub's role names); its
validators normalise them to what a ``Project`` stores, or refuse with one line saying what is
allowed. ``update_project`` and ``rotate_secret`` add the change and its audit entry to the caller's
session: both exist once the caller commits, or neither does.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, field_validator
from pydantic_core import PydanticCustomError
from sqlmodel import Session

from bot import audit
from bot.diff import matches_glob
from bot.events import Role
from bot.models import GATE_OFF, Project, Severity
from bot.repo_config import MAX_GLOB_CHARS, MAX_GLOBS, RepoConfig
from bot.secrets import SecretBox, new_secret, new_webhook_key

SEVERITIES = tuple(s.value for s in Severity)
# bot.review.gate.GATE_CHOICES, which this bottom layer cannot import (a test keeps them equal)
GATE_CHOICES = (GATE_OFF, *SEVERITIES)
REPO_CONFIG_KEYS = tuple(RepoConfig.model_fields)
MAX_USERNAME_CHARS = 256  # Project.bot_username
# Paths every pattern that ignores everything matches: such a pattern would turn reviews off unsaid.
_ANY_PATHS = ("a", "a/b.py", ".x/y/z.txt")
SETTINGS = ("severity_threshold", "ignore_globs", "enabled", "bot_username", "feedback_min_role",
            "author_labels", "repo_config", "threshold_floor", "repo_config_keys", "block_on",
            "max_comments", "quiet")  # fmt: skip
UPDATE, ROTATE = "project.update", "project.rotate_secret"


def _refuse(reason: str) -> PydanticCustomError:
    """A validation error whose message is ``reason`` as written (no "Value error, " before it)."""
    return PydanticCustomError("project_setting", "{reason}", {"reason": reason})


class ProjectChange(BaseModel):
    """A change to a project's settings; a field left out keeps its value."""

    model_config = ConfigDict(extra="forbid")

    severity_threshold: str | None = Field(
        None, description=f"Findings below this severity are not posted: {', '.join(SEVERITIES)}."
    )
    ignore_globs: list[str] | None = Field(
        None, description="Globs of paths not to review (gitignore-like); [] for the defaults."
    )
    enabled: StrictBool | None = Field(None, description="Review this project or not.")
    bot_username: str | None = Field(
        None, description="The bot's account on the forge (its own events are ignored); '' or null: unknown."
    )
    feedback_min_role: str | None = Field(
        None,
        description="Least role whose feedback labels findings: " + ", ".join(Role) + " or GitHub's "
        "read, triage, write, maintain, admin; 'default' or null for developer (write).",
    )
    author_labels: StrictBool | None = Field(
        None, description="Whether a merge request's author's feedback labels the findings of their own code."
    )
    repo_config: StrictBool | None = Field(
        None,
        description="Whether the repository's .reviewbot.toml (read at the merge request's base) applies.",
    )
    threshold_floor: str | None = Field(
        None, description="The least severe threshold the repository file may set; 'none' or null: no floor."
    )
    repo_config_keys: list[str] | str | None = Field(
        None,
        description="The keys the repository file may set (" + ", ".join(REPO_CONFIG_KEYS) + "), as a list "
        "or comma-separated; 'all' or null: every key.",
    )
    block_on: str | None = Field(
        None,
        description="Findings at this severity or above fail the 'reviewbot' commit status: "
        + ", ".join(GATE_CHOICES) + " (off: no status).",
    )  # fmt: skip
    max_comments: Annotated[StrictInt, Field(ge=1)] | None = Field(
        None, description="Inline comments a review posts at most; the rest are listed in the summary."
    )
    quiet: StrictBool | None = Field(None, description="No summary comment when a review has nothing to say.")

    @field_validator("severity_threshold", "enabled", "author_labels", "repo_config", "block_on",
                     "max_comments", "quiet")  # fmt: skip
    @classmethod
    def _given(cls, value: Any) -> Any:
        if value is None:
            raise _refuse("may not be null: leave it out to keep the current value")
        return value

    @field_validator("severity_threshold")
    @classmethod
    def _threshold(cls, value: str) -> str:
        name = value.strip().lower()
        if name not in SEVERITIES:
            raise _refuse(f"no severity {value!r}; one of {', '.join(SEVERITIES)}")
        return name

    @field_validator("ignore_globs")
    @classmethod
    def _globs(cls, value: list[str] | None) -> list[str]:
        globs = list(dict.fromkeys(_glob(glob) for glob in value or []))
        if len(globs) > MAX_GLOBS:
            raise _refuse(f"{len(globs)} patterns; at most {MAX_GLOBS}")
        return globs

    @field_validator("bot_username")
    @classmethod
    def _username(cls, value: str | None) -> str | None:
        name = (value or "").strip()
        if len(name) > MAX_USERNAME_CHARS or not name.isprintable():
            raise _refuse(f"not an account name: {value!r}")
        return name or None

    @field_validator("feedback_min_role")
    @classmethod
    def _role(cls, value: str | None) -> str | None:
        if value is None or value.strip().lower() == "default":
            return None
        try:
            return Role.of(value).value
        except ValueError:
            raise _refuse(
                f"no role {value!r}; one of {', '.join(Role)}, or GitHub's names for them"
            ) from None

    @field_validator("threshold_floor")
    @classmethod
    def _floor(cls, value: str | None) -> str | None:
        name = (value or "none").strip().lower()
        if name == "none":
            return None
        if name not in SEVERITIES:
            raise _refuse(f"no severity {value!r}; one of {', '.join(SEVERITIES)}, or none")
        return name

    @field_validator("repo_config_keys")
    @classmethod
    def _keys(cls, value: list[str] | str | None) -> list[str] | None:
        if value is None or (isinstance(value, str) and value.strip().lower() == "all"):
            return None
        given = value.split(",") if isinstance(value, str) else value
        keys = [key.strip() for key in given if key.strip()]
        unknown = [key for key in keys if key not in REPO_CONFIG_KEYS]
        if unknown:
            raise _refuse(f"no key {', '.join(unknown)!r}; keys are {', '.join(REPO_CONFIG_KEYS)}, or all")
        if not keys:
            raise _refuse(f"name a key at least; keys are {', '.join(REPO_CONFIG_KEYS)}, or all")
        return sorted(set(keys))

    @field_validator("block_on")
    @classmethod
    def _gate(cls, value: str) -> str:
        name = value.strip().lower()
        if name not in GATE_CHOICES:
            raise _refuse(f"no severity {value!r}; one of {', '.join(GATE_CHOICES)}")
        return name

    def values(self) -> dict[str, Any]:
        """What changes, as ``Project`` stores it: the fields given, normalised."""
        return {name: getattr(self, name) for name in SETTINGS if name in self.model_fields_set}


def _glob(value: str) -> str:
    """A pattern of paths not to review, trimmed; refused when it cannot mean what was meant."""
    glob = value.strip()
    if not glob:
        raise _refuse("an empty pattern: remove it (no patterns: the defaults)")
    if len(glob) > MAX_GLOB_CHARS:
        raise _refuse(f"a pattern of {len(glob)} characters; at most {MAX_GLOB_CHARS}")
    if not glob.isprintable():
        raise _refuse(f"pattern {glob!r} holds control characters or line breaks")
    if all(matches_glob(path, glob) for path in _ANY_PATHS):
        raise _refuse(f"pattern {glob!r} ignores every file: turn the project off instead (enabled)")
    return glob


def problems(error: ValidationError) -> list[tuple[str, str]]:
    """Each refused field and why, in the order given: for a message that names the form's field or
    the command's option."""
    found = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"] if not isinstance(part, int)) or "change"
        found.append((field, str(item["msg"])))
    return found


def describe(error: ValidationError) -> str:
    """One line: ``field: why; field: why``."""
    return "; ".join(f"{field}: {message}" for field, message in problems(error))


def settings_of(project: Project) -> dict[str, Any]:
    """The project's settings that a ``ProjectChange`` can change, as stored (JSON values)."""
    return {name: _plain(getattr(project, name)) for name in SETTINGS}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


def target(project: Project) -> str:
    """How the audit log names the project."""
    return f"project {project.id} ({project.forge} {project.path})"


def update_project(
    session: Session, project: Project, change: ProjectChange, actor: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Apply ``change`` to ``project`` in ``session`` with its audit entry (``project.update``, the
    changed keys before and after); the caller commits. Nothing changed: no entry, ``({}, {})``."""
    old = settings_of(project)
    for name, value in change.values().items():
        setattr(project, name, value)
    before, after = audit.changed(old, settings_of(project))
    session.add(project)
    if after:
        audit.record(session, actor, UPDATE, target(project), before, after, project.id)
    return before, after


def rotate_secret(session: Session, project: Project, box: SecretBox, actor: str) -> str:
    """Give ``project`` a new random webhook secret (sealed with ``box``) and its audit entry
    (``project.rotate_secret``, which never holds a secret); the caller commits, then shows the
    returned secret once. Deliveries signed with the old one are refused from then on."""
    secret = new_secret()
    before: dict[str, Any] = {"webhook_secret": "(old, not shown)"}
    after: dict[str, Any] = {"webhook_secret": "(new, shown once)"}
    if project.webhook_key is None:  # rows from before per-project URLs get theirs now
        project.webhook_key = new_webhook_key()
        before["webhook_key"], after["webhook_key"] = None, project.webhook_key
    project.webhook_secret = box.seal(secret)
    session.add(project)
    audit.record(session, actor, ROTATE, target(project), before, after, project.id)
    return secret
