"""The OpenAI-wire server of the tests (and OpenRouter's flavour of it), on :mod:`tests.servers.base`.

The real ``openai`` SDK talks to it over HTTP on 127.0.0.1, so every calling style (create, parse,
stream helpers, raw and streaming responses, sync and async clients) goes through the real wire
protocol: JSON bodies, and SSE streams.

Endpoints, under ``/v1`` or ``/api/v1`` (both always accepted): ``POST chat/completions``,
``responses``, ``embeddings`` and legacy ``completions``; in OpenRouter mode also ``GET key``
(credit left on the key, see :meth:`LocalOpenAIServer.set_credit_remaining`; controls never apply
to it). Anything else is a 404 in OpenAI's error format.

Deterministic token accounting, so tests can assert exact usage and cost:

- Prompt tokens are the demo endpoint's count (:func:`agentguard_otel.demo.server.count_prompt_tokens`:
  ``ceil(utf8_bytes / 4)`` per text + 3 per message + 3 per request) over the message contents (a
  string, or every content part's ``text``), the Responses ``instructions`` and ``input`` (a
  string ``input`` is one message) and the legacy ``prompt`` (no message overhead). Embeddings
  count their ``input`` without overhead (a token-id array counts one token per id).
- The reply is the first N words of ``REPLY_SENTENCE`` (repeated as needed), one token per word,
  N = ``reply_words``. Reasoning models (name after the last "/" contains "gpt-5" or starts with
  "o") also spend 8 reasoning tokens, counted inside the completion tokens. The request's max
  output tokens (``max_completion_tokens``, ``max_tokens`` or ``max_output_tokens``; legacy
  completions default to 16) caps reasoning + visible tokens; a capped reply finishes with
  "length" (Responses: status "incomplete").
- ``cached_tokens`` is reported as cached prompt tokens, capped at the prompt tokens.
- OpenRouter mode adds ``usage.cost`` in USD: ``(prompt * input + completion * output) / 1e6``
  computed with Decimal from ``prices_usd_per_mtok`` (unlisted models: ``DEFAULT_PRICE_USD_PER_MTOK``),
  written as a JSON number (exact for any cost of at most 15 significant digits).

Models: the response echoes the requested model. A model named "unavailable/..." gets a 404; in
OpenRouter mode a ``models`` list in the body is a fallback list and the first entry not named
"unavailable/..." answers (and is echoed), so fallbacks can be exercised.

Controls (see :mod:`tests.servers.base`): ``fail_next`` answers ``{"error": {"message", "type",
"param", "code"}}`` (429/5xx with ``retry-after-ms: 1``; an injected 429's code is
``rate_limit_exceeded``). ``usage_next`` replaces ``usage`` of a chat, legacy completion or
embeddings body, of a stream's final usage chunk (with :data:`OMIT_USAGE` that chunk is not sent,
even when ``stream_options.include_usage`` asked for it), and of a Response (body, and the
``response.completed`` / ``response.incomplete`` event); the usage-less ``usage: null`` fields of
the other stream events stay. ``call_tool_next(name, arguments)`` makes the next Response or chat
completion a call of that function tool instead of a message (a Response's
``response.function_call_arguments`` events, a chat stream's ``tool_calls`` deltas, finish reason
``tool_calls``), billed as the message would have been: an agent's tool turn, then its answer.
Chat completions and Responses report ``service_tier``: the one asked for, or for ``auto`` (or
none) the project's (:meth:`LocalOpenAIServer.set_project_tier`, ``default`` unless set).
``bill_with`` replaces the prompt and completion token counts (no reasoning or cached tokens; the
reply has one word per billed output token).
"""

from __future__ import annotations

import base64
import json
import struct
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from agentguard_otel.demo.server import (
    DEFAULT_PRICE_USD_PER_MTOK,
    REPLY_SENTENCE,
    content_texts,
    count_prompt_tokens,
    reply_pieces,
    text_tokens,
)
from tests.servers import openai_media
from tests.servers.base import (
    OMIT_USAGE,
    ApiError,
    Endpoint,
    JSONObject,
    LocalServer,
    Reply,
    retry_now,
    sse,
)

__all__ = ["OMIT_USAGE", "REPLY_SENTENCE", "LocalOpenAIServer", "embedding_vector", "is_reasoning_model"]

REASONING_TOKENS = 8
LEGACY_DEFAULT_MAX_TOKENS = 16
EMBEDDING_DEFAULT_DIMENSIONS = 8
UNAVAILABLE_MODEL_PREFIX = "unavailable/"
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


def is_reasoning_model(model: str) -> bool:
    """Whether the server bills reasoning tokens for `model` (provider prefix ignored)."""
    name = model.rsplit("/", 1)[-1]
    return "gpt-5" in name or name.startswith("o")


def embedding_vector(text: str, dimensions: int = EMBEDDING_DEFAULT_DIMENSIONS) -> list[float]:
    """Deterministic vector of multiples of 1/256, exact in float32 so base64 round-trips."""
    seed = zlib.crc32(text.encode("utf-8"))
    return [((seed >> (j % 25)) + 37 * j) % 256 / 256 - 0.5 for j in range(dimensions)]


@dataclass(frozen=True)
class _Completion:
    """What the fake model produced for one request: usage and the reply's pieces."""

    model: str
    prompt_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    words: int
    truncated: bool
    json_reply: bool

    @property
    def completion_tokens(self) -> int:
        return self.reasoning_tokens + self.words

    @property
    def pieces(self) -> list[str]:
        """Stream deltas; joined they are the full reply (a JSON object when one was asked for)."""
        parts = reply_pieces(self.words)
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


def _sse_data(payloads: list[JSONObject]) -> list[bytes]:
    """Chat/legacy framing: unnamed data events closed by `data: [DONE]`."""
    return [sse(p) for p in payloads] + [b"data: [DONE]\n\n"]


def _sse_named(payloads: list[JSONObject]) -> list[bytes]:
    """Responses framing: `event: <type>` lines, numbered events, no [DONE]."""
    return [sse({**payload, "sequence_number": n}, payload["type"]) for n, payload in enumerate(payloads)]


def _text_part(text: str) -> JSONObject:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _require_model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "you must provide a model parameter", param="model")
    return model


def _max_tokens(body: Mapping[str, Any], *names: str) -> int | None:
    """The first of `names` the request sets, validated as a positive integer."""
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ApiError(400, f"Invalid '{name}': expected an integer of at least 1.", param=name)
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


def _error_body(message: str, error_type: str, param: str | None = None, code: str | None = None) -> JSONObject:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


class LocalOpenAIServer(LocalServer):
    """OpenAI-compatible endpoint (or OpenRouter's, with ``openrouter=True``) on a local port."""

    thread_name = "agentguard-openai"
    invalid_json_message = "We could not parse the JSON body of your request."

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
        if cached_tokens < 0:
            raise ValueError("cached_tokens must be >= 0")
        super().__init__(host, port, reply_words=reply_words)
        self.openrouter = openrouter
        self.cached_tokens = cached_tokens
        self._prices = {
            model: (_decimal_price(model, rates[0]), _decimal_price(model, rates[1]))
            for model, rates in (prices_usd_per_mtok or {}).items()
        }
        self._default_price = (Decimal(DEFAULT_PRICE_USD_PER_MTOK[0]), Decimal(DEFAULT_PRICE_USD_PER_MTOK[1]))
        self._credit_remaining_usd: str | None = None  # OpenRouter /key: None means no limit on the key
        self._background: dict[str, JSONObject] = {}  # background responses by id, as finished
        self._answer_as: str | None = None
        self.project_tier = "default"
        self._endpoints: dict[str, Endpoint] = {
            "chat/completions": self._chat,
            "responses": self._responses,
            "embeddings": self._embeddings,
            "completions": self._completions,
            "images/generations": lambda body: openai_media.images(self, body, "image_generation"),
            "images/edits": lambda body: openai_media.images(self, body, "image_edit"),
            "audio/speech": lambda body: openai_media.speech(self, body),
            "audio/transcriptions": lambda body: openai_media.transcription(self, body),
            "audio/translations": lambda body: openai_media.transcription(self, body),
        }

    def _answer(self, method: str, path: str, raw: bytes,
                headers: Mapping[str, str]) -> tuple[Reply, bool, int | None]:
        """A multipart/form-data body (images edits, transcriptions) is answered as its JSON form."""
        content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
        if content_type.startswith("multipart/form-data"):
            fields = openai_media.multipart_json(raw, content_type)
            raw = json.dumps(fields).encode() if fields is not None else raw
        return super()._answer(method, path, raw, headers)

    @property
    def base_path(self) -> str:
        return "/api/v1" if self.openrouter else "/v1"

    def set_credit_remaining(self, usd: str | None) -> None:
        """What OpenRouter's ``GET /key`` reports as ``limit_remaining`` (None: an unlimited key)."""
        self._credit_remaining_usd = usd

    # the API ------------------------------------------------------------------------------------

    def route(self, method: str, path: str) -> Endpoint | None:
        route = path.split("?", 1)[0]
        for prefix in ("/api/v1/", "/v1/"):
            if method == "POST" and route.startswith(prefix):
                return self._endpoints.get(route[len(prefix) :])
        return None

    def service_reply(self, method: str, path: str) -> Reply | None:
        head, _, response_id = path.split("?", 1)[0].rpartition("/")
        if method == "GET" and head.endswith("/responses") and response_id in self._background:
            return Reply(200, self._background[response_id])
        if not (method == "GET" and self.openrouter and path.split("?", 1)[0] in ("/api/v1/key", "/v1/key")):
            return None
        remaining = self._credit_remaining_usd
        limit = None if remaining is None else float(Decimal(remaining) + 10)
        data = {"label": "sk-or-v1-local", "limit": limit, "usage": 10.0 if limit is not None else 0.0,
                "limit_remaining": None if remaining is None else float(Decimal(remaining)), "is_free_tier": False}
        return Reply(200, {"data": data})

    def not_found(self, method: str, path: str) -> Reply:
        return Reply(404, _error_body(f"Invalid URL ({method} {path})", "invalid_request_error"))

    def error_reply(self, error: ApiError) -> Reply:
        default_type = "server_error" if error.status >= 500 else "invalid_request_error"
        code = error.code or ("rate_limit_exceeded" if error.status == 429 else None)
        body = _error_body(error.message, _ERROR_TYPES.get(error.status, default_type), error.param, code)
        return Reply(error.status, body, headers=retry_now(error.status))

    # the fake model -----------------------------------------------------------------------------

    def reset(self) -> None:
        super().reset()
        self.project_tier = "default"

    def _chat_tool_call(self) -> JSONObject | None:
        """The pending ``call_tool_next``, if any, as the chat API's ``tool_calls`` entry."""
        tool = self.take_tool_call()
        if tool is None:
            return None
        return {"id": self.next_id("call_"), "type": "function", "function": {"name": tool[0], "arguments": tool[1]}}

    def _output_item(self, item_id: str, status: str, text: str) -> JSONObject:
        """The Response's output: the pending tool call, else the message of ``text``."""
        tool = self._chat_tool_call()
        if tool is not None:
            return {"id": item_id, "type": "function_call", "status": "completed", "call_id": tool["id"],
                    **tool["function"]}
        return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": [_text_part(text)]}

    def set_project_tier(self, tier: str) -> None:
        """The tier a request asking for ``auto`` (or for none) is processed at, as a project's
        default tier decides (until :meth:`reset`); the reply reports it as ``service_tier``."""
        self.project_tier = tier

    def _tier(self, body: Mapping[str, Any]) -> str:
        asked = body.get("service_tier")
        return asked if isinstance(asked, str) and asked != "auto" else self.project_tier

    def answer_as(self, model: str | None) -> None:
        """Answer every request as ``model``, whatever was asked (a provider routing elsewhere)."""
        self._answer_as = model

    def _effective_model(self, body: Mapping[str, Any]) -> str:
        """The requested model, or in OpenRouter mode the first available entry of `models`."""
        model = _require_model(body)
        if self._answer_as is not None:
            return self._answer_as
        fallbacks = body.get("models")
        candidates = fallbacks if self.openrouter and isinstance(fallbacks, list) and fallbacks else [model]
        for candidate in candidates:
            if isinstance(candidate, str) and not candidate.startswith(UNAVAILABLE_MODEL_PREFIX):
                return candidate
        raise ApiError(404, f"No endpoints found for {model}.", param="model", code="model_not_found")

    def _complete(self, model: str, prompt_tokens: int, limit: int | None, json_reply: bool) -> _Completion:
        bill = self.current_bill()
        if bill is not None:  # bill_with: the whole output is visible words, nothing cached
            return _Completion(model, bill.input_tokens, 0, 0, bill.output_tokens, False, json_reply)
        reasoning_budget = REASONING_TOKENS if is_reasoning_model(model) else 0
        wanted = reasoning_budget + self.reply_words
        total = wanted if limit is None else min(wanted, limit)
        reasoning = min(reasoning_budget, total)
        return _Completion(
            model=model,
            prompt_tokens=prompt_tokens,
            cached_tokens=min(self.cached_tokens, prompt_tokens),
            reasoning_tokens=reasoning,
            words=total - reasoning,
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

    def _usage_chunks(self, base: JSONObject, done: _Completion, include_usage: bool) -> list[JSONObject]:
        """A stream's final usage chunk: when asked for, unless usage_next omits it."""
        if not include_usage:
            return []
        report = self.take_usage()
        return [] if report.omitted else [{**base, "choices": [], "usage": report(self._usage(done))}]

    def _envelope(self, prefix: str, obj: str, model: str) -> JSONObject:
        envelope: JSONObject = {
            "id": self.next_id(prefix),
            "object": obj,
            "created": int(time.time()),
            "model": model,
        }
        if self.openrouter:
            envelope["provider"] = _PROVIDER_NAMES.get(model.split("/", 1)[0], "OpenAI") if "/" in model else "OpenAI"
        return envelope

    # endpoints ----------------------------------------------------------------------------------

    def _chat(self, body: JSONObject) -> Reply:
        model = self._effective_model(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise ApiError(400, "'messages' must be a non-empty array of message objects.", param="messages")
        texts = [text for message in messages for text in content_texts(message.get("content"))]
        done = self._complete(
            model,
            count_prompt_tokens(texts, len(messages)),
            _max_tokens(body, "max_completion_tokens", "max_tokens"),
            _wants_json(body.get("response_format")),
        )
        tool = self._chat_tool_call()
        finish = "tool_calls" if tool else "length" if done.truncated else "stop"
        base = {
            **self._envelope("chatcmpl-", "chat.completion", done.model),
            "system_fingerprint": "fp_agentguard",
            "service_tier": self._tier(body),
        }
        if not body.get("stream"):
            message: JSONObject = {
                "role": "assistant",
                "content": None if tool else done.text,
                "refusal": None,
                "annotations": [],
                **({"tool_calls": [tool]} if tool else {}),
            }
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            return Reply(200, {**base, "choices": [choice], "usage": self.take_usage()(self._usage(done))})
        base["object"] = "chat.completion.chunk"
        include_usage = _include_usage(body)

        def chunk(delta: JSONObject, finish_reason: str | None = None) -> JSONObject:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return {**base, "choices": [choice], **({"usage": None} if include_usage else {})}

        if tool:
            opened = {**tool, "index": 0, "function": {**tool["function"], "arguments": ""}}
            chunks = [chunk({"role": "assistant", "content": None, "tool_calls": [opened]}),
                      chunk({"tool_calls": [{"index": 0, "function": {"arguments": tool["function"]["arguments"]}}]})]
        else:
            chunks = [chunk({"role": "assistant", "content": ""})]
            chunks += [chunk({"content": piece}) for piece in done.pieces]
        chunks.append(chunk({}, finish))
        return Reply.stream(_sse_data(chunks + self._usage_chunks(base, done, include_usage)))

    def _completions(self, body: JSONObject) -> Reply:
        model = self._effective_model(body)
        prompt = body.get("prompt")
        texts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
            raise ApiError(400, "'prompt' must be a string or an array of strings.", param="prompt")
        limit = _max_tokens(body, "max_tokens")
        done = self._complete(
            model, count_prompt_tokens(texts, 0), LEGACY_DEFAULT_MAX_TOKENS if limit is None else limit, False
        )
        finish = "length" if done.truncated else "stop"
        base = self._envelope("cmpl-", "text_completion", done.model)

        def choice(text: str, finish_reason: str | None) -> JSONObject:
            return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}

        if not body.get("stream"):
            usage = self.take_usage()(self._usage(done))
            return Reply(200, {**base, "choices": [choice(done.text, finish)], "usage": usage})
        chunks = [{**base, "choices": [choice(piece, None)]} for piece in done.pieces]
        chunks.append({**base, "choices": [choice("", finish)]})
        return Reply.stream(_sse_data(chunks + self._usage_chunks(base, done, _include_usage(body))))

    def _embeddings(self, body: JSONObject) -> Reply:
        model = self._effective_model(body)
        raw_input = body.get("input")
        items: list[Any] = raw_input if isinstance(raw_input, list) else [raw_input]
        if items and all(isinstance(i, int) for i in items):
            items = [items]  # one token-id array
        if not items or not all(isinstance(i, (str, list)) for i in items):
            raise ApiError(400, "'input' must be a string, an array of strings or token arrays.", param="input")
        dimensions = body.get("dimensions") or EMBEDDING_DEFAULT_DIMENSIONS
        if not isinstance(dimensions, int) or dimensions < 1:
            raise ApiError(400, "'dimensions' must be a positive integer.", param="dimensions")
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
        return Reply(200, {"object": "list", "data": data, "model": model, "usage": self.take_usage()(usage)})

    def _responses(self, body: JSONObject) -> Reply:
        model = self._effective_model(body)
        raw_input = body.get("input")
        instructions = body.get("instructions")
        texts = [instructions] if isinstance(instructions, str) else []
        if isinstance(raw_input, str):
            texts.append(raw_input)
            messages = 1
        elif isinstance(raw_input, list):
            texts += [t for item in raw_input if isinstance(item, dict) for t in content_texts(item.get("content"))]
            messages = len(raw_input)
        else:
            raise ApiError(400, "'input' must be a string or an array of input items.", param="input")
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
        item_id = self.next_id("msg_")

        item = self._output_item(item_id, status, done.text)
        usage = {
            "input_tokens": done.prompt_tokens,
            "input_tokens_details": {"cached_tokens": done.cached_tokens, "cache_write_tokens": 0},
            "output_tokens": done.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": done.reasoning_tokens},
            "total_tokens": done.prompt_tokens + done.completion_tokens,
            **self._cost(done.model, done.prompt_tokens, done.completion_tokens),
        }

        def response(state: str, output: list[JSONObject], usage: Any) -> JSONObject:
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
                "service_tier": self._tier(body),
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

        reported = self.take_usage()(usage)
        if body.get("background") and not body.get("stream"):
            # Accepted now, done later: the reply says "queued"; ``GET /responses/{id}`` has the result.
            self._background[envelope["id"]] = response(status, [item], reported)
            return Reply(200, response("queued", [], None))
        if not body.get("stream"):
            return Reply(200, response(status, [item], reported))
        at = {"item_id": item_id, "output_index": 0, "content_index": 0}
        if item["type"] == "function_call":
            deltas: list[JSONObject] = [
                {"type": "response.output_item.added", "output_index": 0,
                 "item": {**item, "status": "in_progress", "arguments": ""}},
                {"type": "response.function_call_arguments.delta", "item_id": item_id, "output_index": 0,
                 "delta": item["arguments"]},
                {"type": "response.function_call_arguments.done", "item_id": item_id, "output_index": 0,
                 "name": item["name"], "arguments": item["arguments"]},
            ]
        else:
            deltas = [
                {"type": "response.output_item.added", "output_index": 0,
                 "item": {**item, "status": "in_progress", "content": []}},
                {"type": "response.content_part.added", **at, "part": _text_part("")},
                *({"type": "response.output_text.delta", **at, "delta": piece, "logprobs": []}
                  for piece in done.pieces),
                {"type": "response.output_text.done", **at, "text": done.text, "logprobs": []},
                {"type": "response.content_part.done", **at, "part": _text_part(done.text)},
            ]
        events: list[JSONObject] = [
            {"type": "response.created", "response": response("in_progress", [], None)},
            {"type": "response.in_progress", "response": response("in_progress", [], None)},
            *deltas,
            {"type": "response.output_item.done", "output_index": 0, "item": item},
            {"type": f"response.{status}", "response": response(status, [item], reported)},
        ]
        return Reply.stream(_sse_named(events))
