"""The local OpenAI-compatible endpoint behind ``agentguard demo`` (stdlib only).

The real ``openai`` SDK talks to it over HTTP on 127.0.0.1: ``POST chat/completions`` under ``/v1``
or ``/api/v1``, answered as JSON, or with ``"stream": true`` as SSE over ``Transfer-Encoding:
chunked`` (so HTTP/1.1 keep-alive connections stay reusable after a stream), ending with a usage
chunk when ``stream_options.include_usage`` asks for one. Anything else is an OpenAI-format error.

Deterministic token accounting, so the demo's costs can be checked by hand:

- A text's token count is ``ceil(utf8_bytes / 4)``. Prompt tokens = the counts of the message
  contents (a string, or every content part's ``text``) + 3 per message + 3 per request. This
  never exceeds the strict bound ``utf8_bytes + 8 * messages + 16`` the guard reserves against.
- The reply is the first N words of `REPLY_SENTENCE` (repeated as needed), one token per word,
  N = ``reply_words``, capped by ``max_completion_tokens`` or ``max_tokens`` (a capped reply
  finishes with "length").
- OpenRouter mode (``openrouter=True``, base URL ``/api/v1``; what the ``openrouter_team``
  example's offline run talks to) adds OpenRouter's ``usage.cost`` in USD at
  `DEFAULT_PRICE_USD_PER_MTOK` for every model.

The test suite's own provider servers (``tests/servers/``) count tokens with the functions here.
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

REPLY_SENTENCE = (
    "This is a deterministic reply from the agentguard demo endpoint, "
    "sent one word at a time so that token counts are easy to check."
)
"""24 words without JSON-special characters, so a JSON reply can be streamed word by word."""

DEFAULT_PRICE_USD_PER_MTOK = ("1", "4")
"""(input, output) USD per million tokens that OpenRouter mode reports as ``usage.cost``."""


def text_tokens(text: str) -> int:
    """Tokens of one text: ceil(utf8 bytes / 4), never more than its byte count."""
    return (len(text.encode("utf-8")) + 3) // 4


def count_prompt_tokens(texts: Sequence[str], messages: int) -> int:
    """Prompt tokens of a chat-like request (see the module docstring)."""
    return sum(text_tokens(text) for text in texts) + 3 * messages + 3


def content_texts(content: Any) -> list[str]:
    """The counted texts of one message content: a string, or every content part's ``text``."""
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return []


def reply_pieces(words: int) -> list[str]:
    """The reply of `words` words as streamed: the first word, then " word" each."""
    cycle = itertools.islice(itertools.cycle(REPLY_SENTENCE.split()), words)
    return [word if i == 0 else " " + word for i, word in enumerate(cycle)]


def reply_text(words: int) -> str:
    """The plain reply of `words` words, as the server sends it."""
    return "".join(reply_pieces(words))


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True
    server: _DemoHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the demo prints its own table."""

    def do_POST(self) -> None:
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
        except ValueError:
            body = None
        try:
            if self.path.split("?", 1)[0] not in ("/v1/chat/completions", "/api/v1/chat/completions"):
                raise _Refused(404, f"Invalid URL (POST {self.path})")
            if not isinstance(body, dict):
                raise _Refused(400, "We could not parse the JSON body of your request.")
            completion = self.server.app.complete(body)
        except _Refused as refused:
            self._refuse(refused)
            return
        if not body.get("stream"):
            self._send_json(200, completion.whole())
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        options = body.get("stream_options")
        for chunk in completion.chunks(isinstance(options, dict) and options.get("include_usage") is True):
            event = b"data: " + chunk + b"\n\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
        self.wfile.write(b"0\r\n\r\n")

    def do_GET(self) -> None:
        self._refuse(_Refused(404, f"Invalid URL (GET {self.path})"))

    def _refuse(self, refused: _Refused) -> None:
        error = {"message": refused.message, "type": "invalid_request_error", "param": None, "code": None}
        self._send_json(refused.status, {"error": error})

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@dataclass(frozen=True)
class _Completion:
    """One answer of the fake model: its envelope, reply pieces and usage."""

    envelope: dict[str, Any]
    pieces: list[str]
    finish: str
    usage: dict[str, Any]

    def whole(self) -> dict[str, Any]:
        message = {"role": "assistant", "content": "".join(self.pieces), "refusal": None}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish}
        return {**self.envelope, "object": "chat.completion", "choices": [choice], "usage": self.usage}

    def chunks(self, include_usage: bool) -> Iterator[bytes]:
        base = {**self.envelope, "object": "chat.completion.chunk"}
        deltas = [{"role": "assistant", "content": ""}, *({"content": piece} for piece in self.pieces), {}]
        for i, delta in enumerate(deltas):
            finish = self.finish if i == len(deltas) - 1 else None
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            yield json.dumps({**base, "choices": [choice]}, separators=(",", ":")).encode()
        if include_usage:
            yield json.dumps({**base, "choices": [], "usage": self.usage}, separators=(",", ":")).encode()
        yield b"[DONE]"


class _DemoHTTPServer(ThreadingHTTPServer):
    def __init__(self, address: tuple[str, int], app: DemoServer) -> None:
        self.app = app
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client closing its kept-alive connection is ordinary (a benchmark swaps clients all the
        time): not worth a traceback. Anything else is reported as the standard library does."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class DemoServer:
    """The demo's OpenAI-compatible endpoint on a local port; a context manager, or start()/stop()."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, openrouter: bool = False,
                 reply_words: int = 24) -> None:
        if reply_words < 0:
            raise ValueError("reply_words must be >= 0")
        self.host = host
        self.port = port
        self.openrouter = openrouter
        self.reply_words = reply_words
        self._ids = itertools.count(1)
        self._httpd: _DemoHTTPServer | None = None

    def start(self) -> DemoServer:
        """Bind (port 0 picks a free port) and serve from a daemon thread."""
        if self._httpd is not None:
            raise RuntimeError("server already started")
        self._httpd = _DemoHTTPServer((self.host, self.port), self)
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, name="agentguard-demo-endpoint", daemon=True).start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()

    def __enter__(self) -> DemoServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("server not started")
        return f"http://{self.host}:{self.port}{'/api/v1' if self.openrouter else '/v1'}"

    def complete(self, body: dict[str, Any]) -> _Completion:
        """The fake model's answer to a chat completion request (see the module docstring)."""
        model, messages = body.get("model"), body.get("messages")
        if not isinstance(model, str) or not model:
            raise _Refused(400, "you must provide a model parameter")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise _Refused(400, "'messages' must be a non-empty array of message objects.")
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        words = self.reply_words if not isinstance(limit, int) else min(self.reply_words, limit)
        prompt = count_prompt_tokens([t for m in messages for t in content_texts(m.get("content"))], len(messages))
        usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": words, "total_tokens": prompt + words}
        if self.openrouter:
            rates = [Decimal(rate) for rate in DEFAULT_PRICE_USD_PER_MTOK]
            usage["cost"] = float((rates[0] * prompt + rates[1] * words) / 1_000_000)
        envelope = {"id": f"chatcmpl-{next(self._ids):024x}", "created": int(time.time()), "model": model}
        return _Completion(envelope, reply_pieces(words), "length" if words < self.reply_words else "stop", usage)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until Ctrl-C or SIGTERM: `python -m agentguard_otel.demo.server --port 8099 [--openrouter]`."""
    parser = argparse.ArgumentParser(prog="python -m agentguard_otel.demo.server", description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--openrouter", action="store_true", help="serve under /api/v1 and report usage.cost")
    parser.add_argument("--reply-words", type=int, default=24)
    args = parser.parse_args(argv)
    server = DemoServer(args.host, args.port, openrouter=args.openrouter, reply_words=args.reply_words)
    stop = threading.Event()
    # Installed explicitly: a process started in the background inherits SIGINT ignored.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with server:
        print(server.base_url, flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
