"""The choke point of Stainless-generated SDKs (``openai``, ``anthropic``).

Every request those SDKs make, whatever the calling style (``create``, ``parse``, ``.stream()``,
``with_raw_response``, ``with_streaming_response``, clients built before ``instrument()``), passes
through ``SyncAPIClient.request`` / ``AsyncAPIClient.request`` with a ``FinalRequestOptions``
(method, path, JSON body) and a ``stream`` flag. One wrapper there guards them all; the adapter
says, as data, which paths are LLM calls and where their fields are.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import wrapt
from opentelemetry.instrumentation.utils import unwrap

from agentguard_otel.call import LLMRequest, RequestChanges, UnknownEndpoint
from agentguard_otel.guard import Guard
from agentguard_otel.lifecycle import Classified, FollowUp, Settler, run, run_async
from agentguard_otel.providers import GuardRef
from agentguard_otel.providers.base import (
    MAX_CHOICES,
    MAX_OUTPUT_TOKENS,
    InputMeasure,
    caused_by,
    counts,
    ends_with,
    get_path,
    matches,
    measure_input,
    normalise_path,
    requested_tier,
)
from agentguard_otel.providers.media import MediaBound
from agentguard_otel.providers.stream import (
    BodyObserver,
    BodyReader,
    loads,
    observe_async,
    observe_sync,
    read_whole,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Endpoint:
    """One guarded API path and where its request fields live."""

    operation: str  # semconv gen_ai.operation.name
    input_fields: tuple[str, ...]  # body fields whose content is sent to the model
    item_field: str | None  # the list whose entries each carry a per-message overhead
    max_output_fields: tuple[str, ...] = ()  # caller-set output limits, any of which may be present
    default_max_output: int | None = None  # what the API does when no limit is set
    multiplier_fields: tuple[str, ...] = ()  # numbers of choices generated (``n``, ``best_of``): the largest counts
    produces_output: bool = True
    stream_usage_option: bool = False  # usage in a stream only when ``stream_options.include_usage``
    # Other models that may answer instead: entries are model names (OpenRouter ``models``) or objects
    # with a ``model`` and optionally their own output limit (Anthropic ``fallbacks``).
    fallback_models_field: str | None = None
    # The bound of the media the request carries or asks for (files, characters, images), from its
    # body and multipart files; None from it: the request cannot be bounded (an unknown request).
    media: Callable[[Mapping[str, Any], Any], MediaBound | None] | None = None


@dataclass(frozen=True)
class Prepared:
    """A recognised LLM call: the neutral request plus what is needed to rewrite and read it."""

    request: LLMRequest
    endpoint: Endpoint
    path: str
    body: Mapping[str, Any]


class StainlessAdapter(ABC):
    """Provider knowledge for one Stainless SDK; knows nothing of ledgers or receipts."""

    module: str  # top-level package, e.g. "openai"
    endpoints: Mapping[str, Endpoint]  # LLM operations by path (POST)
    free: tuple[str, ...]  # POST paths that cost nothing (``*``: one segment); GET, HEAD, DELETE are free
    refused: tuple[str, ...]  # paid POST paths it cannot price: documentation; at run time all unlisted are unknown

    @abstractmethod
    def provider(self, client: Any) -> tuple[str, str]:
        """(semconv provider name, price-book provider id) for a client."""

    @abstractmethod
    def is_image(self, part: Mapping[str, Any]) -> bool:
        """Whether an input part is an image (bounded per image, not by its bytes)."""

    @abstractmethod
    def inject_field(self, endpoint: Endpoint, client: Any) -> str:
        """The output-limit field to write when the caller set none."""

    @abstractmethod
    def reader(self, prepared: Prepared, hide_stream_usage: bool) -> BodyReader:
        """A fresh reader for this call's response body."""

    def result_reader(self, path: str) -> tuple[str, BodyReader] | None:
        """For a GET that fetches a deferred result: (its response id, a reader for it). Providers
        without deferred results keep this default."""
        return None

    def prepare_body(self, data: Any) -> Any:
        """The request body as the SDK will send it, for SDKs that finish preparing it (dropping
        omitted markers, draining iterators, dumping models) only inside ``request``: measured raw,
        the input would be undercounted, and a one-shot iterator read here would be lost."""
        return data

    async def prepare_body_async(self, data: Any) -> Any:
        """:meth:`prepare_body` for async clients: files are read without blocking the event loop."""
        return data

    def unseen_input(self, body: Mapping[str, Any]) -> str | None:
        """What the provider bills as input that the body does not carry (None: all of it is here)."""
        return None

    def part_tokens(self, part: Mapping[str, Any]) -> int | None:
        """The input tokens of a part the adapter bounds itself (audio by its duration), or None:
        measured by its bytes like the rest."""
        return None

    def service_tier(self, body: Mapping[str, Any]) -> str | None:
        """The price variant the call asks for: its ``service_tier`` (None: the standard one)."""
        return requested_tier(body.get("service_tier"))

    def input_overhead_tokens(self, body: Mapping[str, Any]) -> int:
        """Input tokens the provider adds to the request itself (a documented tool-use system prompt)."""
        return 0

    def traced(self, client: Any) -> bool:
        """Whether the client's own tracing is on (SDKs with a tracing switch say so per client)."""
        return True

    def deployment(self, client: Any, body: Mapping[str, Any]) -> str | None:
        """The name the provider routes this call by instead of its ``model`` (an Azure deployment);
        None where the body's model is what answers."""
        return None

    def credit_remaining_nano(self, client: Any) -> int | None:
        """The remaining credit of the client's key, where the provider reports it (None: unknown or
        unlimited). Providers without such an endpoint keep this default."""
        return None

    def response_body(self, result: Any) -> Any | None:
        """The HTTP response behind an SDK result (stream or raw wrapper), or None for a parsed object."""
        streams, raw = self._result_types
        if isinstance(result, streams):
            return getattr(result, "response", None)
        if isinstance(result, raw):
            return getattr(result, "http_response", None)
        return None

    @functools.cached_property
    def _result_types(self) -> tuple[tuple[type, ...], tuple[type, ...]]:
        """SDK result types that still hold an HTTP body: streams and raw-response wrappers
        (``LegacyAPIResponse`` only where the SDK version still has it)."""
        streaming = importlib.import_module(f"{self.module}._streaming")
        raw: tuple[type, ...] = (importlib.import_module(f"{self.module}._response").BaseAPIResponse,)
        with contextlib.suppress(ImportError):
            raw += (importlib.import_module(f"{self.module}._legacy_response").LegacyAPIResponse,)
        return (streaming.Stream, streaming.AsyncStream), raw


def _timeout_seconds(client: Any, options: Any) -> float | None:
    """The longest the SDK may spend on this call, every attempt included, for the hold's expiry:
    the read timeout (the phase a long call spends its time in) or the total, × (retries + 1).
    None when a phase that matters has no limit (the guard then holds for its long default, and a
    stream renews its hold while chunks flow)."""
    timeout = getattr(options, "timeout", None)
    if not _number(timeout) and type(timeout).__name__ == "NotGiven":
        timeout = getattr(client, "timeout", None)
    if timeout is None:
        return None
    phases = [timeout] * len(_PHASES) if _number(timeout) else [getattr(timeout, name, None) for name in _PHASES]
    seconds = 0.0
    for phase in phases:  # a call can spend each phase's limit in turn
        if not isinstance(phase, (int, float)) or isinstance(phase, bool):
            return None  # e.g. Timeout(None, connect=1.0): a call may take as long as it likes
        seconds += float(phase)
    retries = getattr(options, "max_retries", None)
    if not isinstance(retries, int):
        retries = getattr(client, "max_retries", 0)
    return seconds * (1 + (retries if isinstance(retries, int) else 0))


_PHASES = ("connect", "read", "write", "pool")  # httpx's timeouts; a single number sets all four


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fallback_entries(body: Mapping[str, Any], endpoint: Endpoint) -> list[Any]:
    listed = body.get(endpoint.fallback_models_field) if endpoint.fallback_models_field else None
    return listed if isinstance(listed, list) else []


def _entry_model(entry: Any) -> Any:
    return entry if isinstance(entry, str) else get_path(entry, ("model",))


def _lower_limits(entry: Any, fields: tuple[str, ...], limit: int) -> Any:
    """A fallback entry with its own output limit lowered to the clamp (never raised or added)."""
    if not isinstance(entry, Mapping):
        return entry
    return {**entry, **{f: limit for f in fields if isinstance(entry.get(f), int) and entry[f] > limit}}


@functools.lru_cache(maxsize=4096)  # pure, and asked once per request of the few paths an app uses
def route(adapter: StainlessAdapter, method: str, path: str, root: str) -> tuple[str, Endpoint] | str | None:
    """Where a request to a normalised ``path`` goes, for an API whose root is ``root``: (table
    path, endpoint) for an LLM call, None for a free request, and otherwise its description: an
    endpoint no table lists is unknown, never free."""
    method = method.upper()
    if method in _FREE_METHODS:
        return None
    if method == "POST":
        # An LLM path is recognised under any prefix; a free one only right under the API root.
        listed = [p for p in adapter.endpoints if ends_with(path, p)]
        if listed:
            table_path = max(listed, key=len)  # /chat/completions, not /completions
            return table_path, adapter.endpoints[table_path]
        relative = path[len(root):] if root != "/" and path.startswith(root + "/") else path
        if any(matches(relative, free) for free in adapter.free):
            return None
    return f"{method} {path}"


def describe(adapter: StainlessAdapter, client: Any, target: tuple[str, Endpoint], body: dict[str, Any],
             stream: bool, timeout_seconds: float | None, files: Any = None) -> Prepared | None:
    """The LLM request a JSON body (and a multipart request's ``files``) makes at an endpoint, or
    None when it names no model or its media cannot be bounded; ``client`` is what the adapter reads
    of the sender (its ``base_url``): an SDK client, or a raw request's origin."""
    path, endpoint = target
    model = body.get("model")
    media = endpoint.media(body, files) if endpoint.media else MediaBound()
    if not isinstance(model, str) or media is None:
        return None
    measure = InputMeasure()
    for name in endpoint.input_fields:
        if name in body:
            part = measure_input(body[name], adapter.is_image, adapter.part_tokens)
            measure = InputMeasure(measure.bytes + part.bytes, 0, measure.images + part.images,
                                   measure.tokens + part.tokens)
    items = body.get(endpoint.item_field) if endpoint.item_field else None
    entries = _fallback_entries(body, endpoint)
    asked = counts([body.get(f) for f in endpoint.max_output_fields], MAX_OUTPUT_TOKENS)
    choices = counts([body.get(f) for f in endpoint.multiplier_fields], MAX_CHOICES)
    entry_limits = counts([get_path(e, (f,)) for e in entries for f in endpoint.max_output_fields],
                           MAX_OUTPUT_TOKENS)
    if asked is None or choices is None or entry_limits is None:
        return None
    # Where several limit fields are set, the provider may honour any: the bound takes the largest.
    max_output = max(asked) if asked else endpoint.default_max_output
    # every choice a call may generate is billed (``n``; legacy ``best_of`` generates that many)
    multiplier = max((v for v in choices if v > 0), default=1)
    fallbacks = tuple(m for e in entries if isinstance(m := _entry_model(e), str) and m != model)
    if max_output is not None and entry_limits:
        max_output = max(max_output, *entry_limits)  # a fallback may answer with its own, larger limit
    provider, price_provider = adapter.provider(client)
    url = getattr(client, "base_url", None)
    request = LLMRequest(
        provider=provider,
        price_provider=price_provider,
        operation=endpoint.operation,
        model=model,
        stream=stream or body.get("stream") is True,
        input_bytes=measure.bytes,
        input_items=len(items) if isinstance(items, list) else 1,
        input_images=measure.images + media.images,
        max_output_tokens=max_output,
        output_multiplier=multiplier,
        produces_output=endpoint.produces_output,
        server_address=getattr(url, "host", None),
        server_port=getattr(url, "port", None),
        timeout_seconds=timeout_seconds,
        fallback_models=fallbacks,
        deployment=adapter.deployment(client, body),
        unseen_input=adapter.unseen_input(body),
        traced=adapter.traced(client),
        service_tier=adapter.service_tier(body),
        input_overhead_tokens=adapter.input_overhead_tokens(body) + media.input_tokens + measure.tokens,
        input_characters=media.characters,
        input_audio_seconds=media.audio_seconds,
        fixed_output_tokens=media.output_tokens,
        unproven_bound=media.unproven,
    )
    return Prepared(request, endpoint, path, body)


def body_changes(adapter: StainlessAdapter, client: Any, prepared: Prepared,
                 changes: RequestChanges) -> tuple[dict[str, Any], set[str], bool]:
    """The body fields the guard's changes set and remove, and whether a usage-only stream chunk
    is requested on the caller's behalf (to hide from it)."""
    endpoint = prepared.endpoint
    updates: dict[str, Any] = {}
    removals: set[str] = set()
    fallback_field = endpoint.fallback_models_field
    entries = _fallback_entries(prepared.body, endpoint)
    limit = changes.max_output_tokens
    if changes.model is not None:
        updates["model"] = changes.model
        if fallback_field in prepared.body:
            removals.add(str(fallback_field))  # a downgrade leaves the target as the only model
    elif limit is not None and fallback_field and any(isinstance(e, Mapping) for e in entries):
        updates[fallback_field] = [_lower_limits(e, endpoint.max_output_fields, limit) for e in entries]
    if limit is not None:
        present = [f for f in endpoint.max_output_fields if f in prepared.body]
        for name in present or [adapter.inject_field(endpoint, client)]:
            updates[name] = limit
    hide_usage = False
    if changes.ask_stream_usage and prepared.request.stream and endpoint.stream_usage_option:
        stream_options = prepared.body.get("stream_options")
        if not (isinstance(stream_options, Mapping) and stream_options.get("include_usage")):
            updates["stream_options"] = {**(stream_options or {}), "include_usage": True}
            hide_usage = True
    return updates, removals, hide_usage


class StainlessHook:
    """Wraps ``request`` on the SDK's sync and async API clients."""

    def __init__(self, adapter: StainlessAdapter, guard: GuardRef) -> None:
        self.adapter = adapter
        self._guard = guard
        self._base = importlib.import_module(f"{adapter.module}._base_client")
        self._credit: dict[tuple[str, str], tuple[float, int | None]] = {}  # (base_url, key) -> (asked at, credit)
        self._credit_lock = threading.Lock()

    def instrument(self) -> None:
        wrapt.wrap_function_wrapper(self._base, "SyncAPIClient.request", self._sync)
        wrapt.wrap_function_wrapper(self._base, "AsyncAPIClient.request", self._async)

    def uninstrument(self) -> None:
        unwrap(self._base.SyncAPIClient, "request")
        unwrap(self._base.AsyncAPIClient, "request")

    # -- request side -----------------------------------------------------------------------

    def _route(self, client: Any, options: Any) -> tuple[str, Endpoint] | str | None:
        """Where a request goes, read from the URL the SDK will send (relative or absolute, any
        spelling): (table path, endpoint) for an LLM call, None for a free request, and otherwise
        its description: an endpoint no table lists is unknown, never free."""
        return route(self.adapter, str(getattr(options, "method", "")),
                     normalise_path(_sent_path(client, str(getattr(options, "url", "")))),
                     normalise_path(str(getattr(getattr(client, "base_url", None), "path", ""))))

    def _head(self, client: Any, options: Any, install: Callable[[Any, BodyObserver], None]
              ) -> Classified | tuple[str, Endpoint]:
        """What a request is, as far as its method and path tell: an LLM route (its body still to
        be prepared), a follow-up or free request, or an unknown endpoint."""
        route = self._route(client, options)
        if route is None:
            return self._follow_up(options, install)
        if isinstance(route, str):
            return self._unknown(client, route)
        return route

    def _unknown(self, client: Any, description: str) -> UnknownEndpoint:
        return UnknownEndpoint(self.adapter.provider(client)[0], description,
                               getattr(getattr(client, "base_url", None), "host", None))

    def _prepare(self, client: Any, options: Any, stream: bool, route: tuple[str, Endpoint]) -> Prepared | None:
        """The LLM request, or None when its body cannot be read (then it is an unknown request)."""
        body = _body(options)
        if body is None:
            return None
        return describe(self.adapter, client, route, body, stream, _timeout_seconds(client, options),
                        getattr(options, "files", None))

    def _rewrite(self, client: Any, options: Any, prepared: Prepared, changes: RequestChanges) -> tuple[Any, bool]:
        """A copy of the options with the guard's changes applied (the caller's stay untouched),
        and whether a usage-only stream chunk was requested on the caller's behalf."""
        updates, removals, hide_usage = body_changes(self.adapter, client, prepared, changes)
        if not updates and not removals:
            return options, False
        extra = dict(options.extra_json or {})
        json_data = dict(options.json_data or {})
        raw = options.json_data is None  # the body came as raw ``content`` bytes: rewrite those
        for name, value in updates.items():
            (extra if name in extra else json_data)[name] = value
        for name in removals:
            extra.pop(name, None)
            json_data.pop(name, None)
        copy = options.model_copy()
        if raw:
            merged = {**prepared.body, **json_data}
            for name in removals:
                merged.pop(name, None)
            copy.content = json.dumps(merged).encode("utf-8")
            copy.extra_json = None
            return copy, hide_usage
        copy.json_data = json_data
        copy.extra_json = extra if options.extra_json is not None or extra else None
        return copy, hide_usage

    # -- the wrappers -----------------------------------------------------------------------

    def _sync(self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> Any:
        def classify() -> Classified:
            options = _options(args, kwargs)
            found = self._head(instance, options, observe_sync)
            if not isinstance(found, tuple):
                return found
            for name in _BODY_FIELDS:
                if getattr(options, name, None) is not None:
                    setattr(options, name, self.adapter.prepare_body(getattr(options, name)))
            return self._exchange(instance, options, found, args, kwargs, observe_sync)

        return run(self._guard(), classify, wrapped, args, kwargs)

    async def _async(self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> Any:
        async def classify() -> Classified:
            options = _options(args, kwargs)
            found = self._head(instance, options, observe_async)
            if not isinstance(found, tuple):
                return found
            for name in _BODY_FIELDS:  # files are read without blocking the event loop
                if getattr(options, name, None) is not None:
                    setattr(options, name, await self.adapter.prepare_body_async(getattr(options, name)))
            return self._exchange(instance, options, found, args, kwargs, observe_async)

        return await run_async(self._guard(), classify, wrapped, args, kwargs)

    def _follow_up(self, options: Any, install: Callable[[Any, BodyObserver], None]) -> StainlessFollowUp | None:
        """A GET of a result the guard settled before it was known (a background response)."""
        if str(getattr(options, "method", "")).lower() != "get":
            return None
        found = self.adapter.result_reader(normalise_path(str(getattr(options, "url", ""))))
        guard = self._guard()
        if found is None or not isinstance(guard, Guard) or not guard.awaits(found[0]):
            return None
        return StainlessFollowUp(self.adapter, found[0], found[1], install)

    def _exchange(self, client: Any, options: Any, route: tuple[str, Endpoint], args: tuple[Any, ...],
                  kwargs: dict[str, Any], install: Callable[[Any, BodyObserver], None]
                  ) -> StainlessExchange | UnknownEndpoint:
        prepared = self._prepare(client, options, bool(kwargs.get("stream", False)), route)
        if prepared is None:
            return self._unknown(client, f"POST {route[0]} with a body the guard cannot read")
        guard = self._guard()
        check = guard.policy.credit_check if isinstance(guard, Guard) else None
        if check is not None:
            prepared = replace(prepared, request=replace(prepared.request, credit_remaining_nano=self._credit_remaining(
                client, check.interval_seconds)))
        return StainlessExchange(self, client, options, prepared, args, kwargs, install)

    def _credit_remaining(self, client: Any, interval: float) -> int | None:
        """The key's remaining credit, asked of the provider at most once per ``interval`` per key."""
        cache_key = (str(getattr(client, "base_url", "")), str(getattr(client, "api_key", "")))
        now = time.monotonic()
        with self._credit_lock:
            cached = self._credit.get(cache_key)
            if cached is not None and now - cached[0] < interval:
                return cached[1]
            # concurrent calls meanwhile use the previous answer rather than asking again
            self._credit[cache_key] = (now, cached[1] if cached else None)
        try:
            credit = self.adapter.credit_remaining_nano(client)
        except Exception as exc:  # the pre-flight must never break a call it cannot check
            logger.warning("agentguard: could not read the provider key's remaining credit: %s", type(exc).__name__)
            credit = cached[1] if cached else None
        with self._credit_lock:
            self._credit[cache_key] = (now, credit)
        return credit


def _options(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[1] if len(args) > 1 else kwargs.get("options")


_BODY_FIELDS = ("json_data", "extra_json")
_FREE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})  # reads and deletions bill no tokens


def _sent_path(client: Any, url: str) -> str:
    """The path of the URL the SDK will send: a relative ``url`` joined to the client's base URL
    as the SDK joins it (``_prepare_url``), an absolute one as it is.

    The join is the class's own pure function of the base URL and ``url``, so its answer is kept per
    (function, base URL, url): parsing two URLs per request cost more than pricing it. A client whose
    instance carries its own ``_prepare_url`` is asked every time."""
    prepare = getattr(type(client), "_prepare_url", None)
    if prepare is None or "_prepare_url" in getattr(client, "__dict__", ()):
        return _joined_path(getattr(client, "_prepare_url", None), url)
    return _class_joined_path(prepare, client, str(getattr(client, "base_url", "")), url)


def _class_joined_path(prepare: Callable[[Any, str], Any], client: Any, base_url: str, url: str) -> str:
    key = (prepare, base_url, url)
    found = _JOINED.get(key)
    if found is None:
        found = _joined_path(functools.partial(prepare, client), url)
        if len(_JOINED) >= _JOINED_MAX:
            _JOINED.clear()
        _JOINED[key] = found
    return found


_JOINED: dict[tuple[Any, str, str], str] = {}  # the few (join, base URL, url) an application sends to
_JOINED_MAX = 4096


def _joined_path(prepare: Callable[[str], Any] | None, url: str) -> str:
    try:
        full = prepare(url) if prepare is not None else None
    except Exception:
        full = None
    raw = getattr(full, "raw_path", None)
    if isinstance(raw, bytes):
        return raw.decode("ascii", "replace")
    return urlsplit(url).path


def _body(options: Any) -> dict[str, Any] | None:
    """The JSON body the SDK will send, from ``json_data`` (and ``extra_json``) or raw ``content``
    bytes; None for anything else (a stream of bytes, files, not a JSON object)."""
    data = getattr(options, "json_data", None)
    if data is None:
        content = getattr(options, "content", None)
        if isinstance(content, (bytes, bytearray)):
            try:
                data = json.loads(content)
            except ValueError:
                return None
        elif content is not None or getattr(options, "files", None):
            return None
    if data is not None and not isinstance(data, Mapping):
        return None
    return {**(data or {}), **(getattr(options, "extra_json", None) or {})}


class StainlessExchange:
    """One request through a Stainless client's ``request``."""

    def __init__(self, hook: StainlessHook, client: Any, options: Any, prepared: Prepared,
                 args: tuple[Any, ...], kwargs: dict[str, Any], install: Callable[[Any, BodyObserver], None]) -> None:
        self.request = prepared.request
        self._hook = hook
        self._client = client
        self._options = options
        self._prepared = prepared
        self._args = args
        self._kwargs = kwargs
        self._install = install
        self._hide_usage = False

    def outgoing(self, changes: RequestChanges) -> tuple[tuple[Any, ...], dict[str, Any]]:
        options, self._hide_usage = self._hook._rewrite(self._client, self._options, self._prepared, changes)
        if options is self._options:
            return self._args, self._kwargs
        if len(self._args) > 1:
            return (self._args[0], options, *self._args[2:]), self._kwargs
        return self._args, {**self._kwargs, "options": options}

    def observe(self, result: Any, settler: Settler) -> Any:
        reader = self._hook.adapter.reader(self._prepared, self._hide_usage)
        return observe_result(self._hook.adapter, reader, result, settler, self._install)

    def error_status(self, exc: BaseException) -> int | None:
        status = getattr(exc, "status_code", None)
        if not isinstance(status, int):
            status = getattr(getattr(exc, "response", None), "status_code", None)
        return status if isinstance(status, int) and not isinstance(status, bool) else None

    def never_sent(self, exc: BaseException) -> bool:
        return caused_by(exc, CONNECT_ERRORS)


class StainlessFollowUp(FollowUp):
    """The GET that fetches a deferred result through a Stainless client."""

    def __init__(self, adapter: StainlessAdapter, response_id: str, reader: BodyReader,
                 install: Callable[[Any, BodyObserver], None]) -> None:
        self.response_id = response_id
        self._adapter = adapter
        self._reader = reader
        self._install = install

    def observe(self, result: Any, settler: Settler) -> Any:
        return observe_result(self._adapter, self._reader, result, settler, self._install)


def observe_result(adapter: StainlessAdapter, reader: BodyReader, result: Any, settler: Settler,
                   install: Callable[[Any, BodyObserver], None]) -> Any:
    """Read the result now (a parsed object, a body already read) or as its body is consumed."""
    http = adapter.response_body(result)
    if http is None:
        read_whole(reader, result)
        settler.finish(reader.info)
        return result
    # A stream is recognised from the response, whatever the request said (``stream`` sent
    # through ``extra_body``, a server that streams unasked).
    sse = "text/event-stream" in str(http.headers.get("content-type", ""))
    observe_http(BodyObserver(reader, sse=sse, on_progress=settler.keepalive,
                              on_end=lambda info, complete: settler.finish(info, complete=complete)), http, install)
    return result


def observe_http(observer: BodyObserver, http: Any, install: Callable[[Any, BodyObserver], None]) -> None:
    """Read an HTTP response's body through ``observer``: now when it was read already
    (``with_raw_response`` without streaming, an httpx ``send`` without ``stream=True``), else as
    the caller consumes it."""
    if http.is_stream_consumed:  # with_raw_response without streaming: the body is already here
        observer.feed(http.content)
        observer.flush()
        observer.end()
        return
    install(http, observer)


# httpx errors raised before a request leaves: the connection was never made.
CONNECT_ERRORS = frozenset({"ConnectError", "ConnectTimeout", "PoolTimeout", "UnsupportedProtocol"})


__all__ = [
    "Endpoint", "Prepared", "StainlessAdapter", "StainlessExchange", "StainlessFollowUp", "StainlessHook",
    "body_changes", "describe", "loads", "observe_http", "route",
]
