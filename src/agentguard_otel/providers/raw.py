"""HTTP requests to an LLM host sent outside every SDK, guarded through the adapter of their wire format.

LiteLLM sends its Anthropic and Bedrock calls with its own ``httpx`` client, and anyone can write
``httpx.post("https://api.openai.com/v1/chat/completions", ...)``. The transport tripwire hands
such a request here: its path names the wire format — Bedrock Runtime (``/model/{id}/invoke``,
``invoke-with-response-stream``, ``converse``, ``converse-stream``), the Anthropic Messages API
(the anthropic adapter's table) or the OpenAI API (the openai adapter's table, on any host) — and
that adapter's tables and readers make it an :class:`~agentguard_otel.lifecycle.Exchange`, decided,
reserved, settled and read (streams included) exactly like the SDK's own call. Nothing here knows
an HTTP library: a request is read through the ``httpx`` / ``httpx2`` API both packages share.

A request whose body the guard cannot read (a stream of bytes, compressed, not a JSON object) is an
unknown endpoint. Changes the guard wants are made by building the request anew; a signed one
(AWS SigV4) cannot be changed, so a decision that needs a change refuses it in enforce mode.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from agentguard_otel.call import LLMRequest, RequestChanges, Unchangeable, UnknownEndpoint
from agentguard_otel.lifecycle import Arguments, Classified, Settler
from agentguard_otel.providers import bedrock
from agentguard_otel.providers.anthropic import AnthropicAdapter
from agentguard_otel.providers.base import caused_by, normalise_path
from agentguard_otel.providers.openai import OpenAIAdapter
from agentguard_otel.providers.stainless import (
    CONNECT_ERRORS,
    Endpoint,
    Prepared,
    StainlessAdapter,
    body_changes,
    describe,
    observe_http,
    route,
)
from agentguard_otel.providers.stream import BodyObserver, BodyReader, Frames

PROVIDER = "http"  # the provider of an unknown endpoint found at the transport
ADAPTERS: tuple[StainlessAdapter, ...] = (AnthropicAdapter(), OpenAIAdapter())  # tried in this order
AZURE_SUFFIXES = (".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com")


@dataclass(frozen=True)
class StainlessTarget:
    """An LLM path of an OpenAI- or Anthropic-wire API."""

    adapter: StainlessAdapter
    path: str  # the table's path
    endpoint: Endpoint


@dataclass(frozen=True)
class BedrockTarget:
    """A Bedrock Runtime operation: ``/model/{model_id}/{operation}``."""

    operation: str  # the botocore operation name, e.g. "ConverseStream"
    model_id: str
    segment: str  # the path's last segment, e.g. "converse-stream"


Target = StainlessTarget | BedrockTarget


def target(method: str, path: str) -> Target | str | None:
    """What a request to ``path`` is, from its method and path alone: an LLM call of a wire format
    the guard reads, None for a free request (reads, listed free POSTs), or else its description
    (an unknown endpoint)."""
    path = normalise_path(path)
    segments = path.strip("/").split("/")
    if method.upper() == "POST" and len(segments) >= 3 and segments[0] == "model" \
            and segments[-1] in bedrock.OPERATION_PATHS:
        return BedrockTarget(bedrock.OPERATION_PATHS[segments[-1]], "/".join(segments[1:-1]), segments[-1])
    described = ""
    for adapter in ADAPTERS:
        found = route(adapter, method, path, _root(path))
        if found is None:
            return None
        if isinstance(found, tuple):
            return StainlessTarget(adapter, *found)
        described = found
    return described


def _root(path: str) -> str:
    """The API root of a path sent without a client: up to its ``v1`` segment (``/v1``, ``/api/v1``)."""
    segments = path.strip("/").split("/")
    return "/" + "/".join(segments[:segments.index("v1") + 1]) if "v1" in segments else "/"


def unknown(method: str, host: str, path: str, why: str = "") -> UnknownEndpoint:
    return UnknownEndpoint(PROVIDER, f"{method.upper()} {host}{normalise_path(path)}{why} sent outside a guarded SDK",
                           host)


def classify(request: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
             install: Callable[[Any, BodyObserver], None]) -> Classified:
    """An ``httpx``/``httpx2`` request bound for an LLM host, as the lifecycle runs it."""
    url = request.url
    method, host = str(request.method), str(url.host)
    path = url.raw_path.decode("ascii", "replace")
    found = target(method, path)
    if found is None:
        return None
    if isinstance(found, str):
        return unknown(method, host, path)
    body = _body(request)
    wire: Wire | None = None
    if body is not None:
        wire = _stainless(found, request, body) if isinstance(found, StainlessTarget) else \
            _bedrock(found, request, body)
    if wire is None:
        return unknown(method, host, path, " with a body the guard cannot read,")
    return RawExchange(request, wire, args, kwargs, install)


def _body(request: Any) -> bytes | None:
    """The request's body, when it is bytes the guard can read (not a stream, not compressed)."""
    if request.headers.get("content-encoding"):
        return None
    try:
        content = request.content  # raises for a streaming body, which reading here would consume
    except Exception:
        return None
    return content if isinstance(content, bytes) else None


def _timeout_seconds(request: Any) -> float | None:
    """The longest the client may spend on the request (its httpx timeout phases), for the hold's expiry."""
    phases = (request.extensions.get("timeout") or {}).values()
    if not phases or not all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in phases):
        return None
    return float(sum(phases))


def signed(request: Any) -> bool:
    """Whether the request carries a signature over its body (AWS SigV4): it cannot be changed."""
    headers = request.headers
    return str(headers.get("authorization", "")).startswith("AWS4-") or "x-amz-content-sha256" in headers \
        or b"x-amz-signature=" in request.url.raw_path.lower()


class Wire(ABC):
    """One recognised request in its wire format: the guard's view of it, its rewriting and reading."""

    request: LLMRequest

    @abstractmethod
    def rewrite(self, changes: RequestChanges) -> tuple[str | None, bytes] | None:
        """(a new path or None to keep it, the new body), or None when the changes change nothing."""

    @abstractmethod
    def observer(self, headers: Mapping[str, str], settler: Settler) -> BodyObserver:
        """An observer for the response body, reporting its end to ``settler``."""


def _observer(reader: BodyReader, settler: Settler, *, sse: bool, frames: Frames | None = None) -> BodyObserver:
    return BodyObserver(reader, sse=sse, frames=frames, on_progress=settler.keepalive,
                        on_end=lambda info, complete: settler.finish(info, complete=complete))


class _Origin:
    """What an adapter reads of a client, for a request sent without one: its URL (and, on an Azure
    host, that deployments route it: the path's ``/deployments/{name}``)."""

    def __init__(self, url: Any) -> None:
        self.base_url = url
        if str(url.host).endswith(AZURE_SUFFIXES):
            self._azure_deployment = None


class StainlessWire(Wire):
    """An OpenAI- or Anthropic-wire JSON request."""

    def __init__(self, adapter: StainlessAdapter, origin: _Origin, prepared: Prepared) -> None:
        self.request = prepared.request
        self._adapter = adapter
        self._origin = origin
        self._prepared = prepared
        self._hide_usage = False

    def rewrite(self, changes: RequestChanges) -> tuple[str | None, bytes] | None:
        updates, removals, self._hide_usage = body_changes(self._adapter, self._origin, self._prepared, changes)
        if not updates and not removals:
            return None
        body = {k: v for k, v in {**self._prepared.body, **updates}.items() if k not in removals}
        return None, json.dumps(body).encode("utf-8")

    def observer(self, headers: Mapping[str, str], settler: Settler) -> BodyObserver:
        # a stream is recognised from the response, whatever the request said
        return _observer(self._adapter.reader(self._prepared, self._hide_usage), settler,
                         sse="text/event-stream" in str(headers.get("content-type", "")))


def _stainless(found: StainlessTarget, request: Any, raw: bytes) -> StainlessWire | None:
    body = bedrock.json_object(raw)
    origin = _Origin(request.url)
    prepared = describe(found.adapter, origin, (found.path, found.endpoint), body, False,
                        _timeout_seconds(request)) if body is not None else None
    return StainlessWire(found.adapter, origin, prepared) if prepared is not None else None


class BedrockWire(Wire):
    """A Bedrock Runtime request: Converse JSON or a model's InvokeModel body."""

    def __init__(self, found: BedrockTarget, prepared: bedrock.Prepared, query: str) -> None:
        self.request = prepared.request
        self._found = found
        self._prepared = prepared
        self._query = query

    def rewrite(self, changes: RequestChanges) -> tuple[str | None, bytes] | None:
        prepared = self._prepared
        # Bedrock has no stream-usage option: only a downgrade and an output limit change a request.
        params = prepared.rewrite(RequestChanges(model=changes.model, max_output_tokens=changes.max_output_tokens))
        if params == prepared.params:
            return None
        path = None
        if params["modelId"] != prepared.params["modelId"]:
            path = f"/model/{quote(params['modelId'], safe='')}/{self._found.segment}{self._query}"
        if prepared.operation.converse:
            return path, json.dumps({k: v for k, v in params.items() if k != "modelId"}).encode("utf-8")
        return path, bytes(params["body"])

    def observer(self, headers: Mapping[str, str], settler: Settler) -> BodyObserver:
        prepared = self._prepared
        reader = _HeaderUsageReader(prepared.operation, prepared.family, headers)
        if prepared.operation.stream:
            return _observer(reader, settler, sse=False, frames=bedrock.split_events)
        return _observer(reader, settler, sse=False)


class _HeaderUsageReader(bedrock.BedrockReader):
    """A Bedrock body read as the adapter reads it, with the usage headers where the body has none."""

    def __init__(self, operation: bedrock.Operation, family: bedrock.Family, headers: Mapping[str, str]) -> None:
        super().__init__(operation, family)
        self._headers = {k.lower(): v for k, v in headers.items()}

    def on_body(self, body: Any) -> None:
        super().on_body(body)
        bedrock.usage_from_headers(self.info, self._headers)


def _bedrock(found: BedrockTarget, request: Any, raw: bytes) -> BedrockWire | None:
    operation = bedrock.OPERATIONS[found.operation]
    if operation.converse:
        body = bedrock.json_object(raw)
        if body is None:
            return None
        params: dict[str, Any] = {**body, "modelId": found.model_id}
    else:
        params = {"modelId": found.model_id, "body": raw}
    url = request.url
    prepared = bedrock.describe(found.operation, params, (str(url.host), url.port), _timeout_seconds(request))
    if prepared is None:
        return None
    query = url.raw_path.decode("ascii", "replace").partition("?")
    return BedrockWire(found, prepared, query[1] + query[2])


class ProviderError(Exception):
    """The provider answered an error status (the HTTP client returns it rather than raising)."""


class RawExchange:
    """One ``httpx``/``httpx2`` request through ``Client.send`` / ``AsyncClient.send``."""

    def __init__(self, request: Any, wire: Wire, args: tuple[Any, ...], kwargs: dict[str, Any],
                 install: Callable[[Any, BodyObserver], None]) -> None:
        self.request = wire.request
        self._http = request
        self._wire = wire
        self._args = args
        self._kwargs = kwargs
        self._install = install

    def outgoing(self, changes: RequestChanges) -> Arguments:
        rewritten = self._wire.rewrite(changes)
        if rewritten is None:
            return self._args, self._kwargs
        if signed(self._http):
            raise Unchangeable("the request is signed (AWS SigV4), so its body cannot carry the guard's changes")
        request = _rebuilt(self._http, *rewritten)
        if self._args:
            return (request, *self._args[1:]), self._kwargs
        return self._args, {**self._kwargs, "request": request}

    def observe(self, result: Any, settler: Settler) -> Any:
        status = result.status_code
        if status >= 400:  # the provider refused the call: the hold is released
            settler.fail(ProviderError(status), status)
            return result
        observe_http(self._wire.observer(result.headers, settler), result, self._install)
        return result

    def error_status(self, exc: BaseException) -> int | None:
        return None  # the HTTP client returns error statuses; it raises only transport errors

    def never_sent(self, exc: BaseException) -> bool:
        return caused_by(exc, CONNECT_ERRORS)


def _rebuilt(request: Any, path: str | None, body: bytes) -> Any:
    """A copy of the request with a new body (and path): headers, timeouts and extensions kept."""
    url = request.url if path is None else request.url.copy_with(raw_path=path.encode("ascii"))
    headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() != "content-length"]
    return type(request)(request.method, url, headers=headers, content=body, extensions=request.extensions)


__all__ = ["BedrockTarget", "RawExchange", "StainlessTarget", "classify", "signed", "target", "unknown"]
