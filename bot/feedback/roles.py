"""Who may teach the model: each signal's author's role on the project, read from the forge and
cached a few minutes, and the rule saying whose signals label findings.

A signal is recorded with role ``''`` (not known yet) and never labels until a queue job or the
poll fills its role in (``resolve_roles``). It labels when its author is not a bot, holds at least
the project's ``feedback_min_role`` (default developer: GitLab Developer, GitHub write), and is not
the merge request's author (unless the project sets ``author_labels``). An ``addressed`` signal
comes from a push, not a person, and needs no role.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlmodel import Session, col, select

from bot.events import Role, SignalKind
from bot.models import Feedback, Finding, Project, Review

DEFAULT_MIN_ROLE = Role.DEVELOPER
ROLE_TTL_S = 300.0  # a role taken away on the forge stops counting within five minutes


def min_role(project: Project) -> Role:
    return Role(project.feedback_min_role) if project.feedback_min_role else DEFAULT_MIN_ROLE


def is_bot(project: Project, username: str) -> bool:
    """The project's bot, or a GitHub App's account (``name[bot]``)."""
    return username == project.bot_username or username.endswith("[bot]")


def may_label(signal: Feedback, project: Project, mr_author: str | None) -> bool:
    """Whether ``signal`` (on a finding of ``mr_author``'s merge request) counts towards its label."""
    if signal.kind == SignalKind.ADDRESSED:
        return True
    if not signal.role or is_bot(project, signal.author):
        return False
    if signal.author == mr_author and not project.author_labels:
        return False  # their own code: a reviewer of it, not its author, says how severe a finding is
    return Role(signal.role).rank >= min_role(project).rank


class RoleCache:
    """Roles by (project id, username) for ``ROLE_TTL_S``, per process: one forge call per reviewer
    and project every few minutes, however many signals they send. Threads may race on a key; the
    cost is one extra lookup."""

    def __init__(self, ttl_s: float = ROLE_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s, self.clock = ttl_s, clock
        self._roles: dict[tuple[int, str], tuple[Role, float]] = {}

    def role(self, project_id: int, username: str, lookup: Callable[[str], Role]) -> Role:
        now = self.clock()
        cached = self._roles.get((project_id, username))
        if cached is not None and cached[1] > now:
            return cached[0]
        role = lookup(username)
        self._roles[(project_id, username)] = (role, now + self.ttl_s)
        return role


def resolve_roles(session: Session, project_id: int, lookup: Callable[[str], Role], cache: RoleCache) -> int:
    """Fill in the role of every signal of ``project_id`` whose author's role is not known yet, with
    ``lookup`` (the forge's ``member_role``); returns how many. The caller commits; a lookup that
    fails raises (``ForgeError``), and the roles cached by then make the next try cheaper."""
    rows = session.exec(
        select(Feedback)
        .join(Finding, col(Feedback.finding_id) == col(Finding.id))
        .join(Review, col(Finding.review_id) == col(Review.id))
        .where(col(Review.project_id) == project_id, col(Feedback.role) == "", col(Feedback.author) != "")
    ).all()
    for row in rows:
        row.role = cache.role(project_id, row.author, lookup)
        session.add(row)
    return len(rows)
