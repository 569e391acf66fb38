"""Settings from ``REVIEWBOT_*`` environment variables, then files: ``--env-file`` (or
``REVIEWBOT_ENV_FILE``) when given, then the data folder's own ``reviewbot.env`` (the user's) and
``run.env`` (what ``deploy/run.sh`` chose, such as the demo student's URL). Never a ``.env`` found in
the working directory, which in CI may be a pull request's checkout that would choose the model server
(and receive its API key) or the fine-tune command.

The data folder, ``REVIEWBOT_HOME`` (default: the XDG data folder's ``reviewbot``), holds the SQLite
database, the embedded queue and the flywheel's files whatever the working directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, HttpUrl, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "REVIEWBOT_"
USER_SETTINGS_FILE = "reviewbot.env"  # in the data folder: the user's, wins over the run command's
RUN_SETTINGS_FILE = "run.env"  # in the data folder: written by deploy/run.sh


def data_home() -> Path:
    """``REVIEWBOT_HOME``, else ``$XDG_DATA_HOME/reviewbot``, else ``~/.local/share/reviewbot``."""
    if os.environ.get(ENV_PREFIX + "HOME"):
        return Path(os.environ[ENV_PREFIX + "HOME"]).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "reviewbot"


class ConfigError(Exception):
    """The configuration is missing or invalid; the message is one line naming the variables."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=None, env_file_encoding="utf-8", extra="ignore"
    )

    home: Path = Field(
        default_factory=data_home,
        description="data folder: SQLite database, embedded queue, flywheel files, settings files "
        "(default: $XDG_DATA_HOME/reviewbot or ~/.local/share/reviewbot)",
    )
    database_url: str = Field(
        "",
        description="SQLAlchemy URL: sqlite:///PATH or postgresql://USER@HOST:PORT/DB "
        "(default: sqlite:///HOME/reviewbot.db)",
    )
    queue_url: str = Field(
        "",
        description="job queue: sqlite:///PATH (embedded) or redis://HOST:PORT/DB (default: sqlite:///HOME/queue.db)",
    )
    student_base_url: HttpUrl = Field(
        HttpUrl("http://127.0.0.1:8000/v1"), description="OpenAI-compatible URL of the vLLM server"
    )
    student_model: str = Field(
        "meta-llama/Meta-Llama-3-8B-Instruct", min_length=1, description="served name of the base model"
    )
    student_api_key: SecretStr = Field(SecretStr("EMPTY"), description="API key of the vLLM server")
    eval_base_url: HttpUrl | None = Field(
        None,
        description="URL of a second vLLM serving the same base model, where the flywheel loads and "
        "evaluates candidates while the student's keeps serving reviews (default: the student's)",
    )
    eval_api_key: SecretStr | None = Field(None, description="API key of that vLLM (default: the student's)")
    teacher_base_url: HttpUrl | None = Field(
        None, description="OpenAI-compatible URL of the teacher (needed by the flywheel)"
    )
    teacher_model: str | None = Field(None, description="teacher model name")
    teacher_api_key: SecretStr | None = Field(None, description="teacher API key")
    teacher_max_tokens: int = Field(
        8192, ge=1000, description="most tokens the teacher may write in one answer; big exams come in parts"
    )
    reference_model: str | None = Field(
        None,
        description="model on the teacher's server whose explanations the student's exam answers are "
        "judged against (default: the teacher's own exam answers)",
    )
    judge_base_url: HttpUrl | None = Field(
        None,
        description="OpenAI-compatible URL of the judge of explanations, ideally another model family "
        "than the student's and the teacher's (default: the teacher's server)",
    )
    judge_model: str | None = Field(None, description="judge model name (default: the teacher model)")
    judge_api_key: SecretStr | None = Field(
        None, description="judge API key (default: the teacher's, when the judge is on the teacher's server)"
    )
    public_url: HttpUrl = Field(
        HttpUrl("http://127.0.0.1:8080"), description="where forges reach this service (webhook URLs)"
    )
    console_url: HttpUrl | None = Field(
        None,
        description="the admin console's address; the summary comment links to CONSOLE_URL/reviews/ID",
    )
    suppress_similarity: float = Field(
        0.2,  # bot.review.similarity.SUPPRESS_AT: calibrated there
        gt=0,
        le=1,
        description="how similar to a finding reviewers dismissed (0-1) a finding must be to go unposted",
    )
    admin_token: SecretStr | None = Field(
        None, description="bearer token for /openapi.json and /metrics (Authorization: Bearer TOKEN)"
    )
    public_metrics: bool = Field(False, description="serve /metrics without the admin token")
    secret_key: SecretStr | None = Field(
        None,
        description="Fernet key that encrypts stored webhook secrets and signs queued jobs; "
        "default: a key file beside the SQLite database, made once",
    )
    token_env_prefix: str = Field(
        "REVIEWBOT_TOKEN_",
        min_length=1,
        description="a project's token variable must start with this (or be GITLAB_TOKEN / GITHUB_TOKEN)",
    )
    intake_concurrency: int = Field(
        64, ge=1, description="webhook deliveries handled at once; more are answered 503 with Retry-After"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="log level")
    llm_timeout_s: float = Field(120.0, gt=0, description="timeout of one model call, seconds")
    llm_max_retries: int = Field(3, ge=0, le=10, description="retries on connection errors and 5xx")
    llm_concurrency: int = Field(16, ge=1, le=1024, description="model calls in flight at once")
    task_models: dict[str, str] = Field(
        default_factory=dict,
        description='served model per task, JSON, e.g. {"severity": "severity-v3"}; default: the base model',
    )
    review_chunk_tokens: int = Field(
        2500, ge=200, description="most tokens of diff sent to the model in one find call"
    )
    review_max_calls: int = Field(
        400, ge=1, description="model calls one review may make; what is left is listed as skipped"
    )
    review_deadline_s: float = Field(
        900.0, gt=0, description="wall time one review may take; what is left is listed as skipped"
    )
    review_max_attempts: int = Field(
        5, ge=1, description="runs of one review (crashes and retries) before it is marked failed"
    )
    lease_ttl_s: float = Field(
        60.0, ge=5, description="a running review's lease; renewed every third of it, taken over once past"
    )
    reconcile_minutes: int = Field(
        5, ge=1, description="how often open merge requests are listed to catch a lost webhook"
    )
    period_scale: float = Field(
        1.0, gt=0, description="multiplies periodic jobs' periods and retry delays (tests shorten them)"
    )
    retention_days: int | None = Field(
        90,
        ge=1,
        description="rows no feature needs, older than this, are pruned daily; unset: never",
    )

    # The flywheel (trainer).
    flywheel_dir: Path = Field(
        Path(),
        description="adapters, exams and curricula; the vLLM host must read adapters at the same path "
        "(default: HOME/flywheel)",
    )
    student_weights: str | None = Field(
        None,
        description="path or hub id of the student's base weights, to fine-tune (default: STUDENT_MODEL)",
    )
    max_lora_rank: int = Field(64, ge=1, description="vLLM's --max-lora-rank; a larger adapter is refused")
    finetune: dict[str, Any] = Field(
        default_factory=dict,
        description='fine-tuning settings, JSON, e.g. {"learning_rate": 1e-4, "epochs": 3}',
    )
    finetune_launcher: str | None = Field(
        None,
        description='fine-tune in a subprocess started by this, e.g. "accelerate launch --num_processes 8"',
    )
    flywheel_exam_size: int = Field(40, ge=1, le=200, description="questions per exam")
    flywheel_new_examples: int = Field(40, ge=1, le=200, description="new training examples asked per round")
    flywheel_max_rounds: int = Field(5, ge=1, description="rounds per run at most")
    flywheel_epsilon: float = Field(0.01, ge=0, description="smallest held-out gain that counts as progress")
    flywheel_patience: int = Field(2, ge=1, description="rounds without progress before a run stops")
    flywheel_max_minutes: float | None = Field(None, gt=0, description="wall-time budget of a run")
    flywheel_max_teacher_tokens: int | None = Field(None, gt=0, description="teacher-token budget of a run")
    flywheel_heldout_share: float = Field(0.2, gt=0, lt=1, description="share of labelled examples held out")
    flywheel_min_new_feedback: int = Field(
        50, ge=1, description="new labelled examples from reviewers that start a run (trainer queue)"
    )
    audit_per_week: int = Field(
        20, ge=0, description="findings of each ISO week drawn into the blind audit set (0: none)"
    )
    flywheel_max_synthetic_share: float = Field(
        0.5, gt=0, le=1, description="most of the curriculum the teacher's examples may be (1: no cap)"
    )
    flywheel_synthetic_runs: int = Field(
        3, ge=1, description="the teacher's examples of the latest runs that wrote some; older ones retire"
    )
    flywheel_correction_weight: int = Field(
        2, ge=1, description="copies of each reviewer's /severity correction in the curriculum"
    )
    promotion_margin: float = Field(
        0.02,
        ge=0,
        description="gain over the model in use a candidate needs, as a lower confidence bound on the test "
        "items: mean cost per item for severity (1 = one one-step under-rating); for explanations, the "
        "share of decided pairs won must pass 0.5 + it; "
        "also the golden-set regression allowed",
    )
    promotion_alpha: float = Field(
        0.05, gt=0, lt=0.5, description="one-sided error level of the promotion gate's lower bound"
    )
    promotion_min_items: int = Field(
        200, ge=1, description="test items below which nothing is promoted automatically"
    )
    severity_costs: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="cost of rating gold severity G as P, JSON cells over the default matrix, e.g. "
        '{"critical": {"trivial": 20}} (flywheel.metrics.DEFAULT_COSTS)',
    )

    # The canary of a promoted adapter (bot.feedback.canary).
    canary_share: float = Field(
        0.2, ge=0, lt=1, description="share of merge requests a newly promoted adapter serves first; 0: none"
    )
    canary_min_findings: int = Field(
        30, ge=5, description="findings with reviewers' feedback each side needs before a canary is judged"
    )
    canary_days: float = Field(7.0, gt=0, description="a canary not rolled back by then takes all traffic")
    canary_alpha: float = Field(
        0.05, gt=0, lt=0.5,
        description="chance, over all its looks, that a canary no worse than the model in use is rolled back",
    )  # fmt: skip
    canary_margin: float = Field(
        0.05, gt=0, lt=1,
        description="a canary takes all traffic early once no rate can be worse than this (upper bound)",
    )  # fmt: skip

    def webhook_url(self, forge: str, key: str | None) -> str:
        """The webhook URL of a project or source: where its forge delivers, under the public URL."""
        return f"{str(self.public_url).rstrip('/')}/webhooks/{forge}/{key}"

    @model_validator(mode="after")
    def _in_home(self) -> Settings:
        """What is not set lives in the data folder, whatever the working directory."""
        home = self.home.expanduser().absolute()
        self.home = home
        if not self.database_url:
            self.database_url = f"sqlite:///{home / 'reviewbot.db'}"
        if not self.queue_url:
            self.queue_url = f"sqlite:///{home / 'queue.db'}"
        if self.flywheel_dir == Path():
            self.flywheel_dir = home / "flywheel"
        return self

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        if not value:  # the default: in the data folder (``_in_home``)
            return value
        if value.startswith("postgresql://") or value.startswith("postgres://"):
            return "postgresql+psycopg://" + value.split("://", 1)[1]
        if value.startswith(("sqlite:///", "postgresql+psycopg://")):
            return value
        raise ValueError("expected sqlite:///PATH or postgresql://USER@HOST:PORT/DB")

    @field_validator("queue_url")
    @classmethod
    def _queue_url(cls, value: str) -> str:
        if not value:
            return value
        if value.startswith(("sqlite:///", "redis://", "rediss://")):
            return value
        raise ValueError("expected sqlite:///PATH or redis://HOST:PORT/DB")


def settings_files(env_file: Path | None = None) -> list[Path]:
    """The files settings are read from, weakest first: the data folder's ``run.env`` and
    ``reviewbot.env`` (those that exist), then ``env_file``."""
    home = data_home()
    found = [home / name for name in (RUN_SETTINGS_FILE, USER_SETTINGS_FILE) if (home / name).is_file()]
    return found + ([env_file] if env_file is not None else [])


def load_settings(env_file: Path | None = None, **overrides: object) -> Settings:
    """Read the settings (the environment wins over ``env_file``, which wins over the data folder's
    files), turning validation errors into one ``ConfigError`` line."""
    if env_file is not None and not env_file.is_file():
        raise ConfigError(f"env file {env_file}: no such file")
    try:
        return Settings(_env_file=tuple(settings_files(env_file)) or None, **overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = ENV_PREFIX + str(error["loc"][0]).upper() if error["loc"] else "configuration"
            message = str(error["msg"]).removeprefix("Value error, ")
            got = error.get("input")
            secret = any(word in name for word in ("KEY", "TOKEN", "URL"))  # URLs may hold passwords
            shown = f" (got {got!r})" if isinstance(got, str | int | float) and not secret else ""
            problems.append(f"{name}: {message}{shown}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None


def redact_url(url: str) -> str:
    """``url`` with its password (if any) shown as ``***``, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
