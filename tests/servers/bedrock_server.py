"""A local AWS Bedrock Runtime endpoint for tests of the real ``boto3`` client, on :mod:`tests.servers.base`.

The client is real: ``boto3.client("bedrock-runtime", endpoint_url=server.url, ...)`` with dummy
credentials signs, serializes and parses exactly as against AWS. The AWS account is the only thing
mocked: nothing here talks to the cloud, and the signature is not checked.

Operations (``POST``):

- ``/model/{modelId}/converse``: Converse JSON.
- ``/model/{modelId}/converse-stream``: Converse events (``messageStart``, ``contentBlockDelta`` per
  word, ``contentBlockStop``, ``messageStop``, ``metadata`` with usage) in the binary
  ``application/vnd.amazon.eventstream`` framing, one frame per HTTP chunk.
- ``/model/{modelId}/invoke``: the model-native JSON body and reply of the model family, which the
  server recognises by the body's shape (not by the model id, so that the adapter's id-based reading
  is checked independently): ``anthropic_version`` -> Anthropic Messages, ``inputText`` -> Titan
  text, ``prompt`` -> Meta Llama, ``messages`` -> Amazon Nova. The usage is also in the
  ``X-Amzn-Bedrock-Input-Token-Count`` / ``-Output-Token-Count`` headers.
- ``/model/{modelId}/invoke-with-response-stream``: ``chunk`` events whose ``bytes`` are that
  family's stream chunks; the last carries ``amazon-bedrock-invocationMetrics``.

Deterministic token accounting (the demo endpoint's rules): prompt tokens = ceil(utf8 bytes / 4) of
every message and system text + 3 per message + 3; the reply is ``reply_words`` words, one token
each, cut at the request's max output tokens. With ``cache_read_tokens`` that many prompt tokens
are reported as cache reads and, as Bedrock does, left out of the input count. ``bill_with``
replaces the prompt and reply counts and the cache writes (no cache reads then; the reply is cut at
its billed length).

Errors are AWS JSON errors: ``{"message": ...}`` with the code in ``x-amzn-ErrorType``
(``fail_next``'s ``code``; by default the usual one for the status, e.g. 429 ThrottlingException).

``usage_next`` replaces every usage report of the reply: Converse ``usage``, the ``metadata``
event's ``usage``, ``amazon-bedrock-invocationMetrics``, the family's own usage in an invoke body
or stream chunks (Anthropic and Nova: their ``usage`` objects; Titan and Llama: each token-count
field) and the two usage headers (the value's JSON text). With :data:`OMIT_USAGE` all of them are
left out (the ``metadata`` event is still sent, without ``usage``).
"""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote

from agentguard_otel.demo.server import content_texts, count_prompt_tokens, reply_pieces
from tests.servers.base import (
    OMIT_USAGE,
    ApiError,
    Endpoint,
    JSONObject,
    LocalServer,
    RecordedRequest,
    Reply,
    UsageReport,
    encode_json,
)

__all__ = ["EVENTSTREAM", "OMIT_USAGE", "BedrockRequest", "LocalBedrockServer", "encode_event", "family_of"]

EVENTSTREAM = "application/vnd.amazon.eventstream"
_STRING_HEADER = 7  # header value type "string" of the event-stream encoding
_ERROR_CODES = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    503: "ServiceUnavailableException",
}


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
    return encode_event(headers, encode_json(payload))


def _chunk(payload: JSONObject) -> bytes:
    """An invoke-with-response-stream ``chunk`` event: the family's JSON chunk, base64 in ``bytes``."""
    return _event("chunk", {"bytes": base64.b64encode(encode_json(payload)).decode()})


@dataclass(frozen=True)
class BedrockRequest(RecordedRequest):
    """One request as the server saw it, with the operation and model id of its path."""

    operation: str  # "converse", "converse-stream", "invoke", "invoke-with-response-stream"; "" elsewhere
    model_id: str


@dataclass(frozen=True)
class _Turn:
    """What the fake model did for one request, and how the reply reports its usage."""

    prompt_tokens: int
    cached: int
    words: tuple[str, ...]  # reply pieces as streamed: the first word bare, then " word"
    truncated: bool
    report: UsageReport
    cache_written: int = 0

    @property
    def input_tokens(self) -> int:
        """Input tokens as Bedrock reports them: without the cache reads and writes."""
        return self.prompt_tokens - self.cached - self.cache_written

    @property
    def output_tokens(self) -> int:
        return len(self.words)

    @property
    def text(self) -> str:
        return "".join(self.words)

    def metrics(self) -> Any:
        return self.report({"inputTokenCount": self.input_tokens, "outputTokenCount": self.output_tokens,
                            "invocationLatency": 1, "firstByteLatency": 1, "cacheReadInputTokenCount": self.cached,
                            "cacheWriteInputTokenCount": self.cache_written})

    def headers(self) -> tuple[tuple[str, str], ...]:
        if self.report.omitted:
            return ()
        return (("X-Amzn-Bedrock-Input-Token-Count", encode_json(self.report(self.input_tokens)).decode()),
                ("X-Amzn-Bedrock-Output-Token-Count", encode_json(self.report(self.output_tokens)).decode()))


def _limit(body: Mapping[str, Any], *path: str, default: int | None = None) -> int | None:
    value: Any = body
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ApiError(400, f"{'.'.join(path)} must be a positive integer")
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
    texts = [t for m in messages for t in content_texts(m.get("content"))] + content_texts(body.get("system"))
    return texts, len(messages)


def _stop(turn: _Turn, family: _Family) -> str:
    return family.stops[1] if turn.truncated else family.stops[0]


def _anthropic_reply(turn: _Turn) -> JSONObject:
    return {"id": "msg_bdrk_01", "type": "message", "role": "assistant", "model": "claude",
            "content": [{"type": "text", "text": turn.text}], "stop_reason": _stop(turn, ANTHROPIC),
            "stop_sequence": None,
            "usage": turn.report({"input_tokens": turn.input_tokens, "output_tokens": turn.output_tokens,
                                  "cache_read_input_tokens": turn.cached,
                                  "cache_creation_input_tokens": turn.cache_written})}


def _anthropic_chunks(turn: _Turn) -> list[JSONObject]:
    start = {**_anthropic_reply(turn), "content": [], "stop_reason": None,
             "usage": turn.report({"input_tokens": turn.input_tokens, "output_tokens": 1})}
    return [{"type": "message_start", "message": start},
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            *({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}}
              for w in turn.words),
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": _stop(turn, ANTHROPIC), "stop_sequence": None},
             "usage": turn.report({"output_tokens": turn.output_tokens})},
            {"type": "message_stop"}]


def _nova_usage(turn: _Turn) -> Any:
    return turn.report({"inputTokens": turn.input_tokens, "outputTokens": turn.output_tokens,
                        "totalTokens": turn.prompt_tokens + turn.output_tokens,
                        "cacheReadInputTokenCount": turn.cached, "cacheWriteInputTokenCount": turn.cache_written})


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
    return {"inputTextTokenCount": turn.report(turn.prompt_tokens),
            "results": [{"tokenCount": turn.report(turn.output_tokens), "outputText": turn.text,
                         "completionReason": _stop(turn, TITAN)}]}


def _titan_chunks(turn: _Turn) -> list[JSONObject]:
    last = len(turn.words) - 1
    return [{"outputText": w, "index": 0, "totalOutputTextTokenCount": turn.report(i + 1),
             "completionReason": _stop(turn, TITAN) if i == last else None,
             "inputTextTokenCount": turn.report(turn.prompt_tokens) if i == 0 else None}
            for i, w in enumerate(turn.words)]


def _llama_reply(turn: _Turn) -> JSONObject:
    return {"generation": turn.text, "prompt_token_count": turn.report(turn.prompt_tokens),
            "generation_token_count": turn.report(turn.output_tokens), "stop_reason": _stop(turn, LLAMA)}


def _llama_chunks(turn: _Turn) -> list[JSONObject]:
    last = len(turn.words) - 1
    return [{"generation": w, "prompt_token_count": turn.report(turn.prompt_tokens) if i == 0 else None,
             "generation_token_count": turn.report(i + 1), "stop_reason": _stop(turn, LLAMA) if i == last else None}
            for i, w in enumerate(turn.words)]


def _require_max_tokens(body: JSONObject) -> int | None:
    if "max_tokens" not in body:  # the Anthropic Messages API requires it
        raise ApiError(400, "max_tokens: field required")
    return _limit(body, "max_tokens")


ANTHROPIC = _Family(_chat_prompt, _require_max_tokens, _anthropic_reply, _anthropic_chunks, ("end_turn", "max_tokens"))
NOVA = _Family(_chat_prompt, lambda b: _limit(b, "inferenceConfig", "maxTokens"), _nova_reply, _nova_chunks,
               ("end_turn", "max_tokens"))
TITAN = _Family(lambda b: (content_texts(b.get("inputText")), 1),
                lambda b: _limit(b, "textGenerationConfig", "maxTokenCount", default=512),
                _titan_reply, _titan_chunks, ("FINISH", "LENGTH"))
LLAMA = _Family(lambda b: (content_texts(b.get("prompt")), 1), lambda b: _limit(b, "max_gen_len", default=512),
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
    raise ApiError(400, "Malformed input request, please reformat your input and try again.")


def _operation(path: str) -> tuple[str, str]:
    """(operation, model id) of a ``/model/{modelId}/{operation}`` path; ("", "") for any other."""
    parts = path.split("?", 1)[0].split("/")
    if len(parts) == 4 and parts[0] == "" and parts[1] == "model":
        return parts[3], unquote(parts[2])
    return "", ""


class LocalBedrockServer(LocalServer):
    """Bedrock Runtime on a local port; a context manager, or start()/stop()."""

    thread_name = "agentguard-bedrock"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, reply_words: int = 24,
                 cache_read_tokens: int = 0) -> None:
        super().__init__(host, port, reply_words=reply_words)
        self.cache_read_tokens = cache_read_tokens
        self._operations: dict[str, Endpoint] = {
            "converse": self._converse, "converse-stream": self._converse_stream,
            "invoke": self._invoke, "invoke-with-response-stream": self._invoke_stream,
        }

    @property
    def requests(self) -> list[BedrockRequest]:  # type: ignore[override]
        """Every request received since start or the last reset() (each recorded by :meth:`record`)."""
        return cast("list[BedrockRequest]", super().requests)

    # the API ------------------------------------------------------------------------------------

    def record(self, method: str, path: str, body: JSONObject | None, headers: dict[str, str]) -> BedrockRequest:
        return BedrockRequest(method, path, body, headers, *_operation(path))

    def route(self, method: str, path: str) -> Endpoint | None:
        return self._operations.get(_operation(path)[0]) if method == "POST" else None

    def not_found(self, method: str, path: str) -> Reply:
        return self.error_reply(ApiError(404, f"No operation at {method} {path}", code="UnknownOperationException"))

    def error_reply(self, error: ApiError) -> Reply:
        code = error.code or _ERROR_CODES.get(error.status, "InternalServerException")
        return Reply(error.status, {"message": error.message}, headers=(("x-amzn-ErrorType", code),))

    def _turn(self, texts: list[str], messages: int, limit: int | None) -> _Turn:
        bill = self.current_bill()
        if bill is not None:
            return _Turn(bill.input_tokens, 0, tuple(reply_pieces(bill.output_tokens)), True, self.take_usage(),
                         bill.cache_write_tokens)
        prompt = count_prompt_tokens(texts, messages)
        count = self.reply_words if limit is None else min(self.reply_words, limit)
        return _Turn(prompt, min(self.cache_read_tokens, prompt), tuple(reply_pieces(count)),
                     count < self.reply_words, self.take_usage())

    def _converse_turn(self, body: JSONObject) -> tuple[_Turn, str]:
        turn = self._turn(*_chat_prompt(body), _limit(body, "inferenceConfig", "maxTokens"))
        return turn, "max_tokens" if turn.truncated else "end_turn"

    @staticmethod
    def _converse_usage(turn: _Turn) -> Any:
        return turn.report({"inputTokens": turn.input_tokens, "outputTokens": turn.output_tokens,
                            "totalTokens": turn.prompt_tokens + turn.output_tokens,
                            "cacheReadInputTokens": turn.cached, "cacheWriteInputTokens": turn.cache_written})

    def _converse(self, body: JSONObject) -> Reply:
        turn, stop = self._converse_turn(body)
        reply = {"output": {"message": {"role": "assistant", "content": [{"text": turn.text}]}},
                 "stopReason": stop, "usage": self._converse_usage(turn), "metrics": {"latencyMs": 1}}
        return Reply(200, reply)

    def _converse_stream(self, body: JSONObject) -> Reply:
        turn, stop = self._converse_turn(body)

        def events() -> Iterator[bytes]:
            yield _event("messageStart", {"role": "assistant"})
            for word in turn.words:
                yield _event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": word}})
            yield _event("contentBlockStop", {"contentBlockIndex": 0})
            yield _event("messageStop", {"stopReason": stop})
            yield _event("metadata", {"usage": self._converse_usage(turn), "metrics": {"latencyMs": 1}})

        return Reply.stream(tuple(events()), content_type=EVENTSTREAM)

    def _family_turn(self, body: JSONObject) -> tuple[_Family, _Turn]:
        family = family_of(body)
        return family, self._turn(*family.prompt(body), family.limit(body))

    def _invoke(self, body: JSONObject) -> Reply:
        family, turn = self._family_turn(body)
        return Reply(200, family.reply(turn), headers=turn.headers())

    def _invoke_stream(self, body: JSONObject) -> Reply:
        family, turn = self._family_turn(body)
        chunks = family.chunks(turn) or [{}]  # the metrics always travel in a last chunk
        chunks[-1] = {**chunks[-1], "amazon-bedrock-invocationMetrics": turn.metrics()}
        return Reply.stream(tuple(_chunk(c) for c in chunks), content_type=EVENTSTREAM,
                            headers=(("X-Amzn-Bedrock-Content-Type", "application/json"),))
