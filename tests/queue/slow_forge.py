"""A forge that answers slowly: a review job hangs on it for as long as a test needs."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class SlowForge:
    """A forge that answers every request 404 after ``delay_s`` (a slow GitLab, an MR deleted)."""

    def __init__(self) -> None:
        self.delay_s = 0.0
        forge = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # the name http.server calls
                time.sleep(forge.delay_s)
                body = b'{"message": "404 Not found"}'
                self.send_response(404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@contextmanager
def slow_forge() -> Iterator[SlowForge]:
    forge = SlowForge()
    thread = threading.Thread(target=forge.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield forge
    finally:
        forge.server.shutdown()
