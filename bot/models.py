"""Database tables of the whole product (SQLModel). Every change here needs an Alembic migration.

Enumerated columns are plain strings (validated by the ``StrEnum``s below), so adding a value
never needs a database migration.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlmodel import JSON, Column, Field, SQLModel

# Named constraints, so later migrations can alter them on SQLite (batch mode) and PostgreSQL alike.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def _when(**kwargs: Any) -> Any:
    return Field(sa_type=sa.DateTime(timezone=True), **kwargs)


class ForgeKind(StrEnum):
    GITLAB = "gitlab"
    GITHUB = "github"


class Severity(StrEnum):
    """Ordered from most to least severe; see ``rank``."""

    CRITICAL = "critical"
    MAJOR = "major"
    MINOR = "minor"
    TRIVIAL = "trivial"

    @property
    def rank(self) -> int:
        """Higher is more severe: critical 3 … trivial 0."""
        return len(Severity) - 1 - list(Severity).index(self)


class Task(StrEnum):
    """What a model is asked to do; each task can be served by its own adapter."""

    FIND = "find"  # diff chunk -> candidate issues
    SEVERITY = "severity"  # {code, review} -> issue_type (the seed's severity rating task)
    EXPLANATION = "explanation"  # {code, review, issue_type} -> explanation


class ReviewStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SUPERSEDED = "superseded"  # the MR moved to a newer head before this review ran


class FindingStatus(StrEnum):
    PENDING = "pending"  # recorded before posting: a crash leaves it to the retry, never unmatched
    POSTED = "posted"  # on the forge, with its comment id
    SUPPRESSED = "suppressed"  # like one trusted reviewers dismissed (``like_finding_id``): not posted
    LISTED = "listed"  # past the review's comment cap: named in the summary, not posted inline
    BELOW = "below"  # rated below the threshold: never posted, kept for the blind audit set


class Side(StrEnum):
    NEW = "new"  # added or context line, numbered in the new file
    OLD = "old"  # removed line, numbered in the old file


class ModelStatus(StrEnum):
    CANDIDATE = "candidate"
    CANARY = "canary"  # promoted: serves a share of merge requests beside the active one (feedback.canary)
    ACTIVE = "active"
    RETIRED = "retired"  # was active, replaced by a newer promotion
    ROLLED_BACK = "rolled_back"  # taken back by an admin or its canary; a rollback never restores it


class RunStatus(StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class ExampleSplit(StrEnum):
    TRAIN = "train"
    HELDOUT = "heldout"  # never trained on, never shown to the teacher: the promotion gate scores on it


class ExampleSource(StrEnum):
    FEEDBACK = "feedback"  # reviewers' confirmations and corrections
    SEED = "seed"  # a data file given by the admin
    TEACHER = "teacher"  # written by the teacher in a flywheel round
    ANALYZER = "analyzer"  # a static analyzer's finding, labelled by a table (`flywheel bootstrap`)


class SourceKind(StrEnum):
    GITLAB_GROUP = "gitlab_group"  # a group hook: every project under the group, added on its first delivery
    GITHUB_APP = "github_app"  # an App: the repositories it is installed on, added by installation events


GATE_OFF = "off"  # ``Project.block_on`` without a merge gate


class Source(SQLModel, table=True):
    """One webhook, one secret, many projects: a GitLab group or a GitHub App. Its projects point back
    at it (``Project.source_id``) and are added as the forge tells of them."""

    __table_args__ = (sa.UniqueConstraint("forge", "forge_url", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=16)
    forge: str = Field(max_length=16)
    forge_url: str = Field(max_length=512)
    name: str = Field(max_length=512, description="the group's full path, or the App's id")
    webhook_secret: str = Field(max_length=512, description="encrypted at rest (REVIEWBOT_SECRET_KEY)")
    webhook_key: str = Field(max_length=64, unique=True, description="its webhook URL: /webhooks/FORGE/KEY")
    token_env: str | None = Field(default=None, max_length=128, description="a group's token variable")
    app_id: int | None = Field(default=None, description="a GitHub App's id")
    private_key: str | None = Field(
        default=None, sa_type=sa.Text, description="a GitHub App's private key (PEM), encrypted at rest"
    )
    bot_username: str | None = Field(default=None, max_length=256)
    severity_threshold: str = Field(
        default=Severity.MINOR, max_length=16, description="the threshold of the projects it adds"
    )
    enabled: bool = True
    created_at: datetime = _when(default_factory=utcnow)


class Project(SQLModel, table=True):
    __table_args__ = (sa.UniqueConstraint("forge", "forge_url", "path"),)

    id: int | None = Field(default=None, primary_key=True)
    forge: str = Field(max_length=16)
    forge_url: str = Field(max_length=512)
    path: str = Field(max_length=512, description="namespace/project on GitLab, owner/repo on GitHub")
    webhook_secret: str = Field(max_length=512, description="encrypted at rest (REVIEWBOT_SECRET_KEY)")
    webhook_key: str | None = Field(
        default=None, max_length=64, unique=True, description="its own webhook URL: /webhooks/FORGE/KEY"
    )
    token_env: str | None = Field(default=None, max_length=128, description="variable holding the API token")
    bot_username: str | None = Field(
        default=None, max_length=256, description="the bot's account there; its own events are ignored"
    )
    severity_threshold: str = Field(default=Severity.MINOR, max_length=16)
    ignore_globs: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    enabled: bool = True
    feedback_min_role: str | None = Field(
        default=None,
        max_length=16,
        description="least role whose signals label findings; None: the forge's default",
    )
    reconciled_at: datetime | None = _when(
        default=None,
        description="its last reconciliation poll; MRs updated since are checked next",
    )
    author_labels: bool = Field(
        default=False, sa_column_kwargs={"server_default": sa.false()},
        description="whether the MR author's signals label the findings of their own MR",
    )  # fmt: skip
    source_id: int | None = Field(
        default=None, foreign_key="source.id", index=True, description="the group or App that added it"
    )
    installation_id: int | None = Field(
        default=None, sa_type=sa.BigInteger, description="the GitHub App installation serving it"
    )
    repo_config: bool = Field(
        default=True, sa_column_kwargs={"server_default": sa.true()},
        description="whether the repository's own .reviewbot.toml (read at the MR's base) applies",
    )  # fmt: skip
    threshold_floor: str | None = Field(
        default=None, max_length=16, description="the least severe threshold the repository file may set"
    )
    repo_config_keys: list[str] | None = Field(
        default=None, sa_column=Column(JSON, nullable=True),
        description="the keys the repository file may set; None: every key",
    )  # fmt: skip
    repo_config_status: str | None = Field(
        default=None, max_length=512, description='last read of the file: "ok: PATH", "none", or its error'
    )
    repo_config_checked_at: datetime | None = _when(default=None, description="when the file was last read")
    block_on: str = Field(
        default=GATE_OFF, max_length=16, sa_column_kwargs={"server_default": GATE_OFF},
        description="least severity that fails the reviewbot commit status; off: no status",
    )  # fmt: skip
    max_comments: int = Field(
        default=10, sa_column_kwargs={"server_default": "10"},
        description="inline comments a review posts at most; the rest are listed in the summary",
    )  # fmt: skip
    quiet: bool = Field(
        default=False, sa_column_kwargs={"server_default": sa.false()},
        description="no summary comment when a review has nothing to say",
    )  # fmt: skip
    created_at: datetime = _when(default_factory=utcnow)


class Review(SQLModel, table=True):
    __table_args__ = (
        sa.Index("ix_review_project_mr", "project_id", "mr_number"),
        sa.Index("ix_review_status", "status"),
    )

    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="project.id")
    mr_number: int
    head_sha: str = Field(max_length=64)
    mr_author: str | None = Field(default=None, max_length=256, description="the MR's author, from the forge")
    status: str = Field(default=ReviewStatus.QUEUED, max_length=16)
    error: str | None = None
    timings: dict[str, float] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    file_digests: dict[str, str] = Field(
        default_factory=dict,
        sa_column=Column(JSON, nullable=False, server_default="{}"),
        description="path -> digest of the file's diff when reviewed; a re-review skips unchanged files",
    )
    created_at: datetime = _when(default_factory=utcnow)
    started_at: datetime | None = _when(default=None)
    finished_at: datetime | None = _when(default=None)
    mr_closed_at: datetime | None = _when(
        default=None, description="when its merge request was merged or closed; feedback polling ends after"
    )
    attempts: int = Field(
        default=0,
        sa_column_kwargs={"server_default": "0"},
        description="runs started (REVIEW_MAX_ATTEMPTS)",
    )
    lease_until: datetime | None = _when(
        default=None,
        description="its worker's lease, renewed by a heartbeat; past it, taken over",
    )
    report: dict[str, Any] = Field(
        default_factory=dict,
        sa_column=Column(JSON, nullable=False, server_default="{}"),
        description="what it did, for the console: findings by severity, posted, suppressed, listed, "
        "skipped and failed files (each list at most REPORT_LISTED)",
    )
    summary_comment_id: str | None = Field(
        default=None,
        max_length=128,
        description="the summary comment it wrote; the commit status links to it",
    )


class Finding(SQLModel, table=True):
    """A finding as posted (or kept below the threshold) on a merge request, with the model that rated it."""

    id: int | None = Field(default=None, primary_key=True)
    review_id: int = Field(foreign_key="review.id", index=True)
    path: str = Field(max_length=1024)
    line: int | None = Field(default=None, description="None for a file-level finding")
    side: str = Field(default=Side.NEW, max_length=8)
    severity: str = Field(max_length=16)
    title: str = Field(max_length=512)
    review: str = Field(description="what the reviewer (the model) wrote about the code")
    explanation: str = ""
    code: str = Field(default="", description="the code the finding judged, as shown to the model")
    anchor_text: str = Field(
        default="", description="the text of the line it is on; a push that removes it addresses it"
    )
    fingerprint: str = Field(max_length=64, index=True)
    forge_comment_id: str | None = Field(default=None, max_length=128, index=True)
    forge_thread_id: str | None = Field(
        default=None, max_length=128, index=True, description="GitLab discussion id; replies arrive by it"
    )
    model_version: str = Field(max_length=128)
    status: str = Field(
        default=FindingStatus.POSTED,
        max_length=16,
        sa_column_kwargs={"server_default": "posted"},
    )
    settings_digest: str = Field(
        default="", max_length=64, sa_column_kwargs={"server_default": ""},
        description="sha256 of the review settings in force (bot.repo_config.Effective.digest)",
    )  # fmt: skip
    instructions: str = Field(
        default="", sa_type=sa.Text, sa_column_kwargs={"server_default": ""},
        description="the repository file's instructions that reached the prompts for its file",
    )  # fmt: skip
    confidence: float | None = Field(
        default=None, description="the model's probability of its severity (None: the server gave none)"
    )
    like_finding_id: int | None = Field(
        default=None, foreign_key="finding.id",
        description="suppressed: the dismissed finding it was too similar to",
    )  # fmt: skip
    similarity: float | None = Field(default=None, description="its similarity to ``like_finding_id``")
    suppresses: bool = Field(
        default=True, sa_column_kwargs={"server_default": sa.true()},
        description="once dismissed, whether it suppresses similar findings (feedback unsuppress)",
    )  # fmt: skip
    created_at: datetime = _when(default_factory=utcnow)


class Feedback(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    finding_id: int = Field(foreign_key="finding.id", index=True)
    kind: str = Field(max_length=32, description="reaction, reply, severity, dismiss, resolved, addressed")
    value: str = ""
    author: str = Field(default="", max_length=256)
    role: str = Field(
        default="", max_length=16, sa_column_kwargs={"server_default": ""},
        description="the author's role on the project when recorded (bot.feedback.roles); '' not known yet",
    )  # fmt: skip
    created_at: datetime = _when(default_factory=utcnow)
    source_event_id: str = Field(max_length=256, unique=True, description="award/comment id or poll snapshot")


class Delivery(SQLModel, table=True):
    __table_args__ = (sa.UniqueConstraint("forge", "delivery_id"),)

    id: int | None = Field(default=None, primary_key=True)
    forge: str = Field(max_length=16)
    delivery_id: str = Field(max_length=256)
    received_at: datetime = _when(default_factory=utcnow)
    outcome: str = Field(default="", max_length=256, description="what was done with it, or why ignored")


class ModelVersion(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    task: str = Field(max_length=32, index=True)
    adapter_name: str = Field(max_length=128, unique=True, description="served name, never reused")
    path: str = Field(max_length=1024)
    base_model: str = Field(max_length=256)
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: str = Field(default=ModelStatus.CANDIDATE, max_length=16)
    created_at: datetime = _when(default_factory=utcnow)
    promoted_at: datetime | None = _when(default=None)
    canary_share: float | None = Field(
        default=None, description="share of merge requests it served as a canary; None: never a canary"
    )
    canary_started_at: datetime | None = _when(default=None, description="when its canary began")
    canary_ended_at: datetime | None = _when(default=None, description="promoted fully or rolled back")
    canary_reason: str | None = Field(
        default=None, sa_type=sa.Text, description="why its canary ended, with the live figures"
    )
    canary_figures: dict[str, Any] | None = Field(
        default=None, sa_column=Column(JSON, nullable=True),
        description="its canary's last check: both sides' live rates, the looks taken (bot.feedback.canary)",
    )  # fmt: skip
    training: dict[str, Any] = Field(
        default_factory=dict,
        sa_column=Column(JSON, nullable=False, server_default="{}"),
        description="what it was trained with: settings as applied, torch/transformers/peft/trl versions, "
        "a hash of the chats, examples left out as too long (flywheel.finetune.training_record)",
    )


class FlywheelRun(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    task: str = Field(max_length=32, index=True)
    status: str = Field(default=RunStatus.RUNNING, max_length=16)
    rounds: list[dict[str, Any]] = Field(
        default_factory=list,
        sa_column=Column(JSON, nullable=False),
        description="one entry per round: scores, sizes, timings, adapter name",
    )
    error: str | None = None
    outcome: str | None = Field(
        default=None, description="what the run changed: the version promoted, or why none"
    )
    started_at: datetime = _when(default_factory=utcnow)
    finished_at: datetime | None = _when(default=None)


class TrainingExample(SQLModel, table=True):
    """One labelled example of a task, for the flywheel; its split is decided once and kept."""

    __table_args__ = (sa.UniqueConstraint("task", "key"),)

    id: int | None = Field(default=None, primary_key=True)
    task: str = Field(max_length=32, index=True)
    key: str = Field(max_length=64, description="digest of the question; one example per question")
    split: str = Field(max_length=16)
    source: str = Field(max_length=16)
    question: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    answer: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    meta: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    difficulty: int | None = None
    run_id: int | None = Field(default=None, foreign_key="flywheelrun.id")
    round: int | None = None
    created_at: datetime = _when(default_factory=utcnow)


class GoldenSet(SQLModel, table=True):
    """An admin's held-out file for a task, stored once per version: reviewers' feedback cannot change
    it, and promotion needs no regression on the newest one."""

    __table_args__ = (sa.UniqueConstraint("task", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    task: str = Field(max_length=32, index=True)
    version: int
    source: str = Field(max_length=1024, description="the file it was read from")
    digest: str = Field(max_length=64, description="of its examples; the same file twice is one version")
    size: int
    audit_labels: int = Field(
        default=0, sa_column_kwargs={"server_default": "0"},
        description="audit labels added to the admin's newest file (bot.feedback.audit_set); 0: a file alone",
    )  # fmt: skip
    created_at: datetime = _when(default_factory=utcnow)


class GoldenExample(SQLModel, table=True):
    __table_args__ = (sa.UniqueConstraint("set_id", "key"),)

    id: int | None = Field(default=None, primary_key=True)
    set_id: int = Field(foreign_key="goldenset.id", index=True)
    key: str = Field(max_length=64, description="digest of the question, as for training examples")
    question: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    answer: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))


class AuditItem(SQLModel, table=True):
    """A finding drawn into the blind audit set (``bot.feedback.audit_set``), and its label once a trusted
    auditor gave it without seeing the model's severity. Held apart from ``feedback``: no reviewer's
    signal reads or changes it."""

    id: int | None = Field(default=None, primary_key=True)
    finding_id: int = Field(foreign_key="finding.id", unique=True)
    fingerprint: str = Field(
        max_length=64, index=True, description="the finding's: its copies on later pushes are not trained on"
    )
    week: str = Field(max_length=8, index=True, description="ISO week of the findings it was drawn from")
    stratum: str = Field(max_length=32, description="the model's severity, and whether it was posted")
    label: str | None = Field(
        default=None, max_length=16, description="a severity, not_an_issue or skip; None: not labelled yet"
    )
    auditor: str | None = Field(default=None, max_length=256, description="who labelled it: 'cli:USER', …")
    sampled_at: datetime = _when(default_factory=utcnow)
    labelled_at: datetime | None = _when(default=None)


class Outbox(SQLModel, table=True):
    """A job written in the same transaction as what caused it; a relay moves it to the queue and
    stamps ``sent_at``, so a job is never lost when the queue is down (``bot.outbox``)."""

    id: int | None = Field(default=None, primary_key=True)
    task: str = Field(max_length=32, description="review, feedback, acknowledge or roles")
    args: list[Any] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: datetime = _when(default_factory=utcnow)
    sent_at: datetime | None = _when(default=None, index=True)


class AuditEntry(SQLModel, table=True):
    """A change an admin made (a setting, a promotion, a rollback, a rotated secret, a run started),
    from the console, its API or the command line: who, what, before and after, when."""

    id: int | None = Field(default=None, primary_key=True)
    actor: str = Field(max_length=256, description="who: 'admin token', 'cli:USER', …")
    action: str = Field(max_length=64, index=True, description="project.update, model.promote, …")
    target: str = Field(max_length=512, description="what it changed: 'project 3 (gitlab team/app)', …")
    project_id: int | None = Field(default=None, foreign_key="project.id", index=True)
    before: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    after: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = _when(default_factory=utcnow, index=True)


class Lease(SQLModel, table=True):
    """A named lease with an expiry, held by one process at a time: a merge request's review lock,
    the periodic jobs' leader. Renewed by a heartbeat; an expired one is taken over."""

    name: str = Field(primary_key=True, max_length=256)
    owner: str = Field(max_length=128)
    expires_at: datetime = _when()
