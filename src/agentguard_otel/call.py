"""The contract between the core and the provider adapters: plain data, no behaviour.

An adapter turns an SDK request into an :class:`LLMRequest`, applies the guard's
:class:`RequestChanges`, and fills a :class:`ResponseInfo` from what came back; the guard and the
lifecycle see nothing else of an SDK. An adapter that cannot read what came back raises
:class:`MalformedResponse`: the lifecycle then settles at the reservation, marked degraded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from agentguard_otel.policy import Cap, Rule
from agentguard_otel.pricing import ModelPrice, TokenUsage

Action = Literal["allow", "downgrade", "block", "shadow"]


AUTO_TIER = "auto"
STANDARD_TIER = "standard"


class MalformedResponse(ValueError):
    """A response's usage or cost cannot be trusted (negative, non-numeric, inconsistent, absurd)."""


class Unchangeable(ValueError):
    """The request cannot carry the guard's changes (a signed body): the message says why, and a
    decision that needs a change is refused in enforce mode."""


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
    deployment: str | None = None  # the provider routes by this name, not by ``model`` (an Azure deployment)
    # Input the provider bills that the request does not carry (a previous response, a stored prompt,
    # a file by id, a document): what it is, for the refusal's reason; None when all input is here.
    unseen_input: str | None = None
    input_overhead_tokens: int = 0  # tokens the provider adds itself (a tool-use system prompt), or audio/image
    # tokens the adapter bounded from the media itself (an audio file's duration)
    input_characters: int = 0  # characters billed per character (text-to-speech)
    input_audio_seconds: int = 0  # most seconds of audio billed by duration (transcription)
    fixed_output_tokens: int = 0  # output the request itself fixes (images of a size and quality): no limit lowers it
    # Why the adapter's bound is a guess, not a proof (an audio file bounded by its size): strict
    # estimation refuses the call. None: the bound is proven.
    unproven_bound: str | None = None
    # Why the request's output limit cannot be read (a model family whose body the adapter does not
    # know): strict estimation refuses it rather than assume a default. None: the limit is known.
    unknown_output_limit: str | None = None
    # A processing tier the call asks for (priority, flex...): priced as such. AUTO_TIER: the provider
    # picks (a project's default may be dearer): strict estimation reserves the dearest tier there is.
    service_tier: str | None = None
    traced: bool = True  # False when the client's own tracing is switched off: the guard records no span either


@dataclass(frozen=True)
class UnknownEndpoint:
    """A request an adapter recognised as its provider's but cannot price: a paid API it does not
    list, an operation it does not know, a body it cannot read. It follows ``unknown_endpoint``."""

    provider: str
    description: str  # e.g. "POST /images/generations" or "bedrock-runtime StartAsyncInvoke"
    server_address: str | None = None


@dataclass(frozen=True)
class RequestChanges:
    """What the guard wants changed before the request leaves (applied by the adapter).

    ``ask_stream_usage``: the adapter may ask a stream for its usage where the API needs asking
    (and hide the usage-only chunk the caller did not ask for). Never set in shadow mode, where
    the request leaves exactly as the caller wrote it."""

    model: str | None = None
    max_output_tokens: int | None = None
    ask_stream_usage: bool = False


@dataclass
class ResponseInfo:
    """What came back, as far as it is known (a stream fills it in as events pass)."""

    usage: TokenUsage | None = None
    provider_cost_nano: int | None = None
    response_model: str | None = None
    response_id: str | None = None
    finish_reasons: list[str] = field(default_factory=list)
    problem: str | None = None  # why the usage cannot be trusted (then the reservation is settled)
    deferred: bool = False  # the provider accepted the work and reports its usage later (background)
    service_tier: str | None = None  # the tier the provider says it processed the call at (STANDARD_TIER: its default)


@dataclass(frozen=True)
class CapRef:
    """One cap of one rule, with the ledger counter it maps to for this caller."""

    rule: Rule
    index: int
    cap: Cap
    counter: str

    def describe(self) -> dict[str, Any]:
        return {
            "rule_id": self.rule.id,
            "index": self.index,
            "window": self.cap.window,
            "rolling": self.cap.rolling,
            "limit_nano": self.cap.limit_nano,
            "action": self.cap.action,
            "counter": self.counter,
        }


@dataclass(frozen=True)
class Decision:
    """What the guard decided for one call, and the hold it placed."""

    call_id: str
    action: Action
    reason: str
    model_requested: str
    model_effective: str
    estimated_nano: int
    price: ModelPrice
    max_output_tokens: int | None  # the output bound the estimate used
    changes: RequestChanges
    rule_id: str | None = None
    cap: CapRef | None = None
    would: Action | None = None  # in shadow: what enforcement would have done
    hold_id: str | None = None
    degraded: bool = False
    unknown_model: bool = False
    caps: tuple[CapRef, ...] = ()  # every cap that applied, to read the budget at settlement


__all__ = ["AUTO_TIER", "STANDARD_TIER", "Action", "CapRef", "Decision", "LLMRequest", "MalformedResponse",
           "RequestChanges", "ResponseInfo", "Unchangeable", "UnknownEndpoint"]
