"""Settings from ``REVIEWBOT_*`` environment variables and an optional ``.env`` file."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, HttpUrl, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "REVIEWBOT_"


class ConfigError(Exception):
    """The configuration is missing or invalid; the message is one line naming the variables."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    database_url: str = Field(
        "sqlite:///reviewbot.db",
        description="SQLAlchemy URL: sqlite:///PATH or postgresql://USER@HOST:PORT/DB",
    )
    queue_url: str = Field(
        "sqlite:///reviewbot-queue.db",
        description="job queue: sqlite:///PATH (embedded) or redis://HOST:PORT/DB",
    )
    student_base_url: HttpUrl = Field(
        HttpUrl("http://127.0.0.1:8000/v1"), description="OpenAI-compatible URL of the vLLM server"
    )
    student_model: str = Field(
        "meta-llama/Meta-Llama-3-8B-Instruct", min_length=1, description="served name of the base model"
    )
    student_api_key: SecretStr = Field(SecretStr("EMPTY"), description="API key of the vLLM server")
    teacher_base_url: HttpUrl | None = Field(
        None, description="OpenAI-compatible URL of the teacher (needed by the flywheel)"
    )
    teacher_model: str | None = Field(None, description="teacher model name")
    teacher_api_key: SecretStr | None = Field(None, description="teacher API key")
    public_url: HttpUrl = Field(
        HttpUrl("http://127.0.0.1:8080"), description="where forges reach this service (webhook URLs)"
    )
    admin_token: SecretStr | None = Field(None, description="bearer token for the admin API and pages")
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

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        if value.startswith("postgresql://") or value.startswith("postgres://"):
            return "postgresql+psycopg://" + value.split("://", 1)[1]
        if value.startswith(("sqlite:///", "postgresql+psycopg://")):
            return value
        raise ValueError("expected sqlite:///PATH or postgresql://USER@HOST:PORT/DB")

    @field_validator("queue_url")
    @classmethod
    def _queue_url(cls, value: str) -> str:
        if value.startswith(("sqlite:///", "redis://", "rediss://")):
            return value
        raise ValueError("expected sqlite:///PATH or redis://HOST:PORT/DB")


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning validation errors into one ``ConfigError`` line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
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
