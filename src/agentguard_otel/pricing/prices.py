"""Price records. Every token rate is an integer number of nano-USD per 1,000,000 tokens (characters
per 1,000,000 characters, audio per hour), so pricing a call is integer arithmetic with one rounding
(up) at the end."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from typing import Literal

from agentguard_otel.money import usd_to_nano

TOKENS_PER_MTOK = 1_000_000
SECONDS_PER_HOUR = 3_600

PriceSource = Literal["genai-prices", "override", "openrouter", "fallback"]
"""Where a price came from: bundled data, the user's table, an imported OpenRouter catalog, or the
policy's rate for unknown models."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PriceTier:
    """Rates that replace the base rates for a whole request once its input exceeds ``above`` tokens.

    This is genai-prices' "cliff" model: crossing a threshold re-prices every token of the request,
    not just the tokens past it.
    """

    above: int
    input: int
    output: int
    cache_read: int | None = None
    cache_write: int | None = None
    cache_write_1h: int | None = None
    reasoning: int | None = None
    per_request: int = 0
    input_audio: int | None = None
    input_image: int | None = None
    output_audio: int | None = None
    output_image: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelPrice:
    """The price of one model at one provider.

    ``input`` .. ``per_request`` are the base rates (requests below every tier threshold);
    ``tiers`` (ascending ``above``) replace them for larger requests. ``None`` cache or reasoning
    rates mean those tokens are billed like plain input or output tokens.

    ``input_audio`` .. ``output_image``: rates of audio and image tokens where the model bills them
    apart (``None``: like plain tokens of their direction). ``per_mchars``: nano-USD per million
    input characters (text-to-speech); ``per_audio_hour``: nano-USD per hour of input audio
    (transcription), billed by the second.

    ``max_input`` / ``max_output`` are the highest rate any input / output token of this model can
    be billed at: over every tier and every modality the bundled data prices separately (audio,
    image, video tokens), so a bound built on them holds whatever the request turns out to carry.
    """

    provider: str
    model: str
    input: int
    output: int
    max_input: int
    max_output: int
    source: PriceSource
    cache_read: int | None = None
    cache_write: int | None = None
    cache_write_1h: int | None = None
    reasoning: int | None = None
    per_request: int = 0
    input_audio: int | None = None
    input_image: int | None = None
    output_audio: int | None = None
    output_image: int | None = None
    per_mchars: int = 0
    per_audio_hour: int = 0
    tiers: tuple[PriceTier, ...] = ()
    context_window: int | None = None
    """Most tokens one request can carry (input + output), where the price data says: it bounds
    input the request does not show (a previous response, a stored prompt, a file)."""
    bound_input: int = field(init=False, repr=False, compare=False)
    """Highest rate any input token can be billed at: plain, cached or cache-write, in any tier."""
    bound_output: int = field(init=False, repr=False, compare=False)
    """Highest rate any output token can be billed at: plain or reasoning, in any tier."""
    bound_per_request: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Validate once, and derive the bound rates so bounding a call is one multiplication."""
        name = f"{self.provider}/{self.model}"
        bound_input, bound_output, bound_per_request = self.max_input, self.max_output, 0
        rate_sets: tuple[ModelPrice | PriceTier, ...] = (self, *self.tiers)
        for rates in rate_sets:
            values = (rates.input, rates.output, rates.cache_read, rates.cache_write, rates.cache_write_1h,
                      rates.reasoning, rates.per_request, rates.input_audio, rates.input_image, rates.output_audio,
                      rates.output_image, self.per_mchars, self.per_audio_hour)
            if any(value is not None and value < 0 for value in values):
                raise ValueError(f"negative rate in the price of {name}")
            if max(rates.input, rates.input_audio or 0, rates.input_image or 0) > self.max_input or \
                    max(rates.output, rates.output_audio or 0, rates.output_image or 0) > self.max_output:
                raise ValueError(f"max_input/max_output below a tier's rate in the price of {name}")
            bound_input = max(bound_input, rates.cache_read or 0, rates.cache_write or 0,
                              rates.cache_write_1h or 0)
            bound_output = max(bound_output, rates.reasoning or 0)
            bound_per_request = max(bound_per_request, rates.per_request)
        starts = [tier.above for tier in self.tiers]
        if starts != sorted(set(starts)) or any(start < 0 for start in starts):
            raise ValueError(f"tiers of {name} must have distinct ascending thresholds")
        object.__setattr__(self, "bound_input", bound_input)
        object.__setattr__(self, "bound_output", bound_output)
        object.__setattr__(self, "bound_per_request", bound_per_request)


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """What a call consumed, as the provider reported it."""

    input_tokens: int
    """ALL input tokens, including cache-read and cache-write ones."""
    output_tokens: int
    """ALL output tokens, including reasoning ones."""
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    """Cache writes at the default (5-minute) lifetime."""
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    input_audio_tokens: int = 0
    """Audio (and below, image) tokens among the input / output tokens, billed at their own rates."""
    input_image_tokens: int = 0
    output_audio_tokens: int = 0
    output_image_tokens: int = 0
    input_characters: int = 0
    """Characters billed per character (text-to-speech), apart from any tokens."""
    input_audio_seconds: int = 0
    """Seconds of audio billed by duration (transcription), apart from any tokens."""


def fallback_price(provider: str, model: str, input_nano_per_mtok: int,
                   output_nano_per_mtok: int) -> ModelPrice:
    """The price an unknown model is charged at when the policy allows unknown models."""
    return flat_price(provider, model, "fallback", input=input_nano_per_mtok, output=output_nano_per_mtok)


def flat_price(provider: str, model: str, source: PriceSource, *, input: int, output: int,
               cache_read: int | None = None, cache_write: int | None = None,
               cache_write_1h: int | None = None, reasoning: int | None = None,
               per_request: int = 0, input_audio: int | None = None, input_image: int | None = None,
               output_audio: int | None = None, output_image: int | None = None, per_mchars: int = 0,
               per_audio_hour: int = 0) -> ModelPrice:
    """A price without tiers: the max rates are the highest token rate of each direction."""
    return ModelPrice(provider=provider, model=model, input=input, output=output,
                      max_input=max(input, input_audio or 0, input_image or 0),
                      max_output=max(output, output_audio or 0, output_image or 0), source=source,
                      cache_read=cache_read, cache_write=cache_write, cache_write_1h=cache_write_1h,
                      reasoning=reasoning, per_request=per_request, input_audio=input_audio,
                      input_image=input_image, output_audio=output_audio, output_image=output_image,
                      per_mchars=per_mchars, per_audio_hour=per_audio_hour)


def free_price(provider: str, model: str, source: PriceSource) -> ModelPrice:
    """A model whose price is a known zero (e.g. OpenRouter ``:free`` variants)."""
    return flat_price(provider, model, source, input=0, output=0)


def usd_to_nano_scaled(amount: Decimal, scale: Decimal | int) -> int:
    """``amount`` USD per unit, as nano-USD per ``scale`` units, rounded up.

    Exact whenever the scaled amount has at most nine decimals (true for every rate in the bundled
    genai-prices data except a few float artifacts such as ``0.0833333333333333``, which round up
    to the next nano-USD). The wide context keeps long decimals from being rounded down first.
    """
    with localcontext() as context:
        context.prec = 100
        return usd_to_nano(amount * scale)
