"""Structured calls to the student (vLLM) and the teacher (any OpenAI-compatible API).

Every call asks for JSON matching a pydantic model (``response_format`` json_schema), validates the
reply, retries transient failures (connection errors, timeouts, 429, 5xx) with exponential backoff,
and fails with an ``LLMError`` whose message names the server URL and the reason; a prompt longer
than the model's context is refused as ``LLMTooLong``, so the caller can split it and try again.
``max_model_len`` and ``count_tokens`` read the context length and exact prompt sizes from vLLM.
All calls of one client share a concurrency bound, so a burst of requests reaches vLLM as one batch
without flooding it.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx
import openai
from openai.types.chat import ChatCompletionMessageParam
from openai.types.shared_params import ResponseFormatJSONSchema
from pydantic import BaseModel, ValidationError

from bot.config import ConfigError, Settings

T = TypeVar("T", bound=BaseModel)
V = TypeVar("V")

MAX_RETRY_AFTER_S = 60.0
# How vLLM words a prompt longer than the model's context (the message changed across versions).
_TOO_LONG = re.compile(r"maximum (context|model) length", re.IGNORECASE)


class LLMError(Exception):
    """A model call failed; the message says which server and why."""


class LLMUnavailable(LLMError):
    """The server could not be reached, timed out, or kept failing (5xx, 429) through all retries."""


class LLMRejected(LLMError):
    """The server refused the request (4xx other than 429): unknown model, bad adapter, bad input."""


class LLMTooLong(LLMRejected):
    """The server refused the prompt as longer than the model's context (HTTP 400)."""


class LLMBadAnswer(LLMError):
    """The reply did not match the requested schema (or was cut off by ``max_tokens``)."""


@dataclass(frozen=True)
class Answer(Generic[V]):
    value: V
    model: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    logprob: float | None = None  # of the whole answer, when asked for and the server gave it


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return str(exc) or type(exc).__name__


def _retry_after(exc: openai.APIStatusError) -> float | None:
    value = exc.response.headers.get("retry-after")
    try:
        return min(float(value), MAX_RETRY_AFTER_S) if value is not None else None
    except ValueError:
        return None


def _answer_logprob(choice: Any) -> float | None:
    """The sum of the answer's token log-probabilities; None when the server sent none (a server
    may ignore the request: the caller then has no confidence, not an error)."""
    tokens = choice.logprobs.content if choice.logprobs is not None else None
    if not tokens:
        return None
    return float(sum(token.logprob for token in tokens))


def response_format(answer_type: type[BaseModel]) -> ResponseFormatJSONSchema:
    """The OpenAI ``response_format`` asking for JSON that matches ``answer_type``."""
    return {
        "type": "json_schema",
        "json_schema": {
            "name": answer_type.__name__,
            "schema": answer_type.model_json_schema(),
            "strict": True,
        },
    }


def validation_problems(exc: ValidationError) -> str:
    """The first few problems of a pydantic error, one line: ``where: what; …``."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors()[:3])


def check_teacher(settings: Settings) -> None:
    """Raise ``ConfigError`` unless a teacher is configured (the flywheel needs one), and a judge
    on a server of its own names its model."""
    if settings.teacher_base_url is None or not settings.teacher_model:
        raise ConfigError(
            "the teacher is not configured: set REVIEWBOT_TEACHER_BASE_URL and REVIEWBOT_TEACHER_MODEL"
        )
    if settings.judge_base_url is not None and not settings.judge_model:
        raise ConfigError("REVIEWBOT_JUDGE_BASE_URL is set: set REVIEWBOT_JUDGE_MODEL, the model it serves")


def judge_model(settings: Settings) -> str:
    """The model that judges explanations: ``REVIEWBOT_JUDGE_MODEL``, else the teacher."""
    return settings.judge_model or settings.teacher_model or ""


class LLMClient:
    """One OpenAI-compatible server (the student's vLLM or the teacher)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        role: str,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        concurrency: int = 16,
        backoff_s: float = 0.5,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.role = role
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        # Retries are ours (uniform policy and error messages), so the SDK's own are off.
        self._client = openai.AsyncOpenAI(
            base_url=self.base_url, api_key=api_key, timeout=timeout_s, max_retries=0
        )
        self._api_key = api_key
        self._slots = asyncio.Semaphore(concurrency)
        self._has_tokenizer = True  # until the server says it has no ``/tokenize``

    @classmethod
    def student(cls, settings: Settings) -> LLMClient:
        return cls(
            str(settings.student_base_url),
            settings.student_api_key.get_secret_value(),
            role="student",
            timeout_s=settings.llm_timeout_s,
            max_retries=settings.llm_max_retries,
            concurrency=settings.llm_concurrency,
        )

    @classmethod
    def evaluation(cls, settings: Settings) -> LLMClient:
        """The vLLM the flywheel evaluates candidates on: REVIEWBOT_EVAL_BASE_URL's, else the student's."""
        if settings.eval_base_url is None:
            return cls.student(settings)
        key = settings.eval_api_key or settings.student_api_key
        return cls(
            str(settings.eval_base_url),
            key.get_secret_value(),
            role="evaluation",
            timeout_s=settings.llm_timeout_s,
            max_retries=settings.llm_max_retries,
            concurrency=settings.llm_concurrency,
        )

    @classmethod
    def teacher(cls, settings: Settings) -> LLMClient:
        check_teacher(settings)
        key = settings.teacher_api_key.get_secret_value() if settings.teacher_api_key else "EMPTY"
        return cls(
            str(settings.teacher_base_url),
            key,
            role="teacher",
            timeout_s=settings.llm_timeout_s,
            max_retries=settings.llm_max_retries,
            concurrency=settings.llm_concurrency,
        )

    @classmethod
    def judge(cls, settings: Settings) -> LLMClient:
        """The judge of explanations (``REVIEWBOT_JUDGE_*``), the teacher's server unless set; the
        teacher's key goes only to the teacher's own server."""
        check_teacher(settings)
        if settings.judge_base_url is None:
            url, key = settings.teacher_base_url, settings.judge_api_key or settings.teacher_api_key
        else:
            url, key = settings.judge_base_url, settings.judge_api_key
        return cls(
            str(url),
            key.get_secret_value() if key else "EMPTY",
            role="judge",
            timeout_s=settings.llm_timeout_s,
            max_retries=settings.llm_max_retries,
            concurrency=settings.llm_concurrency,
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    def _where(self) -> str:
        return f"{self.role} model server at {self.base_url}"

    async def ask(
        self,
        messages: Sequence[ChatCompletionMessageParam],
        answer_type: type[T],
        model: str,
        *,
        temperature: float = 0.0,
        max_tokens: int = 512,
        logprobs: bool = False,
    ) -> Answer[T]:
        """Ask ``model`` (a base model or adapter name) for an answer of ``answer_type``; with
        ``logprobs``, the answer's log-probability too (the sum over its tokens), when the server
        gives it."""
        raw = await self._complete(messages, answer_type, model, temperature, max_tokens, logprobs)
        try:
            value = answer_type.model_validate_json(raw.value)
        except ValidationError as exc:
            raise LLMBadAnswer(
                f"{self._where()}: the answer of {model} does not match {answer_type.__name__} "
                f"({validation_problems(exc)}): {raw.value[:200]!r}"
            ) from None
        return Answer(value, model, raw.prompt_tokens, raw.completion_tokens, raw.seconds, raw.logprob)

    async def ask_object(
        self,
        messages: Sequence[ChatCompletionMessageParam],
        answer_type: type[BaseModel],
        model: str,
        *,
        temperature: float = 0.0,
        max_tokens: int = 512,
    ) -> Answer[dict[str, Any]]:
        """Like ``ask``, but only checks that the answer is a JSON object: for long answers (a
        teacher's exam) whose parts the caller validates one by one, keeping the good ones."""
        raw = await self._complete(messages, answer_type, model, temperature, max_tokens)
        try:
            value = json.loads(raw.value)
        except json.JSONDecodeError as exc:
            raise LLMBadAnswer(
                f"{self._where()}: the answer of {model} is not JSON ({exc}): {raw.value[:200]!r}"
            ) from None
        if not isinstance(value, dict):
            raise LLMBadAnswer(
                f"{self._where()}: the answer of {model} is not a JSON object: {raw.value[:200]!r}"
            )
        return Answer(value, model, raw.prompt_tokens, raw.completion_tokens, raw.seconds)

    async def _complete(
        self,
        messages: Sequence[ChatCompletionMessageParam],
        answer_type: type[BaseModel],
        model: str,
        temperature: float,
        max_tokens: int,
        logprobs: bool = False,
    ) -> Answer[str]:
        async with self._slots:
            started = time.perf_counter()
            completion = await self._with_retries(
                lambda: self._client.chat.completions.create(
                    model=model,
                    messages=list(messages),
                    temperature=temperature,
                    max_tokens=max_tokens,
                    response_format=response_format(answer_type),
                    logprobs=logprobs or None,  # None: not sent
                )
            )
            seconds = time.perf_counter() - started
        choice = completion.choices[0]
        content = choice.message.content or ""
        if choice.finish_reason == "length":
            raise LLMBadAnswer(
                f"{self._where()}: the answer of {model} was cut off at max_tokens={max_tokens}: "
                f"{content[:200]!r}"
            )
        usage = completion.usage
        return Answer(
            value=content,
            model=model,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            seconds=seconds,
            logprob=_answer_logprob(choice) if logprobs else None,
        )

    async def ask_many(
        self,
        conversations: Sequence[Sequence[ChatCompletionMessageParam]],
        answer_type: type[T],
        model: str,
        *,
        temperature: float = 0.0,
        max_tokens: int = 512,
        on_done: Callable[[], None] | None = None,
    ) -> list[Answer[T] | LLMError]:
        """Send all conversations at once (bounded by the client's concurrency); answers come back
        in order, and a call that failed after its retries is returned as its ``LLMError``."""

        async def one(messages: Sequence[ChatCompletionMessageParam]) -> Answer[T] | LLMError:
            try:
                return await self.ask(
                    messages, answer_type, model, temperature=temperature, max_tokens=max_tokens
                )
            except LLMError as exc:
                return exc
            finally:
                if on_done is not None:
                    on_done()

        return list(await asyncio.gather(*(one(m) for m in conversations)))

    async def list_models(self) -> list[str]:
        """Names the server serves: the base model and every loaded adapter."""
        page = await self._with_retries(lambda: self._client.models.list())
        return [m.id for m in page.data]

    async def max_model_len(self, model: str) -> int | None:
        """The context length ``model`` is served with (prompt and answer together), from the cards
        of ``/v1/models``: vLLM puts ``max_model_len`` on the base model's card, and an adapter
        (whose card has none) shares its base model's; None when the server does not say."""
        page = await self._with_retries(lambda: self._client.models.list())
        lengths = {card.id: getattr(card, "max_model_len", None) for card in page.data}  # extra fields
        parents = {card.id: getattr(card, "parent", None) for card in page.data}
        if model not in lengths:
            return None
        value = lengths[model] or lengths.get(parents[model] or "")
        if value is None and len({v for v in lengths.values() if v}) == 1:  # one base model served
            value = next(v for v in lengths.values() if v)
        return value if isinstance(value, int) and value > 0 else None

    async def count_tokens(self, model: str, messages: Sequence[ChatCompletionMessageParam]) -> int | None:
        """The prompt tokens of ``messages`` for ``model``, chat template included, by the server's
        ``POST /tokenize`` (vLLM); None when the server has none (asked once per client)."""
        if not self._has_tokenizer:
            return None
        url = f"{self.base_url.removesuffix('/v1')}/tokenize"
        response = await self._post(url, {"model": model, "messages": list(messages)})
        if response.status_code in (404, 405, 501):
            self._has_tokenizer = False
            return None
        if response.status_code >= 400:
            raise LLMRejected(
                f"{self._where()} refused to count tokens: HTTP {response.status_code} {response.text[:500]}"
            )
        try:
            count = response.json().get("count")
        except (ValueError, AttributeError):
            count = None
        if not isinstance(count, int):
            raise LLMBadAnswer(
                f"{self._where()}: /tokenize answered without a count: {response.text[:200]!r}"
            )
        return count

    async def load_lora_adapter(self, name: str, path: str) -> None:
        """Make vLLM serve the adapter at ``path`` (a path on the vLLM host) as ``name``.

        Needs the server started with ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``.
        """
        response = await self._post(
            f"{self.base_url}/load_lora_adapter", {"lora_name": name, "lora_path": path}
        )
        if response.status_code == 400 and "has already been loaded" in response.text:
            # Adapter names are never reused, so this is that adapter: a concurrent load, or another
            # replica behind the balancer (its filesystem resolver), got there first.
            return
        if response.status_code >= 400:
            raise LLMRejected(
                f"{self._where()} refused adapter {name!r} from {path}: "
                f"HTTP {response.status_code} {response.text[:500]}"
            )

    async def unload_lora_adapter(self, name: str) -> None:
        """Make vLLM stop serving the adapter ``name`` (frees its slot); one it does not serve is
        not an error. Behind a balancer this reaches one replica; the others evict it when full."""
        response = await self._post(f"{self.base_url}/unload_lora_adapter", {"lora_name": name})
        if response.status_code >= 400 and response.status_code != 404:
            raise LLMRejected(
                f"{self._where()} refused to unload adapter {name!r}: "
                f"HTTP {response.status_code} {response.text[:500]}"
            )

    async def base_model_root(self) -> str | None:
        """Where the server loaded its base model from: the ``root`` of vLLM's card without a
        ``parent`` (adapters have one), i.e. its ``--model`` path or hub id, which its LoRA resolver
        compares adapters' ``base_model_name_or_path`` with; None when the server does not say."""
        page = await self._with_retries(lambda: self._client.models.list())
        roots = {getattr(c, "root", None) for c in page.data if not getattr(c, "parent", None)}
        root = roots.pop() if len(roots) == 1 else None  # vLLM serves one base model
        return root if isinstance(root, str) and root else None

    async def _post(self, url: str, body: dict[str, Any]) -> httpx.Response:
        """One POST to a vLLM endpoint the OpenAI SDK does not know (no retries: callers decide)."""
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as http:
                return await http.post(url, json=body, headers={"Authorization": f"Bearer {self._api_key}"})
        except httpx.HTTPError as exc:
            raise LLMUnavailable(f"{self._where()} unreachable: {_root_cause(exc)}") from exc

    async def _with_retries(self, call: Callable[[], Any]) -> Any:
        attempt = 0
        while True:
            delay: float | None = None
            try:
                return await call()
            except openai.APITimeoutError as exc:
                reason = f"no answer within {self.timeout_s:g} s"
                failure: Exception = exc
            except openai.APIConnectionError as exc:
                reason = _root_cause(exc)
                failure = exc
            except (openai.RateLimitError, openai.InternalServerError) as exc:
                reason = f"HTTP {exc.status_code}: {exc.message}"
                delay = _retry_after(exc)
                failure = exc
            except openai.BadRequestError as exc:
                refused = LLMTooLong if _TOO_LONG.search(str(exc)) else LLMRejected
                raise refused(f"{self._where()} refused the request: {exc.message}") from exc
            except openai.APIStatusError as exc:
                raise LLMRejected(f"{self._where()} refused the request: {exc.message}") from exc
            if attempt >= self.max_retries:
                raise LLMUnavailable(
                    f"{self._where()} unreachable: {reason} (after {attempt + 1} attempts)"
                ) from failure
            if delay is None:
                delay = self.backoff_s * 2**attempt * (1 + random.random() / 4)
            attempt += 1
            await asyncio.sleep(delay)
