"""Anthropic SDK adapter: the Messages API (``messages`` and ``beta.messages``), any ``base_url``.

``/v1/messages/count_tokens`` and file uploads cost nothing; message batches, the legacy
``/v1/complete`` and anything else the table does not list are unknown endpoints.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Mapping
from typing import Any

from agentguard_otel.call import ResponseInfo
from agentguard_otel.pricing import TokenUsage
from agentguard_otel.providers import Integration
from agentguard_otel.providers.base import UsageFields, find_unseen, get_path, reported_tier
from agentguard_otel.providers.stainless import Endpoint, Prepared, StainlessAdapter, StainlessHook
from agentguard_otel.providers.stream import BodyReader

MESSAGES_PATH = "/v1/messages"
FALLBACKS_FIELD = "fallbacks"  # beta: server-side fallback models, each entry may set its own max_tokens

ENDPOINTS: Mapping[str, Endpoint] = {
    MESSAGES_PATH: Endpoint(
        operation="chat",
        input_fields=("messages", "system", "tools", "tool_choice"),
        item_field="messages",
        max_output_fields=("max_tokens",),  # required by the API: a clamp lowers it, never removes it
        fallback_models_field=FALLBACKS_FIELD,
    ),
}

FREE = (
    "/v1/messages/count_tokens", "/v1/files", "/v1/messages/batches/*/cancel",
    "/v1/organizations/**", "/v1/skills", "/v1/skills/*/versions", "/v1/vaults/**", "/v1/user_profiles/**",
    "/v1/memory_stores/**", "/v1/tunnels/**", "/v1/compliance/**",
    "/v1/agents", "/v1/agents/*", "/v1/agents/*/archive", "/v1/environments", "/v1/environments/*",
    "/v1/environments/*/archive", "/v1/environments/*/work/*/stop", "/v1/deployments", "/v1/deployments/*",
    "/v1/deployments/*/archive", "/v1/deployments/*/pause", "/v1/sessions/*/archive",
    "/v1/sessions/*/threads/*/archive", "/v1/dreams/*/archive", "/v1/dreams/*/cancel",
)
# Paid POSTs the guard cannot price yet (unknown endpoints, refused in enforce mode).
REFUSED = (
    "/v1/messages/batches", "/v1/complete", "/v1/sessions", "/v1/sessions/*", "/v1/sessions/*/events",
    "/v1/sessions/*/resources/**", "/v1/deployments/*/run", "/v1/deployments/*/unpause", "/v1/dreams",
    "/v1/environments/*/work/**",
)

USAGE = UsageFields(
    input=("input_tokens",),
    output=("output_tokens",),
    cache_read=("cache_read_input_tokens",),
    cache_write=("cache_creation", "ephemeral_5m_input_tokens"),
    cache_write_1h=("cache_creation", "ephemeral_1h_input_tokens"),
    reasoning=("output_tokens_details", "thinking_tokens"),
    input_excludes_cache=True,  # Anthropic's input_tokens leaves out cache reads and writes
)
_IMAGE_PARTS = frozenset({"image", "document"})


def read_usage(usage: Any) -> TokenUsage | None:
    """Anthropic usage (object or JSON) as :class:`TokenUsage`, ``input_tokens`` including cache tokens.

    Cache writes come broken down by TTL in ``cache_creation``; writes the breakdown does not
    account for (no breakdown, as from older API versions) are 5-minute writes, the API's default TTL.
    """
    tokens = USAGE.read(usage)
    if tokens is None:
        return None
    total = get_path(usage, ("cache_creation_input_tokens",))
    unattributed = (total if isinstance(total, int) else 0) - tokens.cache_write_tokens - tokens.cache_write_1h_tokens
    if unattributed <= 0:
        return tokens
    return dataclasses.replace(tokens, input_tokens=tokens.input_tokens + unattributed,
                               cache_write_tokens=tokens.cache_write_tokens + unattributed)


class MessagesReader:
    """A Message body, or its event stream: ``message_start`` carries the input and cache usage,
    ``message_delta`` the cumulative output usage and stop reason, ``message_stop`` the end.
    Anthropic always streams usage, so nothing is requested and nothing hidden."""

    def __init__(self) -> None:
        self.info = ResponseInfo()
        self.complete = False
        self._usage: dict[str, Any] = {}  # the stream's usage so far, later events overriding earlier
        self._final_output = False  # message_delta reported the output tokens

    def on_body(self, body: Any) -> None:
        self._message(body)
        self.info.usage = read_usage(get_path(body, ("usage",)))
        self.info.service_tier = reported_tier(get_path(body, ("usage", "speed")))
        reason = get_path(body, ("stop_reason",))
        self.info.finish_reasons = [str(reason)] if reason else []
        self.complete = True

    def on_event(self, event: str | None, data: Any) -> bool:
        kind = data.get("type")
        if kind == "message_start":
            message = data.get("message") or {}
            self._message(message)
            self._update(message.get("usage") or {})
        elif kind == "message_delta":
            self._final_output = True
            self._update(data.get("usage") or {})
            reason = get_path(data, ("delta", "stop_reason"))
            if reason:
                self.info.finish_reasons.append(str(reason))
        elif kind == "message_stop":
            self.complete = True
            if not self._final_output:
                self.info.problem = "the stream ended without its final usage (message_delta)"
        return False

    def _message(self, message: Any) -> None:
        self.info.response_model = get_path(message, ("model",)) or self.info.response_model
        self.info.response_id = get_path(message, ("id",)) or self.info.response_id

    def _update(self, usage: Mapping[str, Any]) -> None:
        """Merge reported usage (``message_delta`` counts are cumulative)."""
        self._usage.update((name, value) for name, value in usage.items() if value is not None)
        self.info.service_tier = reported_tier(self._usage.get("speed"))
        if not self._usage:
            return  # nothing reported (yet): not a malformed report
        self.info.usage = read_usage(self._usage)


FAST_SPEED = "fast"
"""Anthropic's fast mode: the usage reports the ``speed`` a call ran at, which is what its price
depends on (the price data has speed variants, no Anthropic service-tier ones)."""

TOOL_USE_SYSTEM_PROMPT_TOKENS = 1024
"""Bound of the tool-use system prompt a provider adds when tools are given: Anthropic documents
at most 346 tokens (per model and ``tool_choice``); the bound keeps a margin above it."""

BUILTIN_TOOL_TOKENS = {"computer_": 735 + 499, "text_editor_": 700, "bash_": 245}
"""Input tokens Anthropic documents for each built-in client tool by type prefix: its definition
(computer 735, text editor 700, bash 245), and for computer use its own system prompt (466-499)."""


def tool_use_overhead_tokens(tools: Any) -> int:
    """Tokens a provider adds for a request's tools: the tool-use system prompt and the definitions
    of built-in tools, which the body names but does not carry (0 without tools)."""
    if not isinstance(tools, list) or not tools:
        return 0
    kinds = [str(tool.get("type", "")) for tool in tools if isinstance(tool, Mapping)]
    return TOOL_USE_SYSTEM_PROMPT_TOKENS + sum(tokens for kind in kinds for prefix, tokens in
                                               BUILTIN_TOOL_TOKENS.items() if kind.startswith(prefix))


def _anthropic_unseen(part: Mapping[str, Any]) -> str | None:
    kind = part.get("type")
    if kind in ("document", "container_upload", "search_result") or "file_id" in part:
        return f"a {kind or 'file'} block"
    if isinstance(kind, str) and kind.startswith(("web_search", "web_fetch", "code_execution")):
        return f"the {kind} server tool's results"
    return None


class AnthropicAdapter(StainlessAdapter):
    module = "anthropic"
    endpoints = ENDPOINTS
    free = FREE
    refused = REFUSED

    @functools.cached_property
    def _preparers(self) -> tuple[Any, Any]:
        """The SDK's body preparers (absent where resources transform): looked up when first needed,
        so the adapter's tables also serve requests sent without the SDK."""
        utils = importlib.import_module("anthropic._utils")
        return getattr(utils, "prepare_request_data", None), getattr(utils, "async_prepare_request_data", None)

    def provider(self, client: Any) -> tuple[str, str]:
        return "anthropic", "anthropic"

    def is_image(self, part: Mapping[str, Any]) -> bool:
        return part.get("type") in _IMAGE_PARTS

    def inject_field(self, endpoint: Endpoint, client: Any) -> str:
        return endpoint.max_output_fields[0]

    def reader(self, prepared: Prepared, hide_stream_usage: bool) -> BodyReader:
        return MessagesReader()

    def traced(self, client: Any) -> bool:
        """The client's ``open_telemetry`` option (or ``ANTHROPIC_OPEN_TELEMETRY``) can switch its
        tracing off; the guard's span for the call follows it (receipts and metrics do not)."""
        return get_path(client, ("open_telemetry", "traces", "enabled")) is not False

    def unseen_input(self, body: Mapping[str, Any]) -> str | None:
        """Documents (a PDF's pages are billed as text and images), files by id, server tools'
        results and MCP servers: billed as input, not measurable from the body."""
        if body.get("mcp_servers"):
            return "MCP servers' tool results"
        return find_unseen([body.get("messages"), body.get("tools")], _anthropic_unseen)

    def input_overhead_tokens(self, body: Mapping[str, Any]) -> int:
        return tool_use_overhead_tokens(body.get("tools"))

    def service_tier(self, body: Mapping[str, Any]) -> str | None:
        """Fast mode (``speed: fast``) is priced as its own, dearer variant, whatever the tier."""
        return FAST_SPEED if body.get("speed") == FAST_SPEED else super().service_tier(body)

    def prepare_body(self, data: Any) -> Any:
        # Recent SDKs pass the caller's arguments to ``request`` as given (omitted markers,
        # iterators, content blocks from an earlier reply) and make them JSON-ready inside it.
        prepare = self._preparers[0]
        return prepare(data, location="body") if prepare is not None else data

    async def prepare_body_async(self, data: Any) -> Any:
        prepare = self._preparers[1]
        if prepare is None:
            return data
        return await prepare(data, location="body")


INTEGRATION = Integration("anthropic >= 0.40", lambda guard: StainlessHook(AnthropicAdapter(), guard))
