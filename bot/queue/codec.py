"""How jobs are written to the queue: JSON signed with HMAC-SHA256, never pickle.

Huey pickles by default, so whoever could write to Redis would run code in every worker. Here a
job is JSON of the types reviewbot's tasks take (ints, strings, a ``Signal``) plus Huey's own envelope
(its ``Message``, times, errors), and carries an HMAC under a key derived from the secret key, so a job
written by anyone else — a pickle, or JSON with a forged feedback signal — is refused and logged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
from datetime import datetime
from typing import Any

from huey.registry import Message
from huey.serializer import Serializer
from huey.utils import Error

from bot.events import Signal, SignalKind

log = logging.getLogger(__name__)

TAG = "$"  # a JSON object with this key is one of the types below, encoded


class ForgedJob(ValueError):
    """A queued item that this reviewbot did not write (bad signature, or not its JSON)."""


def _encode(value: Any) -> Any:
    # Named tuples first: they are tuples too.
    if isinstance(value, Message):
        return {TAG: "message", "v": [_encode(field) for field in value]}
    if isinstance(value, Error):
        return {TAG: "error", "v": _encode(value.metadata)}
    if isinstance(value, Signal):
        return {TAG: "signal", "v": dataclasses.asdict(value)}
    if isinstance(value, datetime):
        return {TAG: "datetime", "v": value.isoformat()}
    if isinstance(value, tuple):
        return {TAG: "tuple", "v": [_encode(item) for item in value]}
    if isinstance(value, list):
        return [_encode(item) for item in value]
    if isinstance(value, dict):
        if all(isinstance(key, str) for key in value) and TAG not in value:
            return {key: _encode(item) for key, item in value.items()}
        return {TAG: "dict", "v": [[_encode(key), _encode(item)] for key, item in value.items()]}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"a queued job cannot carry {type(value).__name__} (JSON types and Signal only)")


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(item) for item in value]
    if not isinstance(value, dict):
        return value
    if TAG not in value:
        return {key: _decode(item) for key, item in value.items()}
    kind, inner = value[TAG], value["v"]
    if kind == "message":
        return Message(*(_decode(field) for field in inner))
    if kind == "error":
        return Error(_decode(inner))
    if kind == "signal":
        return Signal(**{**inner, "kind": SignalKind(inner["kind"])})
    if kind == "datetime":
        return datetime.fromisoformat(inner)
    if kind == "tuple":
        return tuple(_decode(item) for item in inner)
    if kind == "dict":
        return {_decode(key): _decode(item) for key, item in inner}
    raise ValueError(f"unknown type {kind!r}")


class SignedJsonSerializer(Serializer):  # type: ignore[misc]  # Huey is untyped
    """Huey's serializer for jobs, results and locks: ``HEX-HMAC:JSON``."""

    def __init__(self, key: bytes) -> None:
        super().__init__()
        self._key = hashlib.sha256(b"reviewbot queue jobs\0" + key).digest()

    def _signature(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).hexdigest().encode()

    def _serialize(self, data: Any) -> bytes:
        body = json.dumps(_encode(data), separators=(",", ":")).encode()
        return self._signature(body) + b":" + body

    def _deserialize(self, data: bytes) -> Any:
        signature, _, body = bytes(data).partition(b":")
        if not hmac.compare_digest(signature, self._signature(body)):
            log.error("refused a queued job that this reviewbot did not write (bad signature): %r", data[:80])
            raise ForgedJob("queued job with a bad signature, refused")
        try:
            return _decode(json.loads(body))
        except (
            ValueError,
            TypeError,
            KeyError,
        ) as exc:  # signed but not ours: a key shared with another tool
            log.error("refused a signed queued job that is not a reviewbot job: %s", exc)
            raise ForgedJob(f"queued job is not a reviewbot job: {exc}") from None
