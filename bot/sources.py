"""Sources: one webhook and one secret serving many projects (a GitLab group, a GitHub App).

A source's projects are rows like any other, pointing back at it (``Project.source_id``): added on
the first delivery that names them (a group's project) or when the App is installed on them, and
disabled, never deleted, when the App leaves them (their reviews and feedback stay). A project
registered on its own (``reviewbot project add``) is never taken over by a source.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlmodel import Session, col, select

from bot.events import Installation
from bot.models import Project, Source, SourceKind
from bot.secrets import SecretBox


def claims(kind: SourceKind, name: str, path: str) -> bool:
    """Whether a delivery signed with the source's secret may name ``path``: a group's projects are
    under it (GitLab's paths ignore case); an App's are wherever it is installed."""
    if kind is SourceKind.GITHUB_APP:
        return bool(path)
    return path.lower().startswith(name.lower().rstrip("/") + "/")


def add_project(
    session: Session, source: Source, path: str, installation_id: int | None = None, *, enable: bool = False
) -> Project | None:
    """The source's project at ``path``, added with the source's settings when new; an App's takes
    ``installation_id``, and ``enable`` turns a disabled one back on (the App was installed on it
    again). None when ``path`` is registered on its own or by another source."""
    assert source.id is not None
    existing = session.exec(
        select(Project).where(
            col(Project.forge) == source.forge,
            col(Project.forge_url) == source.forge_url,
            col(Project.path) == path,
        )
    ).first()
    if existing is not None and existing.source_id != source.id:
        return None
    project = existing or Project(
        forge=source.forge,
        forge_url=source.forge_url,
        path=path,
        webhook_secret=source.webhook_secret,  # a copy; deliveries are checked against the source's own
        token_env=source.token_env,
        bot_username=source.bot_username,
        severity_threshold=source.severity_threshold,
        source_id=source.id,
    )
    if installation_id is not None and (enable or project.installation_id is None):
        project.installation_id = installation_id
    if enable:
        project.enabled = True
    session.add(project)
    session.flush()
    return project


@dataclass
class Changes:
    """What an installation event did to the App's projects, by path."""

    added: list[str] = field(default_factory=list)
    enabled: list[str] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)
    not_taken: list[str] = field(default_factory=list)  # registered on their own: left as they are

    def describe(self) -> str:
        parts = [f"{len(paths)} {what}" for what, paths in vars(self).items() if paths]
        return ", ".join(parts).replace("_", " ") or "no repository changed"


def apply_installation(session: Session, source: Source, change: Installation) -> Changes:
    """Add or re-enable the repositories the App gained, disable those it lost."""
    assert source.id is not None
    changes = Changes()
    if change.disable_all or change.enable_all:
        of_installation = session.exec(
            select(Project).where(
                col(Project.source_id) == source.id, col(Project.installation_id) == change.installation_id
            )
        ).all()
        for project in of_installation:
            if project.enabled != change.enable_all:
                project.enabled = change.enable_all
                session.add(project)
                (changes.enabled if change.enable_all else changes.disabled).append(project.path)
    for path in change.added:
        before = _of_source(session, source, path)
        if add_project(session, source, path, change.installation_id, enable=True) is None:
            changes.not_taken.append(path)
        elif before is None:
            changes.added.append(path)
        elif not before[1]:
            changes.enabled.append(path)
    for path in change.removed:
        removed = session.exec(
            select(Project).where(col(Project.source_id) == source.id, col(Project.path) == path)
        ).first()
        if removed is not None and removed.enabled:
            removed.enabled = False
            session.add(removed)
            changes.disabled.append(path)
    session.flush()
    return changes


def sync_app(session: Session, source: Source, installed: Mapping[int, Sequence[str]]) -> Changes:
    """Make the App's projects what GitHub lists (installation id → repositories), as the events
    missed while the service was down would have: add or re-enable those listed, disable the rest."""
    assert source.id is not None
    changes = Changes()
    for installation_id, paths in installed.items():
        done = apply_installation(session, source, Installation(installation_id, added=tuple(paths)))
        for name, paths_changed in vars(done).items():
            getattr(changes, name).extend(paths_changed)
    listed = {path for paths in installed.values() for path in paths}
    enabled = session.exec(
        select(Project).where(col(Project.source_id) == source.id, col(Project.enabled))
    ).all()
    for project in enabled:
        if project.path not in listed:
            project.enabled = False
            session.add(project)
            changes.disabled.append(project.path)
    session.flush()
    return changes


def _of_source(session: Session, source: Source, path: str) -> tuple[int, bool] | None:
    """The id and enabled flag of the source's project at ``path``, read before it changes."""
    row = session.exec(
        select(Project.id, Project.enabled).where(
            col(Project.source_id) == source.id, col(Project.path) == path
        )
    ).first()
    return None if row is None or row[0] is None else (row[0], row[1])


@dataclass(frozen=True)
class AppKey:
    """What authenticates as a GitHub App: its id and private key (PEM)."""

    app_id: int
    private_key: str


def app_key(session: Session, source_id: int, box: SecretBox) -> AppKey | None:
    """The App key of a source; None when it is no App, or its key cannot be opened with ``box``."""
    source = session.get(Source, source_id)
    if source is None or source.kind != SourceKind.GITHUB_APP or source.app_id is None:
        return None
    private_key = box.open(source.private_key or "")
    return AppKey(source.app_id, private_key) if private_key else None


class AppKeys:
    """The App key of a source by its id, read when asked (a key replaced by ``reviewbot app add``
    is used from the next adapter on): what ``bot.forges.forge_for`` authenticates an App's projects with."""

    def __init__(self, engine: sa.Engine, box: SecretBox) -> None:
        self.engine, self.box = engine, box

    def __call__(self, source_id: int) -> AppKey | None:
        with Session(self.engine) as session:
            return app_key(session, source_id, self.box)
