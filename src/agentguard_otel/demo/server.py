"""A local OpenAI-compatible HTTP server (stdlib only) for the demo, the benchmarks and the tests.

The real `openai` SDK talks to it over HTTP on 127.0.0.1, so every calling style (create, parse,
stream helpers, raw and streaming responses, sync and async clients) goes through the real wire
protocol: JSON bodies with Content-Length, and SSE over `Transfer-Encoding: chunked` so that
HTTP/1.1 keep-alive connections stay reusable after a stream.

Endpoints, under `/v1` or `/api/v1` (both always accepted): `POST chat/completions`, `responses`,
`embeddings` and legacy `completions`; anything else is a 404 in OpenAI's error format.

Deterministic token accounting, so tests can assert exact usage and cost:

- A text's token count is ``ceil(utf8_bytes / 4)``. Counted texts are the message contents (a
  string, or every content part's ``text``), the Responses ``instructions`` and ``input``, the
  legacy ``prompt`` and the embeddings ``input`` (a token-id array counts one token per id).
- Prompt tokens = the sum of those counts + 3 per message (chat message or Responses input item;
  a string ``input`` is one message) + 3 per request; embeddings add no overhead. This never
  exceeds the strict bound ``utf8_bytes + 8 * messages + 16`` the guard reserves against.
- The reply is the first N words of `REPLY_SENTENCE` (repeated as needed), one token per word,
  N = ``reply_words``. Reasoning models (name after the last "/" contains "gpt-5" or starts with
  "o") also spend 8 reasoning tokens, counted inside the completion tokens. The request's max
  output tokens (``max_completion_tokens``, ``max_tokens`` or ``max_output_tokens``; legacy
  completions default to 16) caps reasoning + visible tokens; a capped reply finishes with
  "length" (Responses: status "incomplete").
- ``cached_tokens`` is reported as cached prompt tokens, capped at the prompt tokens.
- OpenRouter mode adds ``usage.cost`` in USD: ``(prompt * input + completion * output) / 1e6``
  computed with Decimal from ``prices_usd_per_mtok`` (unlisted models: `DEFAULT_PRICE_USD_PER_MTOK`),
  written as a JSON number (exact for any cost of at most 15 significant digits).

Models: the response echoes the requested model. A model named "unavailable/..." gets a 404; in
OpenRouter mode a ``models`` list in the body is a fallback list and the first entry not named
"unavailable/..." answers (and is echoed), so fallbacks can be exercised.

Test hooks: `LocalOpenAIServer.fail_next` (injected OpenAI-format errors; 429/5xx carry
``retry-after: 0`` and ``retry-after-ms: 1`` so SDK retries are immediate),
`LocalOpenAIServer.cut_stream_after` (a stream that drops its connection mid-way),
`LocalOpenAIServer.requests` and `LocalOpenAIServer.connections_accepted`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import json
import signal
import socket
import struct
import sys
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

JSONObject = dict[str, Any]

REPLY_SENTENCE = (
    "This is a deterministic reply from the agentguard demo endpoint, "
    "sent one word at a time so that token counts are easy to check."
)
"""24 words without JSON-special characters, so a JSON reply can be streamed word by word."""

_REPLY_WORDS = tuple(REPLY_SENTENCE.split())
REASONING_TOKENS = 8
LEGACY_DEFAULT_MAX_TOKENS = 16
EMBEDDING_DEFAULT_DIMENSIONS = 8
DEFAULT_PRICE_USD_PER_MTOK = ("1", "4")
UNAVAILABLE_MODEL_PREFIX = "unavailable/"
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "api-key", "x-api-key"})
_MILLION = Decimal(1_000_000)
_PROVIDER_NAMES = {"openai": "OpenAI", "anthropic": "Anthropic", "google": "Google", "mistralai": "Mistral"}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def text_tokens(text: str) -> int:
    """Tokens of one text: ceil(utf8 bytes / 4), never more than its byte count."""
    return (len(text.encode("utf-8")) + 3) // 4


def count_prompt_tokens(texts: Sequence[str], messages: int) -> int:
    """Prompt tokens of a chat-like request (see the module docstring)."""
    return sum(text_tokens(text) for text in texts) + 3 * messages + 3


def reply_text(words: int) -> str:
    """The plain reply of `words` words, as the server sends it."""
    return " ".join(_reply_words(words))


def is_reasoning_model(model: str) -> bool:
    """Whether the server bills reasoning tokens for `model` (provider prefix ignored)."""
    name = model.rsplit("/", 1)[-1]
    return "gpt-5" in name or name.startswith("o")


def embedding_vector(text: str, dimensions: int = EMBEDDING_DEFAULT_DIMENSIONS) -> list[float]:
    """Deterministic vector of multiples of 1/256, exact in float32 so base64 round-trips."""
    seed = zlib.crc32(text.encode("utf-8"))
    return [((seed >> (j % 25)) + 37 * j) % 256 / 256 - 0.5 for j in range(dimensions)]


def _reply_words(count: int) -> tuple[str, ...]:
    return tuple(itertools.islice(itertools.cycle(_REPLY_WORDS), count))


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it; credential headers are never recorded."""

    method: str
    path: str
    body: JSONObject | None
    headers: dict[str, str]


@dataclass(frozen=True)
class _Completion:
    """What the fake model produced for one request: usage and the reply's pieces."""

    model: str
    prompt_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    words: tuple[str, ...]
    truncated: bool
    json_reply: bool

    @property
    def completion_tokens(self) -> int:
        return self.reasoning_tokens + len(self.words)

    @property
    def pieces(self) -> list[str]:
        """Stream deltas; joined they are the full reply (a JSON object when one was asked for)."""
        parts = [word if i == 0 else " " + word for i, word in enumerate(self.words)]
        if not self.json_reply:
            return parts
        if not parts:
            return ['{"answer": ""}']
        parts[0] = '{"answer": "' + parts[0]
        parts[-1] += '"}'
        return parts

    @property
    def text(self) -> str:
        return "".join(self.pieces)


@dataclass
class _Reply:
    """An HTTP answer: a JSON payload, or SSE frames (possibly cut after `cut_after` of them)."""

    status: int
    payload: JSONObject | None = None
    frames: list[bytes] | None = None
    headers: tuple[tuple[str, str], ...] = ()
    cut_after: int | None = None


class _ApiError(Exception):
    """An OpenAI-format error answer raised from request handling."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        error_type: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.error_type = error_type

    def reply(self) -> _Reply:
        default_type = "server_error" if self.status >= 500 else "invalid_request_error"
        error_type = self.error_type or _ERROR_TYPES.get(self.status, default_type)
        payload = {"error": {"message": self.message, "type": error_type, "param": self.param, "code": self.code}}
        # retry-after-ms: 1 makes SDK retries immediate (the SDK ignores a zero delay and backs off).
        retry = (("retry-after", "0"), ("retry-after-ms", "1"))
        return _Reply(self.status, payload, headers=retry if self.status == 429 or self.status >= 500 else ())


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def _sse_data(payloads: Sequence[JSONObject]) -> list[bytes]:
    """Chat/legacy framing: unnamed data events closed by `data: [DONE]`."""
    return [b"data: " + _dumps(p) + b"\n\n" for p in payloads] + [b"data: [DONE]\n\n"]


def _sse_named(payloads: Sequence[JSONObject]) -> list[bytes]:
    """Responses framing: `event: <type>` lines, numbered events, no [DONE]."""
    frames = []
    for number, payload in enumerate(payloads):
        payload["sequence_number"] = number
        frames.append(b"event: " + payload["type"].encode() + b"\ndata: " + _dumps(payload) + b"\n\n")
    return frames


def _content_texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return []


def _require_model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _ApiError(400, "you must provide a model parameter", param="model")
    return model


def _max_tokens(body: Mapping[str, Any], *names: str) -> int | None:
    """The first of `names` the request sets, validated as a positive integer."""
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _ApiError(400, f"Invalid '{name}': expected an integer of at least 1.", param=name)
        return value
    return None


def _include_usage(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _wants_json(response_format: Any) -> bool:
    return isinstance(response_format, dict) and response_format.get("type") in ("json_schema", "json_object")


def _decimal_price(model: str, value: str) -> Decimal:
    try:
        return Decimal(value)
    except InvalidOperation:
        raise ValueError(f"price of {model!r} is not a decimal string: {value!r}") from None


class _HTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its LocalOpenAIServer and accepts bursts of connections."""

    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: LocalOpenAIServer):
        self.app = app
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet about clients that hang up (normal for keep-alive pools); loud about real bugs."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive plumbing; the API logic lives in LocalOpenAIServer."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # TCP_NODELAY: small JSON replies and SSE frames leave at once
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.app._connection_opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.app._connection_closed(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: benchmarks and tests must not pay for (or drown in) access logs."""

    def _dispatch(self) -> None:
        length = self.headers.get("content-length", "0").strip()
        if not length.isdigit() or "transfer-encoding" in self.headers:
            # A body we cannot frame would desynchronise the keep-alive stream: answer, then hang up.
            self.close_connection = True
            self._send(_ApiError(411, "Send the request body with a valid Content-Length header.").reply())
            return
        raw = self.rfile.read(int(length))
        self._send(self.server.app._handle(self.command, self.path, raw, dict(self.headers.items())))

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

    def _head(self, reply: _Reply, content_headers: str) -> bytes:
        phrase = self.responses.get(reply.status, ("Error",))[0]
        extra = "".join(f"{name}: {value}\r\n" for name, value in reply.headers)
        close = "Connection: close\r\n" if self.close_connection else ""
        return f"HTTP/1.1 {reply.status} {phrase}\r\n{content_headers}{extra}{close}\r\n".encode("latin-1")

    def _send(self, reply: _Reply) -> None:
        if reply.frames is None:
            body = _dumps(reply.payload)
            head = self._head(reply, f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n")
            self.wfile.write(head + body)
            return
        self.wfile.write(
            self._head(
                reply,
                "Content-Type: text/event-stream; charset=utf-8\r\n"
                "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n",
            )
        )
        frames = reply.frames if reply.cut_after is None else reply.frames[: reply.cut_after]
        for frame in frames:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(frame), frame))
        if reply.cut_after is None:
            self.wfile.write(b"0\r\n\r\n")
            return
        # Abrupt end: no terminating chunk, so the client sees an incomplete chunked body.
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)


@dataclass
class _State:
    requests: list[RecordedRequest] = field(default_factory=list)
    failures: deque[tuple[int, str]] = field(default_factory=deque)
    cut_after: int | None = None
    credit_remaining_usd: str | None = None  # OpenRouter /key: None means no limit on the key
    connections_accepted: int = 0
    open_connections: set[socket.socket] = field(default_factory=set)


class LocalOpenAIServer:
    """OpenAI-compatible endpoint on a local port; a context manager, or start()/stop()."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        openrouter: bool = False,
        prices_usd_per_mtok: Mapping[str, tuple[str, str]] | None = None,
        reply_words: int = 24,
        cached_tokens: int = 0,
    ) -> None:
        if reply_words < 0 or cached_tokens < 0:
            raise ValueError("reply_words and cached_tokens must be >= 0")
        self.host = host
        self.port = port
        self.openrouter = openrouter
        self.reply_words = reply_words
        self.cached_tokens = cached_tokens
        self._prices = {
            model: (_decimal_price(model, rates[0]), _decimal_price(model, rates[1]))
            for model, rates in (prices_usd_per_mtok or {}).items()
        }
        self._default_price = (Decimal(DEFAULT_PRICE_USD_PER_MTOK[0]), Decimal(DEFAULT_PRICE_USD_PER_MTOK[1]))
        self._lock = threading.Lock()
        self._state = _State()
        self._ids = itertools.count(1)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._endpoints: dict[str, Callable[[JSONObject], _Reply]] = {
            "chat/completions": self._chat,
            "responses": self._responses,
            "embeddings": self._embeddings,
            "completions": self._completions,
        }

    # lifecycle -------------------------------------------------------------------------------

    def start(self) -> LocalOpenAIServer:
        """Bind (port 0 picks a free port) and serve from a daemon thread."""
        if self._httpd is not None:
            raise RuntimeError("server already started")
        self._httpd = _HTTPServer((self.host, self.port), self)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="agentguard-openai",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop open keep-alive connections, so no stale connection is answered."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            sockets = list(self._state.open_connections)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> LocalOpenAIServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("server not started")
        return f"http://{self.host}:{self.port}{'/api/v1' if self.openrouter else '/v1'}"

    # inspection and test hooks -----------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Snapshot of every request received since start or the last reset()."""
        with self._lock:
            return list(self._state.requests)

    @property
    def connections_accepted(self) -> int:
        """TCP connections accepted since start or the last reset() (proves keep-alive reuse)."""
        with self._lock:
            return self._state.connections_accepted

    def reset(self) -> None:
        """Forget recorded requests, pending failures and cuts, and the connection count."""
        with self._lock:
            self._state.requests.clear()
            self._state.failures.clear()
            self._state.cut_after = None
            self._state.connections_accepted = 0

    def fail_next(self, status: int, *, count: int = 1, message: str = "injected failure") -> None:
        """Answer the next `count` LLM requests with an OpenAI-format error of HTTP `status`."""
        if not 400 <= status <= 599 or count < 1:
            raise ValueError("status must be 4xx/5xx and count >= 1")
        with self._lock:
            self._state.failures.extend([(status, message)] * count)

    def set_credit_remaining(self, usd: str | None) -> None:
        """What OpenRouter's ``GET /key`` reports as ``limit_remaining`` (None: an unlimited key)."""
        with self._lock:
            self._state.credit_remaining_usd = usd

    def _key_info(self) -> _Reply:
        with self._lock:
            remaining = self._state.credit_remaining_usd
        limit = None if remaining is None else float(Decimal(remaining) + 10)
        data = {"label": "sk-or-v1-local", "limit": limit, "usage": 10.0 if limit is not None else 0.0,
                "limit_remaining": None if remaining is None else float(Decimal(remaining)), "is_free_tier": False}
        return _Reply(200, payload={"data": data})

    def cut_stream_after(self, chunks: int) -> None:
        """Make the next streaming response send `chunks` SSE events, then drop the connection."""
        if chunks < 0:
            raise ValueError("chunks must be >= 0")
        with self._lock:
            self._state.cut_after = chunks

    # connection tracking (called by the handler) ----------------------------------------------

    def _connection_opened(self, sock: socket.socket) -> None:
        with self._lock:
            self._state.connections_accepted += 1
            self._state.open_connections.add(sock)

    def _connection_closed(self, sock: socket.socket) -> None:
        with self._lock:
            self._state.open_connections.discard(sock)

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
        if method == "GET" and self.openrouter and path.split("?", 1)[0] in ("/api/v1/key", "/v1/key"):
            return self._key_info()
        endpoint = self._route(method, path)
        if endpoint is None:
            return _ApiError(404, f"Invalid URL ({method} {path})", error_type="invalid_request_error").reply()
        with self._lock:
            failure = self._state.failures.popleft() if self._state.failures else None
        try:
            if failure is not None:
                raise _ApiError(failure[0], failure[1], code="rate_limit_exceeded" if failure[0] == 429 else None)
            if body is None:
                raise _ApiError(400, "We could not parse the JSON body of your request.")
            return endpoint(body)
        except _ApiError as error:
            return error.reply()

    def _route(self, method: str, path: str) -> Callable[[JSONObject], _Reply] | None:
        route = path.split("?", 1)[0]
        for prefix in ("/api/v1/", "/v1/"):
            if method == "POST" and route.startswith(prefix):
                return self._endpoints.get(route[len(prefix) :])
        return None

    def _stream(self, frames: list[bytes]) -> _Reply:
        with self._lock:
            cut, self._state.cut_after = self._state.cut_after, None
        return _Reply(200, frames=frames, cut_after=cut)

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):024x}"

    def _effective_model(self, body: Mapping[str, Any]) -> str:
        """The requested model, or in OpenRouter mode the first available entry of `models`."""
        model = _require_model(body)
        fallbacks = body.get("models")
        candidates = fallbacks if self.openrouter and isinstance(fallbacks, list) and fallbacks else [model]
        for candidate in candidates:
            if isinstance(candidate, str) and not candidate.startswith(UNAVAILABLE_MODEL_PREFIX):
                return candidate
        raise _ApiError(404, f"No endpoints found for {model}.", param="model", code="model_not_found")

    def _complete(self, model: str, prompt_tokens: int, limit: int | None, json_reply: bool) -> _Completion:
        reasoning_budget = REASONING_TOKENS if is_reasoning_model(model) else 0
        wanted = reasoning_budget + self.reply_words
        total = wanted if limit is None else min(wanted, limit)
        reasoning = min(reasoning_budget, total)
        return _Completion(
            model=model,
            prompt_tokens=prompt_tokens,
            cached_tokens=min(self.cached_tokens, prompt_tokens),
            reasoning_tokens=reasoning,
            words=_reply_words(total - reasoning),
            truncated=total < wanted,
            json_reply=json_reply,
        )

    def _cost(self, model: str, input_tokens: int, output_tokens: int) -> JSONObject:
        """OpenRouter's cost fields (empty in OpenAI mode)."""
        if not self.openrouter:
            return {}
        input_price, output_price = self._prices.get(model, self._default_price)
        prompt_cost = input_price * input_tokens / _MILLION
        completion_cost = output_price * output_tokens / _MILLION
        return {
            "cost": float(prompt_cost + completion_cost),
            "is_byok": False,
            "cost_details": {
                "upstream_inference_cost": None,
                "upstream_inference_prompt_cost": float(prompt_cost),
                "upstream_inference_completions_cost": float(completion_cost),
            },
        }

    def _usage(self, done: _Completion) -> JSONObject:
        """Chat / legacy completions usage object."""
        return {
            "prompt_tokens": done.prompt_tokens,
            "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": done.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": done.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
            **self._cost(done.model, done.prompt_tokens, done.completion_tokens),
        }

    def _envelope(self, prefix: str, obj: str, model: str) -> JSONObject:
        envelope: JSONObject = {
            "id": self._next_id(prefix),
            "object": obj,
            "created": int(time.time()),
            "model": model,
        }
        if self.openrouter:
            envelope["provider"] = _PROVIDER_NAMES.get(model.split("/", 1)[0], "OpenAI") if "/" in model else "OpenAI"
        return envelope

    # endpoints ----------------------------------------------------------------------------------

    def _chat(self, body: JSONObject) -> _Reply:
        model = self._effective_model(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise _ApiError(400, "'messages' must be a non-empty array of message objects.", param="messages")
        texts = [text for message in messages for text in _content_texts(message.get("content"))]
        done = self._complete(
            model,
            count_prompt_tokens(texts, len(messages)),
            _max_tokens(body, "max_completion_tokens", "max_tokens"),
            _wants_json(body.get("response_format")),
        )
        finish = "length" if done.truncated else "stop"
        base = {
            **self._envelope("chatcmpl-", "chat.completion", done.model),
            "system_fingerprint": "fp_agentguard",
        }
        if not body.get("stream"):
            message: JSONObject = {
                "role": "assistant",
                "content": done.text,
                "refusal": None,
                "annotations": [],
            }
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            return _Reply(200, {**base, "choices": [choice], "usage": self._usage(done)})
        base["object"] = "chat.completion.chunk"
        include_usage = _include_usage(body)

        def chunk(delta: JSONObject, finish_reason: str | None = None) -> JSONObject:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return {**base, "choices": [choice], **({"usage": None} if include_usage else {})}

        chunks = [chunk({"role": "assistant", "content": ""})]
        chunks += [chunk({"content": piece}) for piece in done.pieces]
        chunks.append(chunk({}, finish))
        if include_usage:
            chunks.append({**base, "choices": [], "usage": self._usage(done)})
        return self._stream(_sse_data(chunks))

    def _completions(self, body: JSONObject) -> _Reply:
        model = self._effective_model(body)
        prompt = body.get("prompt")
        texts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
            raise _ApiError(400, "'prompt' must be a string or an array of strings.", param="prompt")
        limit = _max_tokens(body, "max_tokens")
        done = self._complete(
            model, count_prompt_tokens(texts, 0), LEGACY_DEFAULT_MAX_TOKENS if limit is None else limit, False
        )
        finish = "length" if done.truncated else "stop"
        base = self._envelope("cmpl-", "text_completion", done.model)

        def choice(text: str, finish_reason: str | None) -> JSONObject:
            return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}

        if not body.get("stream"):
            return _Reply(200, {**base, "choices": [choice(done.text, finish)], "usage": self._usage(done)})
        chunks = [{**base, "choices": [choice(piece, None)]} for piece in done.pieces]
        chunks.append({**base, "choices": [choice("", finish)]})
        if _include_usage(body):
            chunks.append({**base, "choices": [], "usage": self._usage(done)})
        return self._stream(_sse_data(chunks))

    def _embeddings(self, body: JSONObject) -> _Reply:
        model = self._effective_model(body)
        raw_input = body.get("input")
        items: list[Any] = raw_input if isinstance(raw_input, list) else [raw_input]
        if items and all(isinstance(i, int) for i in items):
            items = [items]  # one token-id array
        if not items or not all(isinstance(i, (str, list)) for i in items):
            raise _ApiError(400, "'input' must be a string, an array of strings or token arrays.", param="input")
        dimensions = body.get("dimensions") or EMBEDDING_DEFAULT_DIMENSIONS
        if not isinstance(dimensions, int) or dimensions < 1:
            raise _ApiError(400, "'dimensions' must be a positive integer.", param="dimensions")
        use_base64 = body.get("encoding_format") == "base64"
        data = []
        tokens = 0
        for index, item in enumerate(items):
            text = item if isinstance(item, str) else ",".join(map(str, item))
            tokens += text_tokens(item) if isinstance(item, str) else len(item)
            vector = embedding_vector(text, dimensions)
            encoded: Any = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode() if use_base64 else vector
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        usage = {"prompt_tokens": tokens, "total_tokens": tokens, **self._cost(model, tokens, 0)}
        return _Reply(200, {"object": "list", "data": data, "model": model, "usage": usage})

    def _responses(self, body: JSONObject) -> _Reply:
        model = self._effective_model(body)
        raw_input = body.get("input")
        instructions = body.get("instructions")
        texts = [instructions] if isinstance(instructions, str) else []
        if isinstance(raw_input, str):
            texts.append(raw_input)
            messages = 1
        elif isinstance(raw_input, list):
            texts += [t for item in raw_input if isinstance(item, dict) for t in _content_texts(item.get("content"))]
            messages = len(raw_input)
        else:
            raise _ApiError(400, "'input' must be a string or an array of input items.", param="input")
        requested_text = body.get("text")
        text_config = requested_text if isinstance(requested_text, dict) else {"format": {"type": "text"}}
        done = self._complete(
            model,
            count_prompt_tokens(texts, messages),
            _max_tokens(body, "max_output_tokens"),
            _wants_json(text_config.get("format")),
        )
        status = "incomplete" if done.truncated else "completed"
        envelope = self._envelope("resp_", "response", done.model)
        item_id = self._next_id("msg_")

        def part(text: str) -> JSONObject:
            return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

        item = {
            "id": item_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": [part(done.text)],
        }
        usage = {
            "input_tokens": done.prompt_tokens,
            "input_tokens_details": {"cached_tokens": done.cached_tokens, "cache_write_tokens": 0},
            "output_tokens": done.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": done.reasoning_tokens},
            "total_tokens": done.prompt_tokens + done.completion_tokens,
            **self._cost(done.model, done.prompt_tokens, done.completion_tokens),
        }

        def response(state: str, output: list[JSONObject], usage: JSONObject | None) -> JSONObject:
            finished = state == "completed"
            return {
                "id": envelope["id"],
                "object": "response",
                "created_at": envelope["created"],
                "completed_at": int(time.time()) if finished else None,
                "status": state,
                "error": None,
                "incomplete_details": {"reason": "max_output_tokens"} if state == "incomplete" else None,
                "instructions": instructions,
                "max_output_tokens": body.get("max_output_tokens"),
                "model": done.model,
                "output": output,
                "parallel_tool_calls": True,
                "previous_response_id": None,
                "reasoning": {"effort": None, "summary": None},
                "store": body.get("store", True),
                "temperature": body.get("temperature", 1.0),
                "text": text_config,
                "tool_choice": "auto",
                "tools": [],
                "top_p": body.get("top_p", 1.0),
                "truncation": "disabled",
                "usage": usage,
                "user": None,
                "metadata": body.get("metadata") or {},
                **({"provider": envelope["provider"]} if "provider" in envelope else {}),
            }

        if not body.get("stream"):
            return _Reply(200, response(status, [item], usage))
        at = {"item_id": item_id, "output_index": 0, "content_index": 0}
        events: list[JSONObject] = [
            {"type": "response.created", "response": response("in_progress", [], None)},
            {"type": "response.in_progress", "response": response("in_progress", [], None)},
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": {**item, "status": "in_progress", "content": []},
            },
            {"type": "response.content_part.added", **at, "part": part("")},
            *({"type": "response.output_text.delta", **at, "delta": piece, "logprobs": []} for piece in done.pieces),
            {"type": "response.output_text.done", **at, "text": done.text, "logprobs": []},
            {"type": "response.content_part.done", **at, "part": part(done.text)},
            {"type": "response.output_item.done", "output_index": 0, "item": item},
            {"type": f"response.{status}", "response": response(status, [item], usage)},
        ]
        return self._stream(_sse_named(events))


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until Ctrl-C or SIGTERM: `python -m agentguard_otel.demo.server --port 8099 [--openrouter]`."""
    parser = argparse.ArgumentParser(prog="python -m agentguard_otel.demo.server", description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--openrouter", action="store_true", help="serve under /api/v1 and report usage.cost")
    parser.add_argument("--reply-words", type=int, default=24)
    parser.add_argument("--cached-tokens", type=int, default=0)
    args = parser.parse_args(argv)
    server = LocalOpenAIServer(
        args.host,
        args.port,
        openrouter=args.openrouter,
        reply_words=args.reply_words,
        cached_tokens=args.cached_tokens,
    )
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
