"""Provider-neutral description of an LLM call and of what came back.

Adapters translate SDK requests into :class:`LLMRequest` and responses (objects, JSON bodies or
stream events) into :class:`ResponseInfo`; the guard sees nothing else. Endpoints are data
(:class:`Endpoint`), so adding one is a table entry, not new control flow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentguard_otel.pricing import TokenUsage

Path = tuple[str, ...]


@dataclass(frozen=True)
class LLMRequest:
    """What the guard needs to price and decide a call, with no SDK types in it."""

    provider: str  # semconv gen_ai.provider.name, e.g. "openai", "openrouter"
    price_provider: str  # provider id in the price book
    operation: str  # semconv gen_ai.operation.name: "chat", "embeddings", "text_completion"
    model: str
    stream: bool
    input_bytes: int  # UTF-8 bytes of every key and string of the input-bearing fields
    input_items: int  # messages / input items: each adds a per-item token overhead
    input_images: int
    max_output_tokens: int | None  # as requested by the caller (None: not set)
    output_multiplier: int = 1  # choices requested (``n``): each may use max_output_tokens
    produces_output: bool = True  # embeddings produce no output tokens
    server_address: str | None = None
    server_port: int | None = None
    timeout_seconds: float | None = None  # the SDK's own timeout for this call, for hold expiry
    fallback_models: tuple[str, ...] = ()  # other models that may answer (OpenRouter ``models``)
    credit_remaining_nano: int | None = None  # the key's remaining credit, when asked for and reported


@dataclass(frozen=True)
class RequestChanges:
    """What the guard wants changed before the request leaves (applied by the adapter)."""

    model: str | None = None
    max_output_tokens: int | None = None


@dataclass
class ResponseInfo:
    """What came back, as far as it is known (a stream fills it in as events pass)."""

    usage: TokenUsage | None = None
    provider_cost_nano: int | None = None
    response_model: str | None = None
    response_id: str | None = None
    finish_reasons: list[str] = field(default_factory=list)
    output_bytes: int = 0  # text seen so far: bounds the output of a stream cut short


def get_path(obj: Any, path: Path) -> Any:
    """Read ``a.b.c`` from nested dicts or SDK objects alike; ``None`` when any step is missing."""
    for part in path:
        if obj is None:
            return None
        obj = obj.get(part) if isinstance(obj, Mapping) else getattr(obj, part, None)
    return obj


def _as_int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@dataclass(frozen=True)
class UsageFields:
    """Where one API reports token usage, relative to its usage object."""

    input: Path
    output: Path
    cache_read: Path | None = None
    cache_write: Path | None = None
    cache_write_1h: Path | None = None
    reasoning: Path | None = None
    input_excludes_cache: bool = False  # Anthropic counts cache tokens outside input_tokens

    def read(self, usage: Any) -> TokenUsage | None:
        if usage is None:
            return None
        cache_read = _as_int(get_path(usage, self.cache_read)) if self.cache_read else 0
        cache_write = _as_int(get_path(usage, self.cache_write)) if self.cache_write else 0
        cache_write_1h = _as_int(get_path(usage, self.cache_write_1h)) if self.cache_write_1h else 0
        input_tokens = _as_int(get_path(usage, self.input))
        if self.input_excludes_cache:
            input_tokens += cache_read + cache_write + cache_write_1h
        return TokenUsage(
            input_tokens=input_tokens,
            output_tokens=_as_int(get_path(usage, self.output)),
            cache_read_tokens=cache_read,
            cache_write_tokens=cache_write,
            cache_write_1h_tokens=cache_write_1h,
            reasoning_tokens=_as_int(get_path(usage, self.reasoning)) if self.reasoning else 0,
        )


@dataclass(frozen=True)
class InputMeasure:
    bytes: int = 0
    items: int = 0
    images: int = 0


def measure_input(value: Any, is_image: Callable[[Mapping[str, Any]], bool]) -> InputMeasure:
    """Size the input for a token bound: UTF-8 bytes of every key and string (a byte-level BPE
    token covers at least one byte), structural punctuation, and images counted apart (their
    base64 bytes say nothing about their token cost)."""
    total = 0
    images = 0
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += (len(item) if item.isascii() else len(item.encode("utf-8"))) + 2
        elif isinstance(item, Mapping):
            if is_image(item):
                images += 1
                continue
            total += 2
            for key, sub in item.items():
                total += len(str(key).encode("utf-8")) + 4
                stack.append(sub)
        elif isinstance(item, Sequence) and not isinstance(item, (bytes, bytearray)):
            total += 2 + len(item)
            stack.extend(item)
        elif item is not None:
            total += len(str(item))
    return InputMeasure(bytes=total, images=images)
