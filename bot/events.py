"""What forges tell the bot, in forge-neutral terms: a webhook event and the reviewer's signal it
may carry, and the grammar of reviewers' commands (``/severity``, ``/dismiss``).

Forges parse their payloads into these types (``bot.forges.*_events``); the API dispatches them; the
feedback package stores them. This module is pure data: no database, no forge library.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from bot import untrusted
from bot.models import Severity

_COMMAND = re.compile(r"^\s*/(severity|dismiss)\b[ \t]*(.*)$", re.IGNORECASE | re.MULTILINE)


_QUOTE = re.compile(r"^[ \t]*>(.*)$", re.MULTILINE)


UP, DOWN = "+1", "-1"


class SignalKind(StrEnum):
    REACTION = "reaction"  # value "+1", "-1", or "" once revoked
    REPLY = "reply"  # value: the reply's text
    SEVERITY = "severity"  # value: the corrected severity (a "/severity X" reply)
    DISMISS = "dismiss"  # value: the reason given, may be "" (a "/dismiss" reply)
    RESOLVED = "resolved"  # value "true" or "false"
    ADDRESSED = "addressed"  # a later push changed the lines the finding pointed at


class Role(StrEnum):
    """A person's standing on a project, the same scale on both forges, lowest first (``rank``).

    GitLab's access levels map one to one (Guest 10 … Owner 50; less, or no membership: none);
    GitHub's repository permissions map by order: read → guest, triage → reporter, write →
    developer, maintain → maintainer, admin → owner (``Role.of``)."""

    NONE = "none"
    GUEST = "guest"
    REPORTER = "reporter"
    DEVELOPER = "developer"
    MAINTAINER = "maintainer"
    OWNER = "owner"

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    @classmethod
    def of(cls, name: str) -> Role:
        """A role by either forge's name for it (``developer`` or ``write``); ValueError otherwise."""
        name = name.strip().lower()
        return cls(GITHUB_PERMISSIONS.get(name, name))


GITHUB_PERMISSIONS = {
    "read": Role.GUEST,
    "triage": Role.REPORTER,
    "write": Role.DEVELOPER,
    "maintain": Role.MAINTAINER,
    "admin": Role.OWNER,
}


@dataclass(frozen=True)
class Command:
    kind: SignalKind  # SEVERITY or DISMISS
    value: str  # the severity, or the dismissal's reason


class CommandError(ValueError):
    """A reply that starts like a command but is not a valid one; the message says how to write it."""


def parse_command(text: str) -> Command | None:
    """``/severity critical|major|minor|trivial [reason]`` or ``/dismiss [reason]`` on a line of its
    own; None when the reply holds no command."""
    match = _COMMAND.search(text or "")
    if match is None:
        return None
    name, rest = match[1].lower(), match[2].strip()
    if name == "dismiss":
        return Command(SignalKind.DISMISS, rest)
    level = rest.split(maxsplit=1)[0].lower() if rest else ""
    if level not in {s.value for s in Severity}:
        raise CommandError(
            f"/severity needs one of {', '.join(s.value for s in Severity)}; got {level or 'nothing'!r}"
        )
    return Command(SignalKind.SEVERITY, level)


def quoted_text(text: str) -> str:
    """The quoted (``> ``) lines of a comment, without their quote marks; "" when it quotes nothing."""
    lines = (line.lstrip("> \t").rstrip() for line in _QUOTE.findall(text or ""))
    return "\n".join(line for line in lines if line)


@dataclass(frozen=True)
class Signal:
    """A reaction seen on a forge, before it is tied to its finding: by the bot comment it answers, by
    the GitLab discussion it was written in, or (a GitHub pull request comment) by the text of the
    finding it quotes."""

    kind: SignalKind
    value: str
    author: str
    source_event_id: str
    comment_id: str | None = None
    thread_id: str | None = None
    reply_id: str | None = None  # the reviewer's own comment, for replies and commands
    mr_number: int | None = None  # the merge request it was written on, when known: only its findings
    quote: str | None = None  # the quoted lines, when no comment or discussion names the finding

    @property
    def is_command(self) -> bool:
        return self.kind in (SignalKind.SEVERITY, SignalKind.DISMISS)

    def acknowledgement(self) -> str:
        """The bot's answer to a command, so the reviewer knows it was heard. A dismissal's reason is
        not repeated: it is the reviewer's text, and the bot would post it with its own rights."""
        if self.kind == SignalKind.SEVERITY:
            done = f"severity corrected to **{untrusted.inline(self.value)}**"
        else:
            done = "dismissed as not an issue" + (", with your reason" if self.value else "")
        return f"Noted: {done}. Thank you — this goes into the training data of the next model."

    def describe(self) -> str:
        if self.comment_id:
            target = f"comment {self.comment_id}"
        elif self.thread_id:
            target = f"discussion {self.thread_id}"
        else:
            target = f"the finding quoted on #{self.mr_number}"
        return f"{self.kind} {self.value!r} by {self.author or 'someone'} on {target}"


def signal_from_reply(
    text: str,
    author: str,
    source_event_id: str,
    reply_id: str,
    *,
    comment_id: str | None = None,
    thread_id: str | None = None,
    mr_number: int | None = None,
    quote: str | None = None,
) -> Signal:
    """A reply to a bot comment: a command when it holds one (an invalid one counts as a plain reply)."""
    try:
        command = parse_command(text)
    except CommandError:
        command = None
    kind, value = (command.kind, command.value) if command else (SignalKind.REPLY, text)
    return Signal(kind, value, author, source_event_id, comment_id, thread_id, reply_id, mr_number, quote)


@dataclass(frozen=True)
class Installation:
    """A GitHub App's installation changed: the repositories it gained and lost by name, or all of
    them at once (``disable_all``: uninstalled or suspended; ``enable_all``: unsuspended)."""

    installation_id: int
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    disable_all: bool = False
    enable_all: bool = False


@dataclass(frozen=True)
class WebhookEvent:
    """What a verified delivery asks for: a review of ``number`` at ``head_sha``, a signal to record,
    that merge request's closing or reopening (``closed``), a GitHub App's repositories to add or
    disable (``installation``), or nothing (and why)."""

    project_path: str
    actor: str
    number: int | None = None
    head_sha: str | None = None
    signal: Signal | None = None  # a reviewer's reaction to record
    closed: bool | None = None  # merged or closed (True), reopened (False): feedback polling follows it
    ignored: str | None = None
    installation: Installation | None = None
    installation_id: int | None = None  # the GitHub App installation that sent it, when one did
