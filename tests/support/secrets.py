"""The secret key of the tests: settings that carry it, and project rows whose webhook secret it seals."""

from __future__ import annotations

from typing import Any

from cryptography.fernet import Fernet

from bot.config import Settings, load_settings
from bot.models import Project
from bot.secrets import SecretBox

SECRET_KEY = Fernet.generate_key().decode()
BOX = SecretBox(SECRET_KEY)


def settings_with_key(**overrides: Any) -> Settings:
    """``load_settings(**overrides)`` with the tests' secret key."""
    return load_settings(secret_key=SECRET_KEY, **overrides)


def project_row(webhook_secret: str, **fields: Any) -> Project:
    """A ``Project`` whose webhook secret is stored sealed, as ``reviewbot project add`` stores it."""
    return Project(webhook_secret=BOX.seal(webhook_secret), **fields)
