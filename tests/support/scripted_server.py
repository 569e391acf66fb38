"""An HTTP server answering from a script of canned responses, to put the LLM client through
failures a real server produces only by accident: 5xx, 429 with Retry-After, slow or malformed replies.

Like vLLM, it lists its model on ``GET /v1/models`` (with ``max_model_len`` when the script sets
one), counts tokens on ``POST /tokenize`` when the script has a tokenizer, and refuses a chat
completion whose prompt and ``max_tokens`` exceed ``max_model_len`` with vLLM's HTTP 400."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


def completion(content: str, finish_reason: str = "stop") -> Reply:
    return Reply(
        body={
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 0,
            "model": "scripted",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": finish_reason,
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }
    )


@dataclass
class Script:
    replies: list[Reply]
    default: Reply | None = None  # used once the list is exhausted
    model: str = "scripted"  # the id its /v1/models lists
    adapters: tuple[str, ...] = ()  # LoRA adapters it lists too: vLLM gives them a parent, no max_model_len
    max_model_len: int | None = None  # prompt + max_tokens past this: HTTP 400, as vLLM answers
    root: str | None = None  # where its base model was loaded from, as vLLM's card says (``--model``)
    chars_per_token: float = 3.0  # its tokenizer: this many characters of message text a token
    tokenize: bool = False  # whether it serves POST /tokenize (vLLM does)
    requests: list[dict[str, Any]] = field(default_factory=list)  # chat completions and other POSTs
    refused: list[dict[str, Any]] = field(default_factory=list)  # completions refused as too long
    tokenized: list[dict[str, Any]] = field(default_factory=list)  # /tokenize requests, served or not
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_reply(self, request: dict[str, Any]) -> Reply:
        with self.lock:
            self.requests.append(request)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return (
                self.replies.pop(0)
                if self.replies
                else (self.default or Reply(500, {"error": "script empty"}))
            )

    def count(self, request: dict[str, Any]) -> int:
        """Prompt tokens of a chat or /tokenize request, by this script's tokenizer."""
        text = request.get("prompt") or "".join(m["content"] for m in request.get("messages", []))
        return math.ceil(len(text) / self.chars_per_token) + 4 * len(request.get("messages", []))

    def too_long(self, request: dict[str, Any]) -> Reply | None:
        """vLLM's refusal of a prompt that does not fit the context, or None."""
        if self.max_model_len is None or "messages" not in request:
            return None
        prompt = self.count(request)
        wanted = prompt + int(request.get("max_tokens") or 0)
        if wanted <= self.max_model_len:
            return None
        with self.lock:
            self.refused.append(request)
        message = (
            f"This model's maximum context length is {self.max_model_len} tokens. However, you "
            f"requested {wanted} tokens ({prompt} in the messages, {request.get('max_tokens')} in the "
            "completion). Please reduce the length of the messages or completion."
        )
        return Reply(400, {"object": "error", "message": message, "type": "BadRequestError", "code": 400})

    def models(self) -> Reply:
        card: dict[str, Any] = {"id": self.model, "object": "model", "created": 0, "owned_by": "vllm"}
        if self.max_model_len is not None:
            card["max_model_len"] = self.max_model_len
        if self.root is not None:
            card["root"] = self.root
        adapters = [{**card, "id": name, "parent": self.model} for name in self.adapters]
        for adapter in adapters:
            adapter.pop("max_model_len", None)
        return Reply(body={"object": "list", "data": [card, *adapters]})

    def tokenizer(self, request: dict[str, Any]) -> Reply:
        with self.lock:
            self.tokenized.append(request)
        if not self.tokenize:
            return Reply(404, {"detail": "Not Found"})
        return Reply(body={"count": self.count(request), "max_model_len": self.max_model_len, "tokens": []})

    def finished(self) -> None:
        with self.lock:
            self.in_flight -= 1


@contextmanager
def scripted_server(script: Script) -> Iterator[str]:
    """Serve ``script`` on a free port; yields the base URL (ending in /v1)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._send(script.models() if self.path == "/v1/models" else Reply(404, {"detail": "Not Found"}))

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            request = json.loads(self.rfile.read(length) or b"{}")
            if self.path == "/tokenize":
                self._send(script.tokenizer(request))
                return
            refusal = script.too_long(request)
            if refusal is not None:
                self._send(refusal)
                return
            reply = script.next_reply({"path": self.path, **request})
            try:
                time.sleep(reply.delay_s)
                self._send(reply)
            finally:
                script.finished()

        def _send(self, reply: Reply) -> None:
            try:
                payload = json.dumps(reply.body).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (its timeout); that is what the test wanted

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
