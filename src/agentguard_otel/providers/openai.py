"""OpenAI SDK adapter (also OpenRouter and any OpenAI-compatible ``base_url``)."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

import wrapt
from opentelemetry.instrumentation.utils import unwrap

from agentguard_otel.call import MalformedResponse, ResponseInfo, UnknownEndpoint
from agentguard_otel.guard import Guard, Refusal
from agentguard_otel.money import usd_to_nano
from agentguard_otel.providers import GuardRef, Hooks, Integration
from agentguard_otel.providers.base import UsageFields, find_unseen, get_path, reported_tier
from agentguard_otel.providers.stainless import Endpoint, Prepared, StainlessAdapter, StainlessHook
from agentguard_otel.providers.stream import BodyReader

OPENROUTER_HOST = "openrouter.ai"
OPENAI_HOST = "api.openai.com"

CHAT_USAGE = UsageFields(
    input=("prompt_tokens",),
    output=("completion_tokens",),
    cache_read=("prompt_tokens_details", "cached_tokens"),
    reasoning=("completion_tokens_details", "reasoning_tokens"),
)
RESPONSES_USAGE = UsageFields(
    input=("input_tokens",),
    output=("output_tokens",),
    cache_read=("input_tokens_details", "cached_tokens"),
    reasoning=("output_tokens_details", "reasoning_tokens"),
)
EMBEDDINGS_USAGE = UsageFields(input=("prompt_tokens",), output=("completion_tokens",))

ENDPOINTS: Mapping[str, Endpoint] = {
    "/chat/completions": Endpoint(
        operation="chat",
        input_fields=("messages", "tools", "functions", "response_format", "tool_choice", "prediction"),
        item_field="messages",
        max_output_fields=("max_completion_tokens", "max_tokens"),
        multiplier_fields=("n",),
        stream_usage_option=True,
        fallback_models_field="models",
    ),
    "/responses": Endpoint(
        operation="chat",
        input_fields=("input", "instructions", "tools", "text", "tool_choice"),
        item_field="input",
        max_output_fields=("max_output_tokens",),
    ),
    "/completions": Endpoint(
        operation="text_completion",
        input_fields=("prompt", "suffix"),
        item_field="prompt",
        max_output_fields=("max_tokens",),
        default_max_output=16,  # the legacy API's own default
        multiplier_fields=("n", "best_of"),
        stream_usage_option=True,
    ),
    "/embeddings": Endpoint(
        operation="embeddings",
        input_fields=("input",),
        item_field="input",
        produces_output=False,
    ),
}


MAX_REPORTED_COST_NANO = 2**53  # $9 million for one call: beyond it, not a real bill (and no ledger holds it)


# POSTs that bill no tokens, relative to the API root (``*``: one segment, ``**``: any below).
FREE = (
    "/moderations", "/responses/input_tokens", "/responses/*/cancel",
    "/chat/completions/*",  # update a stored completion's metadata
    "/files", "/uploads", "/uploads/*/parts", "/uploads/*/complete", "/uploads/*/cancel",
    "/conversations", "/conversations/*", "/conversations/*/items",
    "/assistants", "/assistants/*", "/threads", "/threads/*", "/threads/*/messages", "/threads/*/messages/*",
    "/vector_stores", "/vector_stores/*", "/skills", "/skills/*", "/skills/*/versions",
    "/audio/voice_consents", "/audio/voice_consents/*",
    "/agents", "/agents/*", "/agents/environments", "/agents/environments/templates",
    "/agents/environments/templates/*", "/agents/automations/*/pause",
    "/batches/*/cancel", "/fine_tuning/jobs/*/cancel", "/fine_tuning/jobs/*/pause", "/evals/*/runs/*/cancel",
    "/threads/*/runs/*/cancel", "/chatkit/sessions/*/cancel", "/vector_stores/*/file_batches/*/cancel",
    "/realtime/calls/*/hangup", "/realtime/calls/*/reject", "/live/sessions/*/hangup", "/live/sessions/*/reject",
    "/organization/**", "/projects/**", "/webhook_endpoints/**", "/vaults/**",
)
# Paid POSTs the guard cannot price yet: unknown endpoints, refused in enforce mode unless
# ``unknown_endpoint: allow``. Listed so that the README can say so and a test can tell a new one.
REFUSED = (
    "/images/**", "/audio/speech", "/audio/transcriptions", "/audio/translations", "/audio/voices",
    "/batches", "/fine_tuning/jobs", "/fine_tuning/jobs/*/resume", "/fine_tuning/alpha/**",
    "/threads/runs", "/threads/*/runs", "/threads/*/runs/*", "/threads/*/runs/*/submit_tool_outputs",
    "/videos/**", "/vector_stores/*/files/**", "/vector_stores/*/file_batches", "/containers/**",
    "/evals", "/evals/*", "/evals/*/runs", "/realtime/**", "/chatkit/sessions", "/responses/compact",
    "/agents/sessions/**", "/agents/automations", "/agents/automations/*", "/agents/automations/*/invocations",
    "/agents/automations/*/resume", "/agents/environments/*/files", "/live/sessions", "/live/sessions/*/**",
    "/decisions", "/content_provenance_checks",
)


def provider_cost_nano(usage: Any) -> int | None:
    """OpenRouter reports what it billed as ``usage.cost`` (USD); that figure is the actual cost.
    A cost that is not a non-negative amount a ledger can hold is malformed."""
    cost = get_path(usage, ("cost",))
    if cost is None:
        return None
    if isinstance(cost, bool) or not isinstance(cost, (int, float, Decimal)):
        raise MalformedResponse("usage.cost is not a number")
    # Our own parser yields Decimal; the SDK's float is converted through its shortest repr,
    # which is the decimal text the provider sent.
    try:
        nano = usd_to_nano(repr(cost) if isinstance(cost, float) else cost)
    except ValueError as exc:
        raise MalformedResponse("usage.cost is not a finite amount") from exc
    if not 0 <= nano <= MAX_REPORTED_COST_NANO:
        raise MalformedResponse("usage.cost is out of range")
    return nano


def _text_bytes(value: Any) -> int:
    return len(value.encode("utf-8")) if isinstance(value, str) else 0


class _Reader:
    """Shared bookkeeping of every OpenAI response reader."""

    usage_fields: UsageFields

    def __init__(self) -> None:
        self.info = ResponseInfo()
        self.complete = False

    def _read(self, obj: Any) -> None:
        info = self.info
        info.response_model = get_path(obj, ("model",)) or info.response_model
        info.response_id = get_path(obj, ("id",)) or info.response_id
        info.service_tier = reported_tier(get_path(obj, ("service_tier",))) or info.service_tier
        usage = get_path(obj, ("usage",))
        if usage is not None:
            info.usage = self.usage_fields.read(usage)
            info.provider_cost_nano = provider_cost_nano(usage)


class ChoicesReader(_Reader):
    """Chat and legacy completions: ``choices`` with text, finish reasons, usage at the end."""

    usage_fields = CHAT_USAGE

    def __init__(self, hide_usage_chunk: bool) -> None:
        super().__init__()
        self.hide_usage_chunk = hide_usage_chunk

    def on_body(self, body: Any) -> None:
        self._read(body)
        self.info.finish_reasons = [r for c in get_path(body, ("choices",)) or []
                                    if (r := get_path(c, ("finish_reason",)))]
        self.complete = True

    def on_event(self, event: str | None, data: Any) -> bool:
        info = self.info
        choices = data.get("choices") or []
        for choice in choices:
            delta = choice.get("delta") or {}
            info.output_bytes += _text_bytes(delta.get("content")) + _text_bytes(choice.get("text"))
            for call in delta.get("tool_calls") or []:
                info.output_bytes += _text_bytes(get_path(call, ("function", "arguments")))
            reason = choice.get("finish_reason")
            if reason:
                info.finish_reasons.append(reason)
        reports_usage = data.get("usage") is not None
        if info.response_model is None or reports_usage:
            self._read(data)
        if reports_usage:
            self.complete = True
            return self.hide_usage_chunk and not choices
        return False


_PENDING_STATUSES = frozenset({"queued", "in_progress"})


class ResponsesReader(_Reader):
    """Responses API: the final ``response.completed`` (or incomplete/failed) event carries usage."""

    usage_fields = RESPONSES_USAGE
    _FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})

    def on_body(self, body: Any) -> None:
        self._read(body)
        status = get_path(body, ("status",))
        reason = get_path(body, ("incomplete_details", "reason"))
        if reason or status:
            self.info.finish_reasons = [str(reason or status)]
        # A background response is accepted now and done later: its usage comes with a later GET.
        self.info.deferred = status in _PENDING_STATUSES and self.info.usage is None
        self.complete = True

    def on_event(self, event: str | None, data: Any) -> bool:
        kind = data.get("type")
        if kind == "response.output_text.delta":
            self.info.output_bytes += _text_bytes(data.get("delta"))
        elif kind in self._FINAL_EVENTS:
            self.on_body(data.get("response") or {})
        elif kind == "response.created":
            self._read(data.get("response") or {})
        return False


class EmbeddingsReader(_Reader):
    usage_fields = EMBEDDINGS_USAGE

    def on_body(self, body: Any) -> None:
        self._read(body)
        self.complete = True

    def on_event(self, event: str | None, data: Any) -> bool:
        return False


def _openai_unseen(part: Mapping[str, Any]) -> str | None:
    if part.get("type") in ("input_file", "file") or "file_id" in part or "file_url" in part:
        return "a file by reference"
    if part.get("type") in ("file_search", "mcp", "code_interpreter", "web_search", "web_search_preview"):
        return f"the {part['type']} tool's results"
    return None


class OpenAIAdapter(StainlessAdapter):
    module = "openai"
    endpoints = ENDPOINTS
    free = FREE
    refused = REFUSED

    def provider(self, client: Any) -> tuple[str, str]:
        host = str(getattr(getattr(client, "base_url", None), "host", ""))
        if host == OPENROUTER_HOST or host.endswith("." + OPENROUTER_HOST):
            return "openrouter", "openrouter"
        return "openai", "openai"

    def is_image(self, part: Mapping[str, Any]) -> bool:
        return part.get("type") in ("image_url", "input_image", "image_file")

    def unseen_input(self, body: Mapping[str, Any]) -> str | None:
        """Earlier turns (``previous_response_id``, ``conversation``), a stored prompt, or a file by id
        or URL: billed as input, not in the body."""
        for name in ("previous_response_id", "conversation"):
            if body.get(name):
                return name
        if isinstance(body.get("prompt"), Mapping):
            return "a stored prompt"
        return find_unseen([body.get(f) for f in ("messages", "input", "tools")], _openai_unseen)

    def deployment(self, client: Any, body: Mapping[str, Any]) -> str | None:
        """Azure OpenAI routes by deployment: the client's ``azure_deployment``, a ``/deployments/X``
        base URL, or else the body's ``model`` used as the deployment name."""
        if not hasattr(client, "_azure_deployment"):
            return None
        if client._azure_deployment:
            return str(client._azure_deployment)
        parts = str(getattr(getattr(client, "base_url", None), "path", "")).strip("/").split("/")
        if "deployments" in parts[:-1]:
            return parts[parts.index("deployments") + 1]
        model = body.get("model")
        return model if isinstance(model, str) else None

    def inject_field(self, endpoint: Endpoint, client: Any) -> str:
        if endpoint.operation == "chat" and endpoint.max_output_fields[0] == "max_completion_tokens":
            host = str(getattr(getattr(client, "base_url", None), "host", ""))
            # OpenAI deprecated max_tokens for chat; compatible servers widely know only max_tokens.
            return "max_completion_tokens" if host == OPENAI_HOST else "max_tokens"
        return endpoint.max_output_fields[0]

    def result_reader(self, path: str) -> tuple[str, BodyReader] | None:
        """``GET /responses/{id}``: the result of a background response, with its usage."""
        head, _, response_id = path.rpartition("/")
        if head != "/responses" or not response_id:
            return None
        return response_id, ResponsesReader()

    def reader(self, prepared: Prepared, hide_stream_usage: bool) -> BodyReader:
        if prepared.path == "/responses":
            return ResponsesReader()
        if prepared.path == "/embeddings":
            return EmbeddingsReader()
        return ChoicesReader(hide_stream_usage)

    def credit_remaining_nano(self, client: Any) -> int | None:
        """OpenRouter's ``GET /key``: ``limit_remaining`` in USD (null for a key without a limit).
        Asked through the client itself, so its auth, transport and timeouts apply."""
        if self.provider(client)[0] != "openrouter":
            return None
        remaining = get_path(client.get("/key", cast_to=object), ("data", "limit_remaining"))
        if remaining is None or isinstance(remaining, bool):
            return None
        return usd_to_nano(repr(remaining) if isinstance(remaining, float) else str(remaining))


# Modules whose ``*ConnectionManager`` classes open WebSocket sessions (Responses ``connect()``,
# Realtime, their beta twins): LLM calls travel there as events the HTTP choke point never sees.
SESSION_MODULES = ("openai.resources.responses.responses", "openai.resources.realtime.realtime",
                   "openai.resources.beta.responses.responses", "openai.resources.beta.realtime.realtime")


class SessionHook:
    """Every WebSocket session is an unknown endpoint: refused in enforce mode when it is opened
    (``__enter__``, ``__aenter__`` and their ``enter`` aliases), recorded as degraded otherwise."""

    def __init__(self, guard: GuardRef) -> None:
        self._guard = guard
        self._wrapped: list[tuple[type, str]] = []

    def instrument(self) -> None:
        for name in SESSION_MODULES:
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue  # an SDK version without this API
            for cls in vars(module).values():
                if not (isinstance(cls, type) and cls.__name__.endswith("ConnectionManager")):
                    continue
                for method in ("__enter__", "__aenter__", "enter"):
                    if method in vars(cls):
                        wrapper = self._aenter if inspect.iscoroutinefunction(vars(cls)[method]) else self._enter
                        wrapt.wrap_function_wrapper(cls, method, wrapper)
                        self._wrapped.append((cls, method))

    def uninstrument(self) -> None:
        for cls, method in self._wrapped:
            unwrap(cls, method)
        self._wrapped = []

    def _check(self, instance: Any) -> None:
        guard = self._guard()
        if isinstance(guard, Refusal):
            guard.refuse()
        if isinstance(guard, Guard):
            guard.unguarded(UnknownEndpoint("openai", f"WebSocket session ({type(instance).__name__})"))

    def _enter(self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self._check(instance)
        return wrapped(*args, **kwargs)

    async def _aenter(self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                      kwargs: dict[str, Any]) -> Any:
        self._check(instance)
        return await wrapped(*args, **kwargs)


INTEGRATION = Integration("openai >= 1.60", lambda guard: Hooks(StainlessHook(OpenAIAdapter(), guard),
                                                                 SessionHook(guard)))
