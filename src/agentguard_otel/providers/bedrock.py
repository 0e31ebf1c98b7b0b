"""AWS Bedrock adapter (``boto3`` / ``botocore``, service ``bedrock-runtime``).

botocore sends every operation of every client through ``BaseClient._make_api_call(operation,
params)``; one wrapper there guards ``converse``, ``converse_stream``, ``invoke_model`` and
``invoke_model_with_response_stream`` of clients built before and after ``instrument()``.

Converse has one model-neutral format; InvokeModel carries the model's own JSON, whose format the
model id names (``anthropic.``, ``amazon.nova``, ``amazon.titan-text``, ``meta.llama``, after an
optional inference-profile prefix such as ``us.`` or ``global.``). Each format is a
:class:`Family` table entry: where inputs, the output limit, usage, text and stop reasons are.
Inference-profile ids are priced as they are (the bundled prices list them; a ``global.`` profile
may cost less than a regional one), so the id is never stripped for pricing.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import weakref
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import wrapt
from opentelemetry.instrumentation.utils import unwrap

from agentguard_otel.call import LLMRequest, MalformedResponse, RequestChanges, ResponseInfo, UnknownEndpoint
from agentguard_otel.lifecycle import Settler, run
from agentguard_otel.pricing import TokenUsage
from agentguard_otel.providers import GuardRef, Integration
from agentguard_otel.providers.anthropic import tool_use_overhead_tokens
from agentguard_otel.providers.base import (
    MAX_OUTPUT_TOKENS,
    InputMeasure,
    Path,
    UsageFields,
    caused_by,
    counts,
    find_unseen,
    get_path,
    measure_input,
)
from agentguard_otel.providers.stream import BodyObserver, loads, read_whole

SERVICE = "bedrock-runtime"
PROVIDER = "aws.bedrock"  # semconv gen_ai.provider.name
PRICE_PROVIDER = "aws"
DEFAULT_ATTEMPTS = 5  # botocore's legacy retry mode (the larger default) when the config names none
INVOCATION_METRICS = "amazon-bedrock-invocationMetrics"

# Bedrock reports cache reads and writes outside its input count (totalTokens = all four).
CONVERSE_USAGE = UsageFields(input=("inputTokens",), output=("outputTokens",),
                             cache_read=("cacheReadInputTokens",), cache_write=("cacheWriteInputTokens",),
                             input_excludes_cache=True)
METRICS_USAGE = UsageFields(input=("inputTokenCount",), output=("outputTokenCount",),
                            cache_read=("cacheReadInputTokenCount",), cache_write=("cacheWriteInputTokenCount",),
                            input_excludes_cache=True)
# InvokeModel answers carry the counts as HTTP headers too, whatever the model: the fallback.
HEADER_USAGE = UsageFields(input=("x-amzn-bedrock-input-token-count",),
                           output=("x-amzn-bedrock-output-token-count",),
                           cache_read=("x-amzn-bedrock-cache-read-input-token-count",),
                           cache_write=("x-amzn-bedrock-cache-write-input-token-count",),
                           input_excludes_cache=True)


@dataclass(frozen=True)
class Family:
    """One request/response format: the Converse API's, or a model family's InvokeModel JSON."""

    name: str
    stems: tuple[str, ...]  # model-id beginnings (after any inference-profile prefix)
    input_fields: tuple[str, ...]  # body fields sent to the model; empty: the whole body
    item_field: str | None  # the list whose entries each carry a per-message overhead
    max_output: Path | None  # where the output limit is (written there when clamped or injected)
    default_max_output: int | None = None  # what the model does when no limit is set
    usage: UsageFields | None = None  # usage in a whole response body, relative to ``usage_at``
    usage_at: Path = ("usage",)
    results: Path | None = None  # a list of results, each read like a stream chunk (Titan)
    stop: tuple[Path, ...] = ()  # stop reason in a body, a result or a stream chunk

    def matches(self, model_id: str) -> bool:
        return model_id.startswith(self.stems)

    def read_usage(self, body: Any) -> TokenUsage | None:
        if self.usage is None:
            return None
        usage = self.usage.read(get_path(body, self.usage_at))
        if usage is None or self.results is None:
            return usage
        output = self.usage.output
        return replace(usage, output_tokens=sum(_int(get_path(r, output)) for r in _parts(body, self.results)))


CONVERSE = Family(
    name="converse", stems=(), input_fields=("messages", "system", "toolConfig"), item_field="messages",
    max_output=("inferenceConfig", "maxTokens"), usage=CONVERSE_USAGE, stop=(("stopReason",),),
)
FAMILIES: tuple[Family, ...] = (
    Family(
        name="anthropic", stems=("anthropic.",), input_fields=("messages", "system", "tools", "tool_choice"),
        item_field="messages", max_output=("max_tokens",),
        usage=UsageFields(input=("input_tokens",), output=("output_tokens",),
                          cache_read=("cache_read_input_tokens",), cache_write=("cache_creation_input_tokens",),
                          input_excludes_cache=True),
        stop=(("stop_reason",), ("delta", "stop_reason")),
    ),
    Family(
        name="nova", stems=("amazon.nova",), input_fields=("messages", "system", "toolConfig"),
        item_field="messages", max_output=("inferenceConfig", "maxTokens"),
        usage=UsageFields(input=("inputTokens",), output=("outputTokens",),
                          cache_read=("cacheReadInputTokenCount",), cache_write=("cacheWriteInputTokenCount",),
                          input_excludes_cache=True),
        stop=(("stopReason",), ("messageStop", "stopReason")),
    ),
    Family(
        name="titan", stems=("amazon.titan-text",), input_fields=("inputText",), item_field=None,
        max_output=("textGenerationConfig", "maxTokenCount"), default_max_output=512,
        usage=UsageFields(input=("inputTextTokenCount",), output=("tokenCount",)), usage_at=(),
        results=("results",), stop=(("completionReason",),),
    ),
    Family(
        name="llama", stems=("meta.llama",), input_fields=("prompt",), item_field=None,
        max_output=("max_gen_len",), default_max_output=512,
        usage=UsageFields(input=("prompt_token_count",), output=("generation_token_count",)), usage_at=(),
    ),
)
# Any other model's InvokeModel body: all of it is input, no known output limit, usage from headers.
OTHER = Family(name="other", stems=(), input_fields=(), item_field=None, max_output=None)


def model_name(model_id: str) -> str:
    """The model id of an ARN (``...:foundation-model/ID``, ``...:inference-profile/ID``), else the id."""
    return model_id.rsplit("/", 1)[-1] if model_id.startswith("arn:") else model_id


def family_of(model_id: str) -> Family:
    """The InvokeModel format of a model id, also behind an inference-profile prefix (``us.``...)."""
    name = model_name(model_id)
    candidates = (name, name.split(".", 1)[-1])
    return next((f for c in candidates for f in FAMILIES if f.matches(c)), OTHER)


def _int(value: Any) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    return int(value) if isinstance(value, str) and value.isdigit() else 0


def json_object(raw: Any) -> dict[str, Any] | None:
    """A JSON object from a body, or None for anything else (not JSON, not an object, a key twice)."""
    try:
        parsed = json.loads(raw, object_pairs_hook=_unique_keys)
    except (TypeError, ValueError):
        return None
    return parsed if isinstance(parsed, dict) else None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are unique: of ``{"model": "a", "model": "b"}`` a provider may honour
    either, so the guard cannot say what the call costs."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("a JSON object with a duplicate key")
    return obj


def _parts(body: Any, path: Path) -> list[Any]:
    parts = get_path(body, path)
    return parts if isinstance(parts, list) else []


def _is_image(part: Mapping[str, Any]) -> bool:
    """Anthropic ``{"type": "image"}`` parts and Converse / Nova ``{"image": {...}}`` blocks."""
    return part.get("type") == "image" or isinstance(part.get("image"), Mapping)


def _is_video(part: Mapping[str, Any]) -> bool:
    return isinstance(part.get("video"), Mapping)


NOVA_VIDEO_TOKENS = 960 * 288
"""The most input tokens one video costs Amazon Nova Lite, Pro or Premier, whatever its length and
source (bytes or S3): Nova samples at most 960 frames (1 per second up to 16 minutes, then 960
spread over the video), each resized to 672 x 672 and billed 288 tokens."""
_NOVA_VIDEO_MODELS = ("amazon.nova-lite", "amazon.nova-pro", "amazon.nova-premier")


def _bounded_media(model_id: str) -> Callable[[Mapping[str, Any]], bool]:
    """Content blocks bounded by what they are, not by their bytes or their source: images (a
    per-image bound), and a video for the Nova models whose video billing is documented."""
    name = model_name(model_id)
    if any(candidate.startswith(_NOVA_VIDEO_MODELS) for candidate in (name, name.split(".", 1)[-1])):
        return lambda part: _is_image(part) or _is_video(part)
    return _is_image


def _with_path(obj: Mapping[str, Any], path: Path, value: Any) -> dict[str, Any]:
    """A copy of ``obj`` with ``path`` set (copies along the path only; the caller's stays untouched)."""
    head, rest = path[0], path[1:]
    inner = obj.get(head)
    return {**obj, head: _with_path(inner if isinstance(inner, Mapping) else {}, rest, value) if rest else value}


@dataclass(frozen=True)
class Operation:
    stream: bool
    converse: bool  # the Converse API (model-neutral) rather than InvokeModel (model-native JSON body)
    result_field: str | None  # where the response body / event stream is in the parsed response


OPERATIONS: Mapping[str, Operation] = {
    "Converse": Operation(stream=False, converse=True, result_field=None),
    "ConverseStream": Operation(stream=True, converse=True, result_field="stream"),
    "InvokeModel": Operation(stream=False, converse=False, result_field="body"),
    "InvokeModelWithResponseStream": Operation(stream=True, converse=False, result_field="body"),
}


@dataclass(frozen=True)
class Prepared:
    request: LLMRequest
    operation: Operation
    family: Family
    params: dict[str, Any]  # the API params, an InvokeModel body already read into bytes
    body: Mapping[str, Any] | None  # the fields the family describes: the params, or the parsed body

    def rewrite(self, changes: RequestChanges) -> dict[str, Any]:
        """The params with the guard's changes applied (a copy; the caller's stay untouched)."""
        params = dict(self.params)
        if changes.model is not None:
            params["modelId"] = changes.model
        limit, path = changes.max_output_tokens, self.family.max_output
        if limit is None or path is None or self.body is None:
            return params
        if self.operation.converse:
            return _with_path(params, path, limit)
        params["body"] = json.dumps(_with_path(self.body, path, limit)).encode("utf-8")
        return params


class BedrockReader:
    """Usage, stop reasons and text of one response: a whole body or stream events."""

    def __init__(self, operation: Operation, family: Family) -> None:
        self.operation = operation
        self.family = family
        self.info = ResponseInfo()
        self.complete = False

    def on_body(self, body: Any) -> None:
        family = self.family
        self.info.usage = family.read_usage(body)
        parts = _parts(body, family.results) if family.results else [body]
        self.info.finish_reasons = [r for p in parts for path in family.stop if (r := get_path(p, path))]
        self.complete = True

    def on_event(self, event: str | None, data: Any) -> bool:
        """One parsed event of botocore's EventStream; never hidden from the caller."""
        if self.operation.converse:
            self._converse_event(data)
        elif isinstance(chunk := get_path(data, ("chunk", "bytes")), (bytes, str)):
            self._invoke_chunk(loads(chunk))
        return False

    def _converse_event(self, data: Any) -> None:
        stop = get_path(data, ("messageStop", "stopReason"))
        if stop:
            self.info.finish_reasons.append(stop)
        usage = get_path(data, ("metadata", "usage"))
        if usage is not None:
            self.info.usage = CONVERSE_USAGE.read(usage)
            self.complete = True

    def _invoke_chunk(self, chunk: Any) -> None:
        family = self.family
        self.info.finish_reasons.extend(r for p in family.stop if isinstance(r := get_path(chunk, p), str))
        metrics = get_path(chunk, (INVOCATION_METRICS,))
        if metrics is not None:
            self.info.usage = METRICS_USAGE.read(metrics)
            self.complete = True


class ObservedEventStream(wrapt.ObjectProxy[Any]):
    """botocore's EventStream, reading each event as the caller iterates; settles once at the
    end, on ``close()``, on an error, or when dropped half-read. Leaving a ``for`` loop early is
    not an end: the caller may iterate again."""

    def __init__(self, stream: Any, observer: BodyObserver, progress: Callable[[], None]) -> None:
        super().__init__(stream)
        self._self_observer = observer
        self._self_progress = progress
        weakref.finalize(self, observer.end)

    def __iter__(self) -> Iterator[Any]:
        observer = self._self_observer
        try:
            for event in self.__wrapped__:
                observer.event(event)
                self._self_progress()
                yield event
        except GeneratorExit:
            raise
        except BaseException:
            observer.end()
            raise
        observer.reader.complete = True  # the stream reached its end, with or without its usage
        observer.end()

    def close(self) -> None:
        try:
            self.__wrapped__.close()
        finally:
            self._self_observer.end()


def _server(client: Any) -> tuple[str | None, int | None]:
    url = urlsplit(str(getattr(client.meta, "endpoint_url", "") or ""))
    return url.hostname, url.port


def _timeout_seconds(client: Any) -> float | None:
    """The longest botocore may spend on the call (connect + read, every attempt), for the hold's expiry."""
    config = getattr(client.meta, "config", None)
    phases = [getattr(config, name, None) for name in ("connect_timeout", "read_timeout")]
    seconds = sum(float(p) for p in phases if isinstance(p, (int, float)) and not isinstance(p, bool))
    if not seconds:
        return None
    retries = getattr(config, "retries", None) or {}
    attempts = retries.get("total_max_attempts")
    if not isinstance(attempts, int):
        retried = retries.get("max_attempts")
        attempts = retried + 1 if isinstance(retried, int) else DEFAULT_ATTEMPTS
    return seconds * max(attempts, 1)


# Every Bedrock service is classified: its LLM operations are priced, reads and the operations
# below are free, anything else (agents, knowledge-base generation, batch and async invocations,
# provisioned throughput, customization jobs, guardrail evaluation...) is an unknown endpoint.
BEDROCK_SERVICES = frozenset({"bedrock", "bedrock-runtime", "bedrock-agent", "bedrock-agent-runtime",
                              "bedrock-data-automation", "bedrock-data-automation-runtime"})
_FREE_PREFIXES = ("Get", "List", "Describe", "Delete", "BatchDelete", "Stop", "Cancel", "End", "Archive",
                  "Deregister", "Export", "TagResource", "UntagResource")
FREE_OPERATIONS = frozenset({"CountTokens", "CreateSession", "UpdateSession", "CreateInvocation", "PutInvocationStep",
                             "CreateGuardrail", "CreateGuardrailVersion", "UpdateGuardrail", "CreateProject",
                             "UpdateProject", "PutModelInvocationLoggingConfiguration", "PutResourcePolicy"})
# Paid operations the guard cannot price yet (unknown endpoints, refused in enforce mode). The control
# plane's other Create/Start/Put/Update/Register operations (jobs, deployments, provisioned throughput,
# agreements, data retention...) are refused the same way.
REFUSED_OPERATIONS = frozenset({
    "ApplyGuardrail", "InvokeGuardrailChecks", "InvokeModelWithBidirectionalStream", "StartAsyncInvoke",
    "AgenticRetrieveStream", "CheckIngestedDocumentAcl", "GenerateQuery", "InvokeAgent", "InvokeFlow",
    "InvokeInlineAgent", "OptimizePrompt", "Rerank", "Retrieve", "RetrieveAndGenerate", "RetrieveAndGenerateStream",
    "StartFlowExecution",
})
REFUSED_CONTROL_PREFIXES = ("Create", "Start", "Put", "Update", "Register")


def classify(client: Any, operation_name: str, params: Mapping[str, Any]) -> Prepared | UnknownEndpoint | None:
    """A Bedrock operation as the guard sees it: a priced LLM call, an unknown endpoint, or None
    (free, or not a Bedrock service at all)."""
    service = get_path(client, ("meta", "service_model", "service_name"))
    if service not in BEDROCK_SERVICES:
        return None
    if operation_name.startswith(_FREE_PREFIXES) or operation_name in FREE_OPERATIONS:
        return None
    prepared = prepare(client, operation_name, params) if service == SERVICE else None
    if prepared is not None:
        return prepared
    reason = "" if operation_name not in OPERATIONS else " without a readable model id or output limit"
    return UnknownEndpoint(PROVIDER, f"{service} {operation_name}{reason}", _server(client)[0])


def prepare(client: Any, operation_name: str, params: Mapping[str, Any]) -> Prepared | None:
    """Describe a Bedrock Runtime LLM call of a botocore client; None for anything else."""
    return describe(operation_name, params, _server(client), _timeout_seconds(client))


def describe(operation_name: str, params: Mapping[str, Any], server: tuple[str | None, int | None],
             timeout_seconds: float | None) -> Prepared | None:
    """Describe a Bedrock Runtime LLM call from its API params (``modelId`` and the Converse fields,
    or an InvokeModel ``body``) sent to ``server``; None for anything else."""
    operation = OPERATIONS.get(operation_name)
    model_id = params.get("modelId")
    if operation is None or not isinstance(model_id, str):
        return None
    copy = dict(params)
    raw: Any = None
    body: dict[str, Any] | None
    if operation.converse:
        family, body = CONVERSE, copy
    else:
        raw = copy.get("body", b"")
        if hasattr(raw, "read"):  # a file-like body can be read once: pass its bytes on instead
            raw = copy["body"] = raw.read()
        body = json_object(raw)
        family = family_of(model_id) if body is not None else OTHER
    media = _bounded_media(model_id)
    videos = 0
    if body is None or family is OTHER:  # a format we do not know: every byte of the body counts as input
        measure, items = measure_input(raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw),
                                       _is_image), 1
    else:
        measure = InputMeasure()
        for name in family.input_fields:
            if name in body:
                part = measure_input(body[name], media)
                measure = InputMeasure(measure.bytes + part.bytes, 0, measure.images + part.images)
                videos += measure_input(body[name], _is_video).images if media is not _is_image else 0
        listed = body.get(family.item_field) if family.item_field else None
        items = len(listed) if isinstance(listed, list) else 1
    asked = counts([get_path(body, family.max_output) if family.max_output and body is not None else None],
                   MAX_OUTPUT_TOKENS)
    if asked is None:  # a limit the guard cannot bound (a float, a string, past any model's)
        return None
    fields = [body.get(name) for name in family.input_fields] if body is not None else None
    unseen = find_unseen(fields, _unseen, media) if body is not None else None
    # Tools come with a tool-use system prompt the provider adds (documented for Claude; bounded the
    # same way for every model, as Converse renders tools into any model's prompt).
    tools = (get_path(body, ("toolConfig", "tools")) or get_path(body, ("tools",))) if body is not None else None
    host, port = server
    request = LLMRequest(
        provider=PROVIDER,
        price_provider=PRICE_PROVIDER,
        operation="chat",
        model=model_name(model_id),
        stream=operation.stream,
        input_bytes=measure.bytes,
        input_items=items,
        input_images=measure.images - videos,
        input_overhead_tokens=NOVA_VIDEO_TOKENS * videos + tool_use_overhead_tokens(tools),
        max_output_tokens=asked[0] if asked else family.default_max_output,
        server_address=host,
        server_port=port,
        timeout_seconds=timeout_seconds,
        # a Prompt management ARN as the model id: the stored prompt is input the request does not carry
        unseen_input="a stored prompt" if ":prompt/" in model_id else unseen,
        unknown_output_limit=(f"the invoke_model body of {model_name(model_id)}, a model family this adapter "
                              "does not read") if family is OTHER else None,
    )
    return Prepared(request, operation, family, copy, body)


def _unseen(part: Mapping[str, Any]) -> str | None:
    """Converse/Nova document blocks, video blocks of models without a documented video bound,
    audio blocks (no model documents a per-second bound), content by S3 reference (other than
    bounded media), Anthropic document blocks."""
    if "s3Location" in part:
        return "content by S3 reference"
    for kind in ("document", "video", "audio"):
        if isinstance(part.get(kind), Mapping) or part.get("type") == kind:
            return f"a {kind} block"
    return None


class BedrockHook:
    """Wraps ``botocore.client.BaseClient._make_api_call``."""

    def __init__(self, guard: GuardRef) -> None:
        self._guard = guard

    def instrument(self) -> None:
        wrapt.wrap_function_wrapper("botocore.client", "BaseClient._make_api_call", self._call)

    def uninstrument(self) -> None:
        from botocore.client import BaseClient

        unwrap(BaseClient, "_make_api_call")

    def _call(self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> Any:
        def classified() -> BedrockExchange | UnknownEndpoint | None:
            operation_name, params = _arguments(*args, **kwargs)
            found = classify(instance, operation_name, params)
            return BedrockExchange(operation_name, found) if isinstance(found, Prepared) else found

        return run(self._guard(), classified, wrapped, args, kwargs)


class BedrockExchange:
    """One Bedrock Runtime operation."""

    def __init__(self, operation_name: str, prepared: Prepared) -> None:
        self.request = prepared.request
        self._operation_name = operation_name
        self._prepared = prepared

    def outgoing(self, changes: RequestChanges) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (self._operation_name, self._prepared.rewrite(changes)), {}

    def observe(self, result: Any, settler: Settler) -> Any:
        prepared = self._prepared
        operation = prepared.operation
        reader = BedrockReader(operation, prepared.family)
        if operation.result_field is None:
            read_whole(reader, result)
            settler.finish(reader.info)
            return result
        body = result.get(operation.result_field)
        if operation.stream:
            observer = BodyObserver(reader, sse=False, on_progress=settler.keepalive,
                                    on_end=lambda info, complete: settler.finish(info, complete=complete))
            result[operation.result_field] = ObservedEventStream(body, observer, settler.keepalive)
            return result
        data = body.read()
        result[operation.result_field] = _streaming_body(data)  # the caller reads the same bytes
        try:
            parsed = loads(data)
        except ValueError:
            parsed = None
        if parsed is not None:
            read_whole(reader, parsed)
        info = reader.info
        usage_from_headers(info, get_path(result, ("ResponseMetadata", "HTTPHeaders")) or {})
        settler.finish(info)
        return result

    def error_status(self, exc: BaseException) -> int | None:
        status = get_path(getattr(exc, "response", None), ("ResponseMetadata", "HTTPStatusCode"))
        return status if isinstance(status, int) and not isinstance(status, bool) else None

    def never_sent(self, exc: BaseException) -> bool:
        return caused_by(exc, _CONNECT_ERRORS)


def usage_from_headers(info: ResponseInfo, headers: Mapping[str, str]) -> None:
    """An InvokeModel answer's usage from its token-count headers (lower-case names), where its body
    reported none."""
    if info.usage is None and info.problem is None and HEADER_USAGE.input[0] in headers:
        try:
            info.usage = HEADER_USAGE.read({k: _int(v) for k, v in headers.items()})
        except MalformedResponse as exc:
            info.problem = str(exc)


# The Bedrock Runtime REST paths ``/model/{modelId}/{path}`` of the operations the adapter prices.
OPERATION_PATHS: Mapping[str, str] = {"converse": "Converse", "converse-stream": "ConverseStream",
                                      "invoke": "InvokeModel",
                                      "invoke-with-response-stream": "InvokeModelWithResponseStream"}
_PRELUDE = 12  # total length, headers length, prelude CRC


def split_events(buffer: bytes) -> tuple[list[Any], bytes]:
    """The whole messages of an ``application/vnd.amazon.eventstream`` body read so far, as
    botocore's EventStream yields them (``{event type: payload}``, a ``chunk``'s ``bytes``
    decoded), and the bytes of the next, incomplete one. A damaged message or an error event is
    :class:`MalformedResponse`."""
    events: list[Any] = []
    while len(buffer) >= _PRELUDE:
        total, headers_length, prelude_crc = struct.unpack(">III", buffer[:_PRELUDE])
        if zlib.crc32(buffer[:8]) != prelude_crc or total < _PRELUDE + headers_length + 4:
            raise MalformedResponse("event stream message damaged")
        if len(buffer) < total:
            break
        message, buffer = buffer[:total], buffer[total:]
        if zlib.crc32(message[:-4]) != struct.unpack(">I", message[-4:])[0]:
            raise MalformedResponse("event stream message damaged")
        headers = _event_headers(message[_PRELUDE:_PRELUDE + headers_length])
        if headers.get(":message-type") != "event":
            raise MalformedResponse("the event stream carried an error")
        payload = loads(message[_PRELUDE + headers_length:-4] or b"{}")
        kind = headers.get(":event-type", "")
        if kind == "chunk" and isinstance(payload.get("bytes"), str):
            payload = {**payload, "bytes": base64.b64decode(payload["bytes"])}
        events.append({kind: payload})
    return events, buffer


def _event_headers(raw: bytes) -> dict[str, str]:
    """The string headers of one event-stream message (other header types are skipped)."""
    headers: dict[str, str] = {}
    at = 0
    while at < len(raw):
        name_length = raw[at]
        name = raw[at + 1:at + 1 + name_length].decode("utf-8", "replace")
        at += 1 + name_length
        kind = raw[at]
        at += 1
        if kind in (_BYTES_HEADER, _STRING_HEADER):
            (length,) = struct.unpack(">H", raw[at:at + 2])
            value = raw[at + 2:at + 2 + length]
            at += 2 + length
            if kind == _STRING_HEADER:
                headers[name] = value.decode("utf-8", "replace")
        else:
            at += _FIXED_HEADER_SIZES.get(kind, len(raw))  # an unknown type ends the reading
    return headers


_BYTES_HEADER, _STRING_HEADER = 6, 7
_FIXED_HEADER_SIZES = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}  # true, false, byte ... timestamp, uuid


# botocore errors raised before a request leaves: the connection was never made.
_CONNECT_ERRORS = frozenset({"EndpointConnectionError", "ConnectTimeoutError", "ProxyConnectionError"})


def _arguments(operation_name: str, api_params: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    return operation_name, api_params


def _streaming_body(data: bytes) -> Any:
    """The caller's response body, over the bytes already read."""
    from botocore.response import StreamingBody

    return StreamingBody(io.BytesIO(data), len(data))


INTEGRATION = Integration("botocore >= 1.34", lambda guard: BedrockHook(guard))
