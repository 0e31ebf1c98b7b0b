"""Cost arithmetic: the actual cost of a finished call, a proven upper bound before it is sent, and
the input-token bound that bound starts from. Integer nano-USD throughout."""

from __future__ import annotations

from typing import Literal

from agentguard_otel.money import ceil_div
from agentguard_otel.pricing.prices import SECONDS_PER_HOUR, TOKENS_PER_MTOK, ModelPrice, PriceTier, TokenUsage

PER_ITEM_OVERHEAD = 8
"""Tokens a chat format adds around each message or input item (role marker, start/end and
separator tokens). OpenAI's chat format spends 3-4 per message (one more with a ``name``); 8 keeps
a margin for other providers' templates."""

FIXED_OVERHEAD = 16
"""Tokens added once per request: reply priming (e.g. ``<|start|>assistant<|message|>``) and the
system scaffolding a provider wraps around the conversation."""

IMAGE_TOKEN_BOUND = 48_169
"""Ceiling on the input tokens one image can be billed as, over the providers this package guards.

The largest documented figure is OpenAI's gpt-4o-mini at ``detail: high``: an image is fitted into
2048x2048, its short side scaled to 768 px, so it covers at most 2 x 4 tiles of 512 px, billed at
2,833 base + 8 x 5,667 = 48,169 tokens (gpt-4o-mini bills images at ~33x gpt-4o's token count so
that an image costs the same in dollars). Others stay well below: gpt-4o 85 + 8 x 170 = 1,445;
patch-based gpt-4.1/o4 models at most 1,536 patches x 2.46 = 3,779; Claude about 1,600 (a
downscaled image of ~1.15 megapixels / 750); Gemini 258 per 768 px tile. A smaller constant would
under-reserve gpt-4o-mini image calls by up to 7x, which a strict bound must not do."""

EXPECTED_BYTES_PER_TOKEN = 4
"""A typical byte-level BPE token covers about four bytes of English text (used in expected mode)."""


def input_token_bound(input_bytes: int, items: int, images: int, mode: Literal["strict", "expected"]) -> int:
    """Input tokens a request can be billed for, before it is tokenized.

    strict: every byte-level BPE token covers at least one byte, so the UTF-8 byte count of the
    input is a proven ceiling; expected: a best guess at four bytes per token. Both add the same
    per-item, per-image and fixed overheads.
    """
    if input_bytes < 0 or items < 0 or images < 0:
        raise ValueError("input bytes, items and images must be non-negative")
    if mode == "strict":
        text_tokens = input_bytes
    elif mode == "expected":
        text_tokens = ceil_div(input_bytes, EXPECTED_BYTES_PER_TOKEN)
    else:
        raise ValueError(f"estimation mode must be 'strict' or 'expected', not {mode!r}")
    return text_tokens + PER_ITEM_OVERHEAD * items + IMAGE_TOKEN_BOUND * images + FIXED_OVERHEAD


def _rates_for(price: ModelPrice, input_tokens: int) -> ModelPrice | PriceTier:
    """The rate set a request with ``input_tokens`` total input tokens is billed at (genai-prices'
    rule: the highest tier whose threshold the input exceeds, else the base rates)."""
    rates: ModelPrice | PriceTier = price
    for tier in price.tiers:
        if input_tokens <= tier.above:
            break
        rates = tier
    return rates


def actual_cost_nano(price: ModelPrice, usage: TokenUsage) -> int:
    """The cost of a finished call in nano-USD, rounded up once at the end.

    Cached and cache-write input tokens, audio and image tokens, and reasoning output tokens, are
    billed at their own rates where the model has one, otherwise like plain input / output tokens;
    characters and audio seconds at the model's per-character and per-hour rates.
    """
    _check_usage(usage)
    rates = _rates_for(price, usage.input_tokens)
    cached = usage.cache_read_tokens + usage.cache_write_tokens + usage.cache_write_1h_tokens
    cache_write = rates.input if rates.cache_write is None else rates.cache_write
    cache_write_1h = cache_write if rates.cache_write_1h is None else rates.cache_write_1h
    total = (
        (usage.input_tokens - cached - usage.input_audio_tokens - usage.input_image_tokens) * rates.input
        + usage.cache_read_tokens * (rates.input if rates.cache_read is None else rates.cache_read)
        + usage.cache_write_tokens * cache_write
        + usage.cache_write_1h_tokens * cache_write_1h
        + usage.input_audio_tokens * (rates.input if rates.input_audio is None else rates.input_audio)
        + usage.input_image_tokens * (rates.input if rates.input_image is None else rates.input_image)
        + (usage.output_tokens - usage.reasoning_tokens - usage.output_audio_tokens - usage.output_image_tokens)
        * rates.output
        + usage.reasoning_tokens * (rates.output if rates.reasoning is None else rates.reasoning)
        + usage.output_audio_tokens * (rates.output if rates.output_audio is None else rates.output_audio)
        + usage.output_image_tokens * (rates.output if rates.output_image is None else rates.output_image)
        + usage.input_characters * price.per_mchars
    )
    return _units_cost(total, usage.input_audio_seconds, price) + rates.per_request


def unpriced_unit(price: ModelPrice, usage: TokenUsage) -> str | None:
    """The unit ``usage`` bills (tokens, characters, audio seconds) that ``price`` has no rate for
    while it rates another, or None. Priced as reported, such a usage costs $0 for work a model
    billed in its own unit did (a per-hour transcription reporting tokens, say): it is no bill."""
    units = {"tokens": (usage.input_tokens + usage.output_tokens, max(price.max_input, price.max_output)),
             "characters": (usage.input_characters, price.per_mchars),
             "audio seconds": (usage.input_audio_seconds, price.per_audio_hour)}
    if not any(rate for _, rate in units.values()):
        return None  # a free (or per-request) price: any usage of it costs what it costs
    return next((unit for unit, (amount, rate) in units.items() if amount and not rate), None)


def _units_cost(per_million: int, audio_seconds: int, price: ModelPrice) -> int:
    """nano-USD for an amount in nano-USD x units-per-million plus audio seconds at the hourly
    rate, with one rounding up over both."""
    return ceil_div(per_million * SECONDS_PER_HOUR + audio_seconds * price.per_audio_hour * TOKENS_PER_MTOK,
                    TOKENS_PER_MTOK * SECONDS_PER_HOUR)


def bound_cost_nano(price: ModelPrice, input_tokens: int, output_tokens: int, *, characters: int = 0,
                    audio_seconds: int = 0) -> int:
    """An upper bound of :func:`actual_cost_nano` for every consistent usage with at most
    ``input_tokens`` input and ``output_tokens`` output tokens (and at most ``characters`` input
    characters and ``audio_seconds`` seconds of audio).

    Each input token is charged at the highest rate any input token can have (plain, cached,
    cache-write, audio or image, in any tier: ``price.bound_input``), each output token at the
    highest output, reasoning, audio or image rate, plus the highest per-request fee. Every term of
    the actual cost is at most its counterpart here, and the final rounding up is monotone, so the
    bound holds.
    """
    if min(input_tokens, output_tokens, characters, audio_seconds) < 0:
        raise ValueError("token bounds must be non-negative")
    total = input_tokens * price.bound_input + output_tokens * price.bound_output + characters * price.per_mchars
    return _units_cost(total, audio_seconds, price) + price.bound_per_request


def _check_usage(usage: TokenUsage) -> None:
    if min(usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, usage.cache_write_tokens,
           usage.cache_write_1h_tokens, usage.reasoning_tokens, usage.input_audio_tokens, usage.input_image_tokens,
           usage.output_audio_tokens, usage.output_image_tokens, usage.input_characters,
           usage.input_audio_seconds) < 0:
        raise ValueError(f"token counts must be non-negative: {usage}")
    parts = (usage.cache_read_tokens + usage.cache_write_tokens + usage.cache_write_1h_tokens
             + usage.input_audio_tokens + usage.input_image_tokens)
    if parts > usage.input_tokens:
        raise ValueError(f"cache, audio and image tokens ({parts}) exceed all input tokens "
                         f"({usage.input_tokens}): {usage}")
    output_parts = usage.reasoning_tokens + usage.output_audio_tokens + usage.output_image_tokens
    if output_parts > usage.output_tokens:
        raise ValueError(f"reasoning, audio and image tokens ({output_parts}) exceed all output tokens "
                         f"({usage.output_tokens}): {usage}")
