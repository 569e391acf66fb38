"""Who may use the console and its API: the admin token, given once at sign-in (a session cookie)
or with each API call (``Authorization: Bearer``).

- The session is a cookie sealed with a key derived from ``REVIEWBOT_SECRET_KEY`` (Fernet: encrypted
  and signed, with its issue time): HttpOnly, SameSite=Strict, Secure when the public URL is https,
  valid ``SESSION_TTL_S``. It holds who signed in and the session's CSRF token.
- Every state-changing request made with the cookie carries that CSRF token: a form's hidden
  ``csrf_token`` field, or the ``X-CSRF-Token`` header of a script's call. A bearer call needs none
  (a browser never adds that header on its own).
- Sign-in attempts are limited per client address (``SIGN_IN_ATTEMPTS`` a minute), wrong or not.
- Nothing answers without the token set (``REVIEWBOT_ADMIN_TOKEN``): the console says how to set it.
"""

from __future__ import annotations

import hmac
import json
import secrets
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken
from fastapi import HTTPException, Request

from bot.config import Settings
from bot.secrets import SecretBox

COOKIE = "reviewbot_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SESSION_TTL_S = 12 * 3600
SIGN_IN_ATTEMPTS = 10  # per client address and minute
ADMIN = "admin token"  # who an admin-token session or call is, in the audit log
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Actor:
    """Who is making a request: its name in the audit log, and its session's CSRF token (None for a
    bearer call, which needs none)."""

    name: str
    csrf: str | None = None


class NotSignedIn(Exception):
    """A console page asked for without a session: answered with the sign-in page."""


class Auth:
    """The console's sign-in, sessions, CSRF checks and sign-in rate limit."""

    def __init__(self, settings: Settings, box: SecretBox) -> None:
        value = settings.admin_token.get_secret_value() if settings.admin_token else ""
        self._token = value.encode() if value else None  # an empty token would let an empty one in
        self._fernet = Fernet(box.session_key())
        self.secure = str(settings.public_url).startswith("https://")
        self._attempts: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    @property
    def configured(self) -> bool:
        return self._token is not None

    def token_matches(self, given: str) -> bool:
        return self._token is not None and hmac.compare_digest(given.encode(), self._token)

    def allow_attempt(self, client: str, now: float | None = None) -> bool:
        """Count a sign-in attempt of ``client``; False past ``SIGN_IN_ATTEMPTS`` in the last minute."""
        now = time.monotonic() if now is None else now
        with self._lock:
            recent = self._attempts[client]
            while recent and recent[0] <= now - 60:
                recent.popleft()
            if len(recent) >= SIGN_IN_ATTEMPTS:
                return False
            recent.append(now)
            return True

    def new_session(self, name: str = ADMIN) -> tuple[str, Actor]:
        """A sealed cookie value for a new session, and its actor."""
        actor = Actor(name, secrets.token_urlsafe(32))
        sealed = self._fernet.encrypt(json.dumps({"sub": actor.name, "csrf": actor.csrf}).encode())
        return sealed.decode(), actor

    def session(self, request: Request) -> Actor | None:
        """The actor of the request's session cookie; None when absent, forged or expired."""
        cookie = request.cookies.get(COOKIE)
        if not cookie or self._token is None:
            return None
        try:
            data = json.loads(self._fernet.decrypt(cookie.encode(), ttl=SESSION_TTL_S))
        except (InvalidToken, ValueError):
            return None
        return Actor(str(data["sub"]), str(data["csrf"]))

    def bearer(self, request: Request) -> Actor | None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.token_matches(given):
            return Actor(ADMIN)
        return None

    def check_csrf(self, actor: Actor, given: str | None) -> None:
        """HTTP 403 unless a session's request carries its CSRF token."""
        if actor.csrf is None:
            return  # a bearer call
        if not given or not hmac.compare_digest(given.encode(), actor.csrf.encode()):
            raise HTTPException(403, "the form is stale or was not sent by this console: reload the page")

    def api_actor(self, request: Request) -> Actor:
        """The actor of an API call (bearer, or the session with its CSRF header on a change); 401/403."""
        if self._token is None:
            raise HTTPException(403, "set REVIEWBOT_ADMIN_TOKEN to use the console and its API")
        actor = self.bearer(request) or self.session(request)
        if actor is None:
            raise HTTPException(
                401, "sign in at /admin/login, or send Authorization: Bearer REVIEWBOT_ADMIN_TOKEN"
            )
        if request.method not in SAFE_METHODS:
            self.check_csrf(actor, request.headers.get(CSRF_HEADER))
        return actor

    def page_actor(self, request: Request) -> Actor:
        """The actor of a console page (its session); ``NotSignedIn`` sends the sign-in page."""
        actor = self.session(request) if self._token is not None else None
        if actor is None:
            raise NotSignedIn
        return actor
