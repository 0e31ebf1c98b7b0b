"""A webhook receiver on 127.0.0.1 that keeps the JSON bodies POSTed to it (and can refuse the first ones)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class WebhookReceiver:
    def __init__(self, refuse_first: int = 0, status: int = 503) -> None:
        self.events: list[dict[str, Any]] = []
        self.attempts = 0
        self._refuse, self._status = refuse_first, status
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    receiver.attempts += 1
                    refuse = receiver.attempts <= receiver._refuse
                    if not refuse:
                        receiver.events.append(json.loads(body))
                self.send_response(receiver._status if refuse else 204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}/hooks/agentguard?token=s3cret"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
