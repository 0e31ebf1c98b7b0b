"""A local Anthropic-wire HTTP server (stdlib only) for the tests of the ``anthropic`` SDK adapter.

The HTTP plumbing (HTTP/1.1 keep-alive, chunked SSE, connection tracking, ``fail_next``,
``cut_stream_after``, recorded requests without credential headers) is the OpenAI-wire demo
server's; only the API differs. The real ``anthropic`` SDK talks to it with ``base_url`` set to
:attr:`LocalAnthropicServer.base_url` (the SDK's paths carry the ``/v1`` prefix).

Endpoints: ``POST /v1/messages`` (a Message object, or with ``"stream": true`` the real event
sequence: ``message_start``, ``content_block_start``, ``ping``, one ``content_block_delta`` per
word, ``content_block_stop``, ``message_delta``, ``message_stop``) and
``POST /v1/messages/count_tokens``. A query string (the beta namespace's ``?beta=true``) is
accepted. Errors are in Anthropic's format: ``{"type": "error", "error": {"type", "message"}}``.

Deterministic token accounting, so tests can assert exact usage and cost:

- The prompt's tokens are the demo server's count (``ceil(utf8_bytes / 4)`` per text + 3 per
  message + 3) over the ``system`` text(s) and every message's text(s). This never exceeds the
  strict bound ``utf8_bytes + 8 * messages + 16`` the guard reserves against.
- Cache tokens come out of that total, in this order and each capped by what is left:
  ``cache_read``, ``cache_write_5m``, ``cache_write_1h`` (see :meth:`LocalAnthropicServer.set_cache`);
  ``input_tokens`` is the rest, as Anthropic reports it (cache tokens excluded).
  ``cache_creation_input_tokens`` is the 5-minute + 1-hour writes; the ``cache_creation``
  breakdown is sent unless ``breakdown=False``.
- The reply is the demo server's sentence, one output token per word, ``reply_words`` words,
  capped by ``max_tokens`` (required, as the API requires it); a capped reply stops with
  ``max_tokens``, otherwise ``end_turn``. Streams report ``output_tokens: 1`` in ``message_start``
  and the final count in ``message_delta``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agentguard_otel.demo.server import (
    _SECRET_HEADERS,
    LocalOpenAIServer,
    RecordedRequest,
    _dumps,
    _Reply,
    count_prompt_tokens,
    reply_text,
)

JSONObject = dict[str, Any]

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


class _ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def reply(self) -> _Reply:
        kind = _ERROR_TYPES.get(self.status, "api_error" if self.status >= 500 else "invalid_request_error")
        payload = {"type": "error", "error": {"type": kind, "message": self.message}}
        retry = (("retry-after", "0"), ("retry-after-ms", "1"))
        return _Reply(self.status, payload, headers=retry if self.status == 429 or self.status >= 500 else ())


@dataclass(frozen=True)
class Cache:
    """Cache tokens the server reports (each capped by the prompt tokens left)."""

    read: int = 0
    write_5m: int = 0
    write_1h: int = 0
    breakdown: bool = True  # send the ``cache_creation`` object, not only the total


def prompt_texts(body: Mapping[str, Any]) -> list[str]:
    """The texts the server counts: ``system`` and every message's text content."""
    texts: list[str] = []
    for content in [body.get("system"), *(m.get("content") for m in body.get("messages") or [])]:
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts += [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return texts


def _sse(events: Sequence[JSONObject]) -> list[bytes]:
    return [b"event: " + e["type"].encode() + b"\ndata: " + _dumps(e) + b"\n\n" for e in events]


class LocalAnthropicServer(LocalOpenAIServer):
    """Anthropic Messages API on a local port; a context manager, or start()/stop()."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, reply_words: int = 24) -> None:
        super().__init__(host, port, reply_words=reply_words)
        self.cache = Cache()
        self._routes: dict[str, Callable[[JSONObject], _Reply]] = {
            "/v1/messages": self._messages,
            "/v1/messages/count_tokens": self._count_tokens,
        }

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("server not started")
        return f"http://{self.host}:{self.port}"

    def set_cache(self, read: int = 0, write_5m: int = 0, write_1h: int = 0, *, breakdown: bool = True) -> None:
        """Report these cache tokens from now on (until :meth:`reset`)."""
        self.cache = Cache(read, write_5m, write_1h, breakdown)

    def reset(self) -> None:
        super().reset()
        self.cache = Cache()

    def usage(self, prompt_tokens: int, output_tokens: int) -> JSONObject:
        """The usage object of a reply to a prompt of ``prompt_tokens`` tokens (all input, cache included)."""
        left = prompt_tokens
        read = min(self.cache.read, left)
        left -= read
        write_5m = min(self.cache.write_5m, left)
        left -= write_5m
        write_1h = min(self.cache.write_1h, left)
        left -= write_1h
        usage: JSONObject = {
            "input_tokens": left,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": write_5m + write_1h,
            "cache_read_input_tokens": read,
            "service_tier": "standard",
        }
        if self.cache.breakdown:
            usage["cache_creation"] = {"ephemeral_5m_input_tokens": write_5m, "ephemeral_1h_input_tokens": write_1h}
        return usage

    # request handling ---------------------------------------------------------------------------

    def _handle(self, method: str, path: str, raw: bytes, headers: Mapping[str, str]) -> _Reply:
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        body = parsed if isinstance(parsed, dict) else None
        recorded = {k.lower(): v for k, v in headers.items() if k.lower() not in _SECRET_HEADERS}
        with self._lock:
            self._state.requests.append(RecordedRequest(method, path, body, recorded))
        endpoint = self._routes.get(path.split("?", 1)[0]) if method == "POST" else None
        if endpoint is None:
            return _ApiError(404, f"Not found: {method} {path}").reply()
        with self._lock:
            failure = self._state.failures.popleft() if self._state.failures else None
        try:
            if failure is not None:
                raise _ApiError(*failure)
            if body is None:
                raise _ApiError(400, "The request body is not valid JSON.")
            return endpoint(body)
        except _ApiError as error:
            return error.reply()

    def _prompt_tokens(self, body: JSONObject) -> tuple[str, int]:
        model = body.get("model")
        messages = body.get("messages")
        if not isinstance(model, str) or not model:
            raise _ApiError(400, "model: Field required")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise _ApiError(400, "messages: Input should be a valid list")
        return model, count_prompt_tokens(prompt_texts(body), len(messages))

    def _count_tokens(self, body: JSONObject) -> _Reply:
        _model, tokens = self._prompt_tokens(body)
        return _Reply(200, {"input_tokens": tokens})

    def _messages(self, body: JSONObject) -> _Reply:
        model, prompt_tokens = self._prompt_tokens(body)
        limit = body.get("max_tokens")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise _ApiError(400, "max_tokens: Field required (an integer of at least 1)")
        count = min(self.reply_words, limit)
        words = reply_text(count).split(" ") if count else []
        stop = "max_tokens" if count < self.reply_words else "end_turn"
        message: JSONObject = {
            "id": self._next_id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": " ".join(words)}],
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": self.usage(prompt_tokens, count),
        }
        if not body.get("stream"):
            return _Reply(200, message)
        start = {**message, "content": [], "stop_reason": None, "usage": self.usage(prompt_tokens, 1)}
        deltas = [{"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": word if i == 0 else " " + word}}
                  for i, word in enumerate(words)]
        events: list[JSONObject] = [
            {"type": "message_start", "message": start},
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            {"type": "ping"},
            *deltas,
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
             "usage": {"output_tokens": count}},
            {"type": "message_stop"},
        ]
        return self._stream(_sse(events))
