"""The Anthropic-wire server of the tests of the ``anthropic`` SDK adapter, on :mod:`tests.servers.base`.

The real ``anthropic`` SDK talks to it with ``base_url`` set to :attr:`LocalAnthropicServer.base_url`
(the SDK's paths carry the ``/v1`` prefix).

Endpoints: ``POST /v1/messages`` (a Message object, or with ``"stream": true`` the real event
sequence: ``message_start``, ``content_block_start``, ``ping``, one ``content_block_delta`` per
word, ``content_block_stop``, ``message_delta``, ``message_stop``) and
``POST /v1/messages/count_tokens``. A query string (the beta namespace's ``?beta=true``) is
accepted. Errors are in Anthropic's format: ``{"type": "error", "error": {"type", "message"}}``
(``fail_next``'s ``code`` is the error's ``type``; 429/5xx carry ``retry-after-ms: 1``).
``call_tool_next`` makes the next Message one ``tool_use`` block (streamed as an
``input_json_delta``), stop reason ``tool_use``, billed as the text would have been.

Deterministic token accounting, so tests can assert exact usage and cost:

- The prompt's tokens are the demo endpoint's count (``ceil(utf8_bytes / 4)`` per text + 3 per
  message + 3) over the ``system`` text(s) and every message's text(s). This never exceeds the
  strict bound ``utf8_bytes + 8 * messages + 16`` the guard reserves against.
- Cache tokens come out of that total, in this order and each capped by what is left:
  ``cache_read``, ``cache_write_5m``, ``cache_write_1h`` (see :meth:`LocalAnthropicServer.set_cache`);
  ``input_tokens`` is the rest, as Anthropic reports it (cache tokens excluded).
  ``cache_creation_input_tokens`` is the 5-minute + 1-hour writes; the ``cache_creation``
  breakdown is sent unless ``breakdown=False``.
- The reply is the demo endpoint's sentence, one output token per word, ``reply_words`` words,
  capped by ``max_tokens`` (required, as the API requires it); a capped reply stops with
  ``max_tokens``, otherwise ``end_turn``. Streams report ``output_tokens: 1`` in ``message_start``
  and the final count in ``message_delta``, which repeats the input and cache counts (cumulative,
  as the API sends them; LangChain reads a stream's input tokens from there).

``usage_next`` replaces the Message's ``usage``; in a stream both ``message_start.message.usage``
and ``message_delta.usage`` (with :data:`OMIT_USAGE` neither event has a ``usage``).
``count_tokens`` answers carry no usage and leave ``usage_next`` pending. ``bill_with`` replaces the
prompt and output counts and the cache writes (then no cache reads are reported). Usage reports the
``speed`` asked for (``fast``, else ``standard``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agentguard_otel.demo.server import content_texts, count_prompt_tokens, reply_pieces
from tests.servers.base import OMIT_USAGE, ApiError, Endpoint, JSONObject, LocalServer, Reply, retry_now, sse

__all__ = ["OMIT_USAGE", "Cache", "LocalAnthropicServer", "prompt_texts"]

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


@dataclass(frozen=True)
class Cache:
    """Cache tokens the server reports (each capped by the prompt tokens left)."""

    read: int = 0
    write_5m: int = 0
    write_1h: int = 0
    breakdown: bool = True  # send the ``cache_creation`` object, not only the total


def prompt_texts(body: Mapping[str, Any]) -> list[str]:
    """The texts the server counts: ``system`` and every message's text content."""
    contents = [body.get("system"), *(m.get("content") for m in body.get("messages") or [])]
    return [text for content in contents for text in content_texts(content)]


class LocalAnthropicServer(LocalServer):
    """Anthropic Messages API on a local port; a context manager, or start()/stop()."""

    thread_name = "agentguard-anthropic"
    invalid_json_message = "The request body is not valid JSON."

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, reply_words: int = 24) -> None:
        super().__init__(host, port, reply_words=reply_words)
        self.cache = Cache()
        self._routes: dict[str, Endpoint] = {
            "/v1/messages": self._messages,
            "/v1/messages/count_tokens": self._count_tokens,
        }

    def set_cache(self, read: int = 0, write_5m: int = 0, write_1h: int = 0, *, breakdown: bool = True) -> None:
        """Report these cache tokens from now on (until :meth:`reset`)."""
        self.cache = Cache(read, write_5m, write_1h, breakdown)

    def reset(self) -> None:
        super().reset()
        self.cache = Cache()

    def usage(self, prompt_tokens: int, output_tokens: int) -> JSONObject:
        """The usage object of a reply to a prompt of ``prompt_tokens`` tokens (all input, cache included)."""
        bill = self.current_bill()
        cache = self.cache if bill is None else Cache(write_5m=bill.cache_write_tokens,
                                                      write_1h=bill.cache_write_1h_tokens)
        left = prompt_tokens
        read = min(cache.read, left)
        left -= read
        write_5m = min(cache.write_5m, left)
        left -= write_5m
        write_1h = min(cache.write_1h, left)
        left -= write_1h
        usage: JSONObject = {
            "input_tokens": left,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": write_5m + write_1h,
            "cache_read_input_tokens": read,
            "service_tier": "standard",
        }
        if cache.breakdown:
            usage["cache_creation"] = {"ephemeral_5m_input_tokens": write_5m, "ephemeral_1h_input_tokens": write_1h}
        return usage

    # the API ------------------------------------------------------------------------------------

    def route(self, method: str, path: str) -> Endpoint | None:
        return self._routes.get(path.split("?", 1)[0]) if method == "POST" else None

    def error_reply(self, error: ApiError) -> Reply:
        default = "api_error" if error.status >= 500 else "invalid_request_error"
        kind = error.code or _ERROR_TYPES.get(error.status, default)
        body = {"type": "error", "error": {"type": kind, "message": error.message}}
        return Reply(error.status, body, headers=retry_now(error.status))

    def _prompt_tokens(self, body: JSONObject) -> tuple[str, int]:
        model = body.get("model")
        messages = body.get("messages")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "model: Field required")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise ApiError(400, "messages: Input should be a valid list")
        return model, count_prompt_tokens(prompt_texts(body), len(messages))

    def _count_tokens(self, body: JSONObject) -> Reply:
        _model, tokens = self._prompt_tokens(body)
        return Reply(200, {"input_tokens": tokens})

    def _messages(self, body: JSONObject) -> Reply:
        model, prompt_tokens = self._prompt_tokens(body)
        limit = body.get("max_tokens")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ApiError(400, "max_tokens: Field required (an integer of at least 1)")
        count = min(self.reply_words, limit)
        speed = "fast" if body.get("speed") == "fast" else "standard"  # the speed the call ran at
        bill = self.current_bill()
        if bill is not None:
            prompt_tokens, count = bill.input_tokens, bill.output_tokens
        pieces = reply_pieces(count)
        stop = "max_tokens" if count < self.reply_words or bill is not None else "end_turn"
        tool = self.take_tool_call()
        block: JSONObject = {"type": "text", "text": "".join(pieces)}
        deltas: list[JSONObject] = [{"type": "text_delta", "text": piece} for piece in pieces]
        if tool is not None:
            block = {"type": "tool_use", "id": self.next_id("toolu_"), "name": tool[0], "input": json.loads(tool[1])}
            deltas, stop = [{"type": "input_json_delta", "partial_json": tool[1]}], "tool_use"
        report = self.take_usage()
        message: JSONObject = {
            "id": self.next_id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [block],
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": report({**self.usage(prompt_tokens, count), "speed": speed}),
        }
        if not body.get("stream"):
            return Reply(200, message)
        start = {**message, "content": [], "stop_reason": None,
                 "usage": report({**self.usage(prompt_tokens, 1), "speed": speed})}
        events: list[JSONObject] = [
            {"type": "message_start", "message": start},
            {"type": "content_block_start", "index": 0,
             "content_block": {**block, "input": {}} if tool else {**block, "text": ""}},
            {"type": "ping"},
            *({"type": "content_block_delta", "index": 0, "delta": delta} for delta in deltas),
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
             "usage": report({k: v for k, v in self.usage(prompt_tokens, count).items() if k != "service_tier"})},
            {"type": "message_stop"},
        ]
        return Reply.stream([sse(event, event["type"]) for event in events])
