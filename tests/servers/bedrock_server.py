"""A local AWS Bedrock Runtime endpoint (stdlib only) for tests of the real ``boto3`` client.

The client is real: ``boto3.client("bedrock-runtime", endpoint_url=server.url, ...)`` with dummy
credentials signs, serializes and parses exactly as against AWS. The AWS account is the only thing
mocked: nothing here talks to the cloud, and the signature is not checked.

Operations (``POST``, HTTP/1.1 keep-alive):

- ``/model/{modelId}/converse``: Converse JSON.
- ``/model/{modelId}/converse-stream``: Converse events (``messageStart``, ``contentBlockDelta`` per
  word, ``contentBlockStop``, ``messageStop``, ``metadata`` with usage) in the binary
  ``application/vnd.amazon.eventstream`` framing, one frame per HTTP chunk.
- ``/model/{modelId}/invoke``: the model-native JSON body and reply of the model family, which the
  server recognises by the body's shape (not by the model id, so that the adapter's id-based reading
  is checked independently): ``anthropic_version`` -> Anthropic Messages, ``inputText`` -> Titan
  text, ``prompt`` -> Meta Llama, ``messages`` -> Amazon Nova.
- ``/model/{modelId}/invoke-with-response-stream``: ``chunk`` events whose ``bytes`` are that
  family's stream chunks; the last carries ``amazon-bedrock-invocationMetrics``.

Deterministic token accounting (the demo server's rules): prompt tokens = ceil(utf8 bytes / 4) of
every message and system text + 3 per message + 3; the reply is ``reply_words`` words, one token
each, cut at the request's max output tokens. With ``cache_read_tokens`` that many prompt tokens
are reported as cache reads and, as Bedrock does, left out of the input count.

Test hooks: :meth:`LocalBedrockServer.fail_next` answers the next request with an AWS JSON error
(``x-amzn-ErrorType`` header), :attr:`LocalBedrockServer.requests` records what arrived.
"""

from __future__ import annotations

import base64
import json
import struct
import sys
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import unquote

from agentguard_otel.demo.server import count_prompt_tokens, reply_text

JSONObject = dict[str, Any]
EVENTSTREAM = "application/vnd.amazon.eventstream"
_STRING_HEADER = 7  # header value type "string" of the event-stream encoding


def encode_event(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One event-stream message: prelude (total length, headers length, CRC32), string headers,
    payload, CRC32 of everything before it."""
    encoded = b"".join(
        struct.pack(">B", len(key)) + key + struct.pack(">BH", _STRING_HEADER, len(data)) + data
        for key, data in ((name.encode(), value.encode()) for name, value in headers.items())
    )
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def _event(event_type: str, payload: JSONObject) -> bytes:
    headers = {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}
    return encode_event(headers, json.dumps(payload).encode())


def _chunk(payload: JSONObject) -> bytes:
    """An invoke-with-response-stream ``chunk`` event: the family's JSON chunk, base64 in ``bytes``."""
    return _event("chunk", {"bytes": base64.b64encode(json.dumps(payload).encode()).decode()})


@dataclass(frozen=True)
class BedrockRequest:
    """One request as the server saw it (the Authorization header is never recorded)."""

    operation: str  # "converse", "converse-stream", "invoke", "invoke-with-response-stream"
    model_id: str
    body: JSONObject | None
    headers: dict[str, str]


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes = b""
    frames: tuple[bytes, ...] | None = None  # event-stream messages, sent chunked
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class _Turn:
    """What the fake model did for one request."""

    prompt_tokens: int
    cached: int
    words: tuple[str, ...]  # reply pieces as streamed: the first word bare, then " word"
    truncated: bool

    @property
    def input_tokens(self) -> int:
        """Input tokens as Bedrock reports them: without the cache reads."""
        return self.prompt_tokens - self.cached

    @property
    def output_tokens(self) -> int:
        return len(self.words)

    @property
    def text(self) -> str:
        return "".join(self.words)

    def metrics(self) -> JSONObject:
        return {"inputTokenCount": self.input_tokens, "outputTokenCount": self.output_tokens,
                "invocationLatency": 1, "firstByteLatency": 1, "cacheReadInputTokenCount": self.cached}


class _ValidationError(Exception):
    pass


def _texts(content: Any) -> list[str]:
    """Texts of a message content: a string, or blocks carrying ``text``."""
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str)]
    return []


def _limit(body: Mapping[str, Any], *path: str, default: int | None = None) -> int | None:
    value: Any = body
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _ValidationError(f"{'.'.join(path)} must be a positive integer")
    return value


@dataclass(frozen=True)
class _Family:
    """How one model family's invoke body is read and its replies are written."""

    prompt: Callable[[JSONObject], tuple[list[str], int]]  # (texts, messages)
    limit: Callable[[JSONObject], int | None]
    reply: Callable[[_Turn], JSONObject]
    chunks: Callable[[_Turn], list[JSONObject]]
    stops: tuple[str, str]  # (natural end, cut at max tokens)


def _chat_prompt(body: JSONObject) -> tuple[list[str], int]:
    messages = body.get("messages") or []
    texts = [t for m in messages for t in _texts(m.get("content"))] + _texts(body.get("system"))
    return texts, len(messages)


def _stop(turn: _Turn, family: _Family) -> str:
    return family.stops[1] if turn.truncated else family.stops[0]


def _anthropic_reply(turn: _Turn) -> JSONObject:
    return {"id": "msg_bdrk_01", "type": "message", "role": "assistant", "model": "claude",
            "content": [{"type": "text", "text": turn.text}], "stop_reason": _stop(turn, ANTHROPIC),
            "stop_sequence": None,
            "usage": {"input_tokens": turn.input_tokens, "output_tokens": turn.output_tokens,
                      "cache_read_input_tokens": turn.cached, "cache_creation_input_tokens": 0}}


def _anthropic_chunks(turn: _Turn) -> list[JSONObject]:
    start = {**_anthropic_reply(turn), "content": [], "stop_reason": None,
             "usage": {"input_tokens": turn.input_tokens, "output_tokens": 1}}
    return [{"type": "message_start", "message": start},
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            *({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}}
              for w in turn.words),
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": _stop(turn, ANTHROPIC), "stop_sequence": None},
             "usage": {"output_tokens": turn.output_tokens}},
            {"type": "message_stop"}]


def _nova_usage(turn: _Turn) -> JSONObject:
    return {"inputTokens": turn.input_tokens, "outputTokens": turn.output_tokens,
            "totalTokens": turn.prompt_tokens + turn.output_tokens,
            "cacheReadInputTokenCount": turn.cached, "cacheWriteInputTokenCount": 0}


def _nova_reply(turn: _Turn) -> JSONObject:
    return {"output": {"message": {"role": "assistant", "content": [{"text": turn.text}]}},
            "stopReason": _stop(turn, NOVA), "usage": _nova_usage(turn)}


def _nova_chunks(turn: _Turn) -> list[JSONObject]:
    return [{"messageStart": {"role": "assistant"}},
            *({"contentBlockDelta": {"delta": {"text": w}, "contentBlockIndex": 0}} for w in turn.words),
            {"contentBlockStop": {"contentBlockIndex": 0}},
            {"messageStop": {"stopReason": _stop(turn, NOVA)}},
            {"metadata": {"usage": _nova_usage(turn)}}]


def _titan_reply(turn: _Turn) -> JSONObject:
    return {"inputTextTokenCount": turn.prompt_tokens,
            "results": [{"tokenCount": turn.output_tokens, "outputText": turn.text,
                         "completionReason": _stop(turn, TITAN)}]}


def _titan_chunks(turn: _Turn) -> list[JSONObject]:
    last = len(turn.words) - 1
    return [{"outputText": w, "index": 0, "totalOutputTextTokenCount": i + 1,
             "completionReason": _stop(turn, TITAN) if i == last else None,
             "inputTextTokenCount": turn.prompt_tokens if i == 0 else None} for i, w in enumerate(turn.words)]


def _llama_reply(turn: _Turn) -> JSONObject:
    return {"generation": turn.text, "prompt_token_count": turn.prompt_tokens,
            "generation_token_count": turn.output_tokens, "stop_reason": _stop(turn, LLAMA)}


def _llama_chunks(turn: _Turn) -> list[JSONObject]:
    last = len(turn.words) - 1
    return [{"generation": w, "prompt_token_count": turn.prompt_tokens if i == 0 else None,
             "generation_token_count": i + 1, "stop_reason": _stop(turn, LLAMA) if i == last else None}
            for i, w in enumerate(turn.words)]


def _require_max_tokens(body: JSONObject) -> int | None:
    if "max_tokens" not in body:  # the Anthropic Messages API requires it
        raise _ValidationError("max_tokens: field required")
    return _limit(body, "max_tokens")


ANTHROPIC = _Family(_chat_prompt, _require_max_tokens, _anthropic_reply, _anthropic_chunks, ("end_turn", "max_tokens"))
NOVA = _Family(_chat_prompt, lambda b: _limit(b, "inferenceConfig", "maxTokens"), _nova_reply, _nova_chunks,
               ("end_turn", "max_tokens"))
TITAN = _Family(lambda b: (_texts(b.get("inputText")), 1),
                lambda b: _limit(b, "textGenerationConfig", "maxTokenCount", default=512),
                _titan_reply, _titan_chunks, ("FINISH", "LENGTH"))
LLAMA = _Family(lambda b: (_texts(b.get("prompt")), 1), lambda b: _limit(b, "max_gen_len", default=512),
                _llama_reply, _llama_chunks, ("stop", "length"))


def family_of(body: Mapping[str, Any]) -> _Family:
    """The family whose invoke format ``body`` is in, by its shape."""
    if "anthropic_version" in body:
        return ANTHROPIC
    if "inputText" in body:
        return TITAN
    if "prompt" in body:
        return LLAMA
    if "messages" in body:
        return NOVA
    raise _ValidationError("Malformed input request, please reformat your input and try again.")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: LocalBedrockServer) -> None:
        self.app = app
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client hanging up mid-stream (an abandoned stream) is normal; anything else is a bug."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests must not drown in access logs."""

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("content-length", "0")))
        reply = self.server.app._handle(self.path, raw, dict(self.headers.items()))
        head = f"HTTP/1.1 {reply.status} {self.responses.get(reply.status, ('Error',))[0]}\r\n"
        extra = "".join(f"{name}: {value}\r\n" for name, value in reply.headers)
        if reply.frames is None:
            self.wfile.write(f"{head}Content-Type: application/json\r\nContent-Length: {len(reply.body)}\r\n"
                             f"{extra}\r\n".encode("latin-1") + reply.body)
            return
        self.wfile.write(f"{head}Content-Type: {EVENTSTREAM}\r\nTransfer-Encoding: chunked\r\n{extra}\r\n"
                         .encode("latin-1"))
        for frame in reply.frames:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(frame), frame))
        self.wfile.write(b"0\r\n\r\n")


class LocalBedrockServer:
    """Bedrock Runtime on a local port; a context manager, or start()/stop()."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, reply_words: int = 24,
                 cache_read_tokens: int = 0) -> None:
        self.host = host
        self.port = port
        self.reply_words = reply_words
        self.cache_read_tokens = cache_read_tokens
        self._lock = threading.Lock()
        self._requests: list[BedrockRequest] = []
        self._failures: deque[tuple[int, str, str]] = deque()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> LocalBedrockServer:
        self._httpd = _HTTPServer((self.host, self.port), self)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="agentguard-bedrock", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> LocalBedrockServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def requests(self) -> list[BedrockRequest]:
        """Every request received since start or the last reset()."""
        with self._lock:
            return list(self._requests)

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self._failures.clear()

    def fail_next(self, status: int, code: str, *, message: str = "injected failure", count: int = 1) -> None:
        """Answer the next ``count`` requests with AWS error ``code`` (e.g. ThrottlingException)."""
        with self._lock:
            self._failures.extend([(status, code, message)] * count)

    # request handling ---------------------------------------------------------------------------

    def _handle(self, path: str, raw: bytes, headers: Mapping[str, str]) -> _Reply:
        parts = path.split("?", 1)[0].split("/")
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        recorded = {k.lower(): v for k, v in headers.items() if k.lower() != "authorization"}
        operation = parts[3] if len(parts) == 4 and parts[1] == "model" else ""
        with self._lock:
            self._requests.append(BedrockRequest(operation, unquote(parts[2]) if operation else "",
                                                 body if isinstance(body, dict) else None, recorded))
            failure = self._failures.popleft() if self._failures else None
        if failure is not None:
            return _error(*failure)
        handler = {"converse": self._converse, "converse-stream": self._converse_stream,
                   "invoke": self._invoke, "invoke-with-response-stream": self._invoke_stream}.get(operation)
        if handler is None:
            return _error(404, "UnknownOperationException", f"No operation at {path}")
        if not isinstance(body, dict):
            return _error(400, "ValidationException", "The request body is not a JSON object.")
        try:
            return handler(body)
        except _ValidationError as exc:
            return _error(400, "ValidationException", str(exc))

    def _turn(self, texts: list[str], messages: int, limit: int | None) -> _Turn:
        prompt = count_prompt_tokens(texts, messages)
        count = self.reply_words if limit is None else min(self.reply_words, limit)
        words = reply_text(count).split(" ") if count else []
        pieces = tuple(w if i == 0 else f" {w}" for i, w in enumerate(words))
        return _Turn(prompt, min(self.cache_read_tokens, prompt), pieces, count < self.reply_words)

    def _converse_turn(self, body: JSONObject) -> tuple[_Turn, str]:
        turn = self._turn(*_chat_prompt(body), _limit(body, "inferenceConfig", "maxTokens"))
        return turn, "max_tokens" if turn.truncated else "end_turn"

    @staticmethod
    def _converse_usage(turn: _Turn) -> JSONObject:
        return {"inputTokens": turn.input_tokens, "outputTokens": turn.output_tokens,
                "totalTokens": turn.prompt_tokens + turn.output_tokens,
                "cacheReadInputTokens": turn.cached, "cacheWriteInputTokens": 0}

    def _converse(self, body: JSONObject) -> _Reply:
        turn, stop = self._converse_turn(body)
        reply = {"output": {"message": {"role": "assistant", "content": [{"text": turn.text}]}},
                 "stopReason": stop, "usage": self._converse_usage(turn), "metrics": {"latencyMs": 1}}
        return _Reply(200, json.dumps(reply).encode())

    def _converse_stream(self, body: JSONObject) -> _Reply:
        turn, stop = self._converse_turn(body)

        def events() -> Iterator[bytes]:
            yield _event("messageStart", {"role": "assistant"})
            for word in turn.words:
                yield _event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": word}})
            yield _event("contentBlockStop", {"contentBlockIndex": 0})
            yield _event("messageStop", {"stopReason": stop})
            yield _event("metadata", {"usage": self._converse_usage(turn), "metrics": {"latencyMs": 1}})

        return _Reply(200, frames=tuple(events()))

    def _family_turn(self, body: JSONObject) -> tuple[_Family, _Turn]:
        family = family_of(body)
        return family, self._turn(*family.prompt(body), family.limit(body))

    def _invoke(self, body: JSONObject) -> _Reply:
        family, turn = self._family_turn(body)
        headers = (("X-Amzn-Bedrock-Input-Token-Count", str(turn.input_tokens)),
                   ("X-Amzn-Bedrock-Output-Token-Count", str(turn.output_tokens)))
        return _Reply(200, json.dumps(family.reply(turn)).encode(), headers=headers)

    def _invoke_stream(self, body: JSONObject) -> _Reply:
        family, turn = self._family_turn(body)
        chunks = family.chunks(turn) or [{}]  # the metrics always travel in a last chunk
        chunks[-1] = {**chunks[-1], "amazon-bedrock-invocationMetrics": turn.metrics()}
        return _Reply(200, frames=tuple(_chunk(c) for c in chunks),
                      headers=(("X-Amzn-Bedrock-Content-Type", "application/json"),))


def _error(status: int, code: str, message: str) -> _Reply:
    """An AWS JSON error: the code in ``x-amzn-ErrorType``, the message in the body."""
    return _Reply(status, json.dumps({"message": message}).encode(), headers=(("x-amzn-ErrorType", code),))
