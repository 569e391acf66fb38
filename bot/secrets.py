"""Stored credentials: webhook secrets encrypted at rest, and each project's webhook URL key.

Secrets are sealed with Fernet (AES-128-CBC and HMAC-SHA256) under ``REVIEWBOT_SECRET_KEY``. With no
key configured and a SQLite database (the embedded setup), a key is made once into a 0600 file beside
the database (``reviewbot.db.key``) and a warning names it; a PostgreSQL database needs the variable,
since its hosts share no folder. A sealed value starts with ``fernet:``; rows written in plain text by
an older reviewbot are sealed by ``reviewbot db upgrade`` (``seal_stored``), which also gives every
project a webhook key; until then a plain row never authenticates.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken
from sqlmodel import Session, col, select

from bot.config import ConfigError, Settings
from bot.models import Project

log = logging.getLogger(__name__)

SEALED = "fernet:"


class SecretBox:
    """Seals and opens stored secrets with one Fernet key."""

    def __init__(self, key: str) -> None:
        self._key = key.encode()
        try:
            self._fernet = Fernet(self._key)
        except (ValueError, TypeError):
            raise ConfigError(
                "REVIEWBOT_SECRET_KEY: not a Fernet key (32 url-safe base64-encoded bytes; make one with "
                "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`)"
            ) from None

    def seal(self, plain: str) -> str:
        return SEALED + self._fernet.encrypt(plain.encode()).decode()

    def queue_key(self) -> bytes:
        """The key queued jobs are signed with (``bot.queue.codec``)."""
        return hashlib.sha256(b"reviewbot queue\0" + self._key).digest()

    def session_key(self) -> bytes:
        """The Fernet key the console's session cookies are sealed with (``bot.console.auth``)."""
        return base64.urlsafe_b64encode(hashlib.sha256(b"reviewbot console\0" + self._key).digest())

    def open(self, stored: str) -> str | None:
        """The plain secret; None when ``stored`` is not sealed with this key (or not sealed at all)."""
        if not stored.startswith(SEALED):
            return None
        try:
            return self._fernet.decrypt(stored.removeprefix(SEALED).encode()).decode()
        except InvalidToken:
            return None


def key_file(database_url: str) -> Path | None:
    """Where the embedded setup keeps its key: beside the SQLite database; None for PostgreSQL."""
    if not database_url.startswith("sqlite:///") or database_url == "sqlite:///:memory:":
        return None
    return Path(database_url.removeprefix("sqlite:///") + ".key")


def secret_box(settings: Settings) -> SecretBox:
    """The box of ``REVIEWBOT_SECRET_KEY``, or of the key file beside the SQLite database (made once)."""
    if settings.secret_key is not None:
        return SecretBox(settings.secret_key.get_secret_value())
    path = key_file(settings.database_url)
    if path is None:
        raise ConfigError("REVIEWBOT_SECRET_KEY is needed with a PostgreSQL database (a Fernet key)")
    return SecretBox(_read_or_make_key(path))


def _read_or_make_key(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)  # the data folder, on a first run
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(descriptor, "w") as file:
        file.write(Fernet.generate_key().decode() + "\n")
    log.warning(
        "REVIEWBOT_SECRET_KEY is not set: made a key in %s; keep it with the database and back it up "
        "(without it the stored webhook secrets cannot be read)",
        path,
    )
    return path.read_text().strip()


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def new_webhook_key() -> str:
    """The last part of a project's own webhook URL; unguessable, though the secret is what authenticates."""
    return secrets.token_urlsafe(18)


def seal_stored(engine: sa.Engine, box_for: Callable[[], SecretBox]) -> int:
    """Seal the plain-text secrets written before encryption (the key is asked for only then), and
    give every project a webhook key; returns how many projects changed."""
    changed = 0
    with Session(engine) as session:
        query = select(Project).where(
            sa.or_(
                col(Project.webhook_key).is_(None), sa.not_(col(Project.webhook_secret).startswith(SEALED))
            )
        )
        for project in session.exec(query).all():
            if not project.webhook_secret.startswith(SEALED):
                project.webhook_secret = box_for().seal(project.webhook_secret)
            project.webhook_key = project.webhook_key or new_webhook_key()
            session.add(project)
            changed += 1
        session.commit()
    return changed
