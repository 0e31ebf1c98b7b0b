"""Cost arithmetic: exact actual costs, the strict upper bound (a hypothesis proof obligation) and
the input-token bound."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentguard_otel.pricing import (
    FIXED_OVERHEAD,
    IMAGE_TOKEN_BOUND,
    PER_ITEM_OVERHEAD,
    ModelPrice,
    PriceTier,
    TokenUsage,
    actual_cost_nano,
    bound_cost_nano,
    fallback_price,
    input_token_bound,
)
from agentguard_otel.pricing.prices import flat_price

HAIKU = ModelPrice(provider="anthropic", model="claude-haiku-4-5", input=1_000_000_000, output=5_000_000_000,
                   max_input=1_000_000_000, max_output=5_000_000_000, source="genai-prices",
                   cache_read=100_000_000, cache_write=1_250_000_000, cache_write_1h=2_000_000_000)
TIERED = ModelPrice(provider="google", model="gemini-2.5-pro", input=1_250_000_000, output=10_000_000_000,
                    max_input=2_500_000_000, max_output=15_000_000_000, source="genai-prices",
                    cache_read=125_000_000,
                    tiers=(PriceTier(above=200_000, input=2_500_000_000, output=15_000_000_000,
                                     cache_read=250_000_000),))


def test_input_token_bound_strict_counts_every_byte_and_overhead() -> None:
    assert (PER_ITEM_OVERHEAD, FIXED_OVERHEAD, IMAGE_TOKEN_BOUND) == (8, 16, 48_169)
    assert input_token_bound(1000, 3, 0, "strict") == 1000 + 3 * 8 + 16
    assert input_token_bound(0, 0, 2, "strict") == 2 * 48_169 + 16


def test_input_token_bound_expected_is_a_quarter_of_the_bytes_rounded_up() -> None:
    assert input_token_bound(1001, 2, 1, "expected") == 251 + 2 * 8 + 48_169 + 16
    assert input_token_bound(0, 0, 0, "expected") == FIXED_OVERHEAD


def test_input_token_bound_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        input_token_bound(-1, 0, 0, "strict")
    with pytest.raises(ValueError, match="estimation mode"):
        input_token_bound(1, 0, 0, "optimistic")  # type: ignore[arg-type]


def test_actual_cost_prices_each_token_kind_at_its_own_rate() -> None:
    usage = TokenUsage(input_tokens=10_000, output_tokens=2_000, cache_read_tokens=3_000,
                       cache_write_tokens=1_000, cache_write_1h_tokens=500, reasoning_tokens=700)
    # 5,500 uncached x $1 + 3,000 x $0.10 + 1,000 x $1.25 + 500 x $2 + 2,000 output x $5 (reasoning = output)
    expected_nano = 5_500_000 + 300_000 + 1_250_000 + 1_000_000 + 10_000_000
    assert actual_cost_nano(HAIKU, usage) == expected_nano


def test_actual_cost_falls_back_to_input_and_output_rates() -> None:
    plain = fallback_price("x", "y", 3_000_000_000, 15_000_000_000)
    usage = TokenUsage(input_tokens=1_000, output_tokens=100, cache_read_tokens=400, cache_write_tokens=300,
                       cache_write_1h_tokens=200, reasoning_tokens=50)
    assert plain.source == "fallback" and plain.max_input == plain.input
    assert actual_cost_nano(plain, usage) == 1_000 * 3_000 + 100 * 15_000


def test_cache_write_1h_without_its_own_rate_uses_the_cache_write_rate() -> None:
    price = ModelPrice(provider="x", model="y", input=1_000_000_000, output=1_000_000_000,
                       max_input=1_000_000_000, max_output=1_000_000_000, source="override",
                       cache_write=1_250_000_000)
    usage = TokenUsage(input_tokens=1_000, output_tokens=0, cache_write_1h_tokens=1_000)
    assert actual_cost_nano(price, usage) == 1_250_000


def test_actual_cost_rounds_up_once() -> None:
    price = fallback_price("x", "y", 1, 0)  # 1 nano-USD per million tokens
    assert actual_cost_nano(price, TokenUsage(input_tokens=1, output_tokens=0)) == 1
    assert actual_cost_nano(price, TokenUsage(input_tokens=1_000_000, output_tokens=0)) == 1
    assert actual_cost_nano(price, TokenUsage(input_tokens=1_000_001, output_tokens=0)) == 2


def test_tier_applies_to_the_whole_request_once_the_input_exceeds_its_threshold() -> None:
    at_threshold = TokenUsage(input_tokens=200_000, output_tokens=1_000)
    above = TokenUsage(input_tokens=200_001, output_tokens=1_000)
    assert actual_cost_nano(TIERED, at_threshold) == 200_000 * 1_250 + 1_000 * 10_000
    assert actual_cost_nano(TIERED, above) == 200_001 * 2_500 + 1_000 * 15_000


def test_audio_seconds_and_characters_are_priced_at_their_unit_rates_with_one_rounding() -> None:
    # $0.36 an hour = 100,000 nano-USD a second; $15 per million characters = 15,000 nano-USD each
    price = flat_price("openai", "m", "override", input=0, output=0, per_mchars=15_000_000_000,
                       per_audio_hour=360_000_001)
    usage = TokenUsage(0, 0, input_characters=3, input_audio_seconds=2)
    assert actual_cost_nano(price, usage) == 45_000 + 200_001  # 200,000.0006 rounded up once
    assert bound_cost_nano(price, 0, 0, characters=3, audio_seconds=2) == 245_001


def test_audio_and_image_tokens_are_priced_at_their_own_rates() -> None:
    price = flat_price("openai", "m", "override", input=1_000, output=2_000, input_audio=7_000, input_image=5_000,
                       output_audio=11_000, output_image=13_000)
    assert (price.max_input, price.max_output) == (7_000, 13_000)
    usage = TokenUsage(input_tokens=1_000_000, output_tokens=1_000_000, input_audio_tokens=100_000,
                       input_image_tokens=200_000, output_audio_tokens=300_000, output_image_tokens=400_000)
    assert actual_cost_nano(price, usage) == (700 + 700 + 1_000) + (600 + 3_300 + 5_200)


def test_per_request_fee_is_added() -> None:
    price = ModelPrice(provider="perplexity", model="sonar", input=1_000_000_000, output=1_000_000_000,
                       max_input=1_000_000_000, max_output=1_000_000_000, source="genai-prices",
                       per_request=12_000_000)
    assert actual_cost_nano(price, TokenUsage(input_tokens=0, output_tokens=0)) == 12_000_000
    assert bound_cost_nano(price, 0, 0) == 12_000_000


@pytest.mark.parametrize("usage", [
    TokenUsage(input_tokens=10, output_tokens=0, cache_read_tokens=11),
    TokenUsage(input_tokens=10, output_tokens=0, cache_read_tokens=5, cache_write_tokens=4,
               cache_write_1h_tokens=2),
    TokenUsage(input_tokens=10, output_tokens=3, reasoning_tokens=4),
    TokenUsage(input_tokens=-1, output_tokens=0),
])
def test_inconsistent_usage_is_an_error(usage: TokenUsage) -> None:
    with pytest.raises(ValueError):
        actual_cost_nano(HAIKU, usage)


def test_bound_uses_the_highest_input_and_output_rates() -> None:
    # Every input token at the 1h cache-write rate ($2), every output token at $5.
    assert bound_cost_nano(HAIKU, 1_000, 100) == 1_000 * 2_000 + 100 * 5_000
    # Highest tier: $2.50 in, $15 out.
    assert bound_cost_nano(TIERED, 1_000, 100) == 1_000 * 2_500 + 100 * 15_000
    with pytest.raises(ValueError):
        bound_cost_nano(HAIKU, -1, 0)


def test_model_price_rejects_inconsistent_rates() -> None:
    with pytest.raises(ValueError, match="max_input"):
        ModelPrice(provider="x", model="y", input=2, output=1, max_input=1, max_output=1, source="override")
    with pytest.raises(ValueError, match="negative"):
        ModelPrice(provider="x", model="y", input=1, output=1, max_input=1, max_output=1, source="override",
                   cache_read=-1)
    with pytest.raises(ValueError, match="ascending"):
        ModelPrice(provider="x", model="y", input=1, output=1, max_input=1, max_output=1, source="override",
                   tiers=(PriceTier(above=10, input=1, output=1), PriceTier(above=5, input=1, output=1)))


# --- properties -------------------------------------------------------------------------------------

_RATE = st.integers(min_value=0, max_value=200_000_000_000)  # up to $200 per MTok
_OPTIONAL_RATE = st.none() | _RATE


@st.composite
def _tier(draw: st.DrawFn, above: int) -> PriceTier:
    return PriceTier(above=above, input=draw(_RATE), output=draw(_RATE), cache_read=draw(_OPTIONAL_RATE),
                     cache_write=draw(_OPTIONAL_RATE), cache_write_1h=draw(_OPTIONAL_RATE),
                     reasoning=draw(_OPTIONAL_RATE), per_request=draw(st.integers(0, 50_000_000)))


@st.composite
def prices(draw: st.DrawFn) -> ModelPrice:
    """Any valid price: flat or tiered, with or without cache / reasoning rates and modality extras."""
    base = draw(_tier(0))
    starts = sorted(draw(st.sets(st.integers(0, 400_000), max_size=3)))
    tiers = tuple(draw(_tier(start)) for start in starts)
    rate_sets = (base, *tiers)
    max_input = max(rates.input for rates in rate_sets) + draw(st.integers(0, 10_000_000_000))
    max_output = max(rates.output for rates in rate_sets) + draw(st.integers(0, 10_000_000_000))
    input_modal, output_modal = st.none() | st.integers(0, max_input), st.none() | st.integers(0, max_output)
    return ModelPrice(provider="p", model="m", input=base.input, output=base.output, max_input=max_input,
                      max_output=max_output, source="genai-prices", cache_read=base.cache_read,
                      cache_write=base.cache_write, cache_write_1h=base.cache_write_1h,
                      reasoning=base.reasoning, per_request=base.per_request, tiers=tiers,
                      input_audio=draw(input_modal), input_image=draw(input_modal), output_audio=draw(output_modal),
                      output_image=draw(output_modal), per_mchars=draw(_RATE), per_audio_hour=draw(_RATE))


@st.composite
def usages(draw: st.DrawFn, max_input: int, max_output: int, max_characters: int = 0,
           max_seconds: int = 0) -> TokenUsage:
    """Any consistent usage within the given token counts (and characters, audio seconds)."""
    input_tokens = draw(st.integers(0, max_input))
    cache_read = draw(st.integers(0, input_tokens))
    cache_write = draw(st.integers(0, input_tokens - cache_read))
    cache_write_1h = draw(st.integers(0, input_tokens - cache_read - cache_write))
    audio = draw(st.integers(0, input_tokens - cache_read - cache_write - cache_write_1h))
    image = draw(st.integers(0, input_tokens - cache_read - cache_write - cache_write_1h - audio))
    output_tokens = draw(st.integers(0, max_output))
    reasoning = draw(st.integers(0, output_tokens))
    output_audio = draw(st.integers(0, output_tokens - reasoning))
    return TokenUsage(input_tokens=input_tokens, output_tokens=output_tokens, cache_read_tokens=cache_read,
                      cache_write_tokens=cache_write, cache_write_1h_tokens=cache_write_1h,
                      reasoning_tokens=reasoning, input_audio_tokens=audio, input_image_tokens=image,
                      output_audio_tokens=output_audio,
                      output_image_tokens=draw(st.integers(0, output_tokens - reasoning - output_audio)),
                      input_characters=draw(st.integers(0, max_characters)),
                      input_audio_seconds=draw(st.integers(0, max_seconds)))


@settings(max_examples=300)
@given(price=prices(), limits=st.tuples(st.integers(0, 1_000_000), st.integers(0, 200_000)),
       media=st.tuples(st.integers(0, 10_000), st.integers(0, 20_000)), data=st.data())
def test_bound_is_never_below_the_actual_cost(price: ModelPrice, limits: tuple[int, int], media: tuple[int, int],
                                              data: st.DataObject) -> None:
    """Whatever mix of cached, audio, image and reasoning tokens, characters and audio seconds."""
    (input_limit, output_limit), (characters, seconds) = limits, media
    usage = data.draw(usages(input_limit, output_limit, characters, seconds))
    assert bound_cost_nano(price, input_limit, output_limit, characters=characters, audio_seconds=seconds) \
        >= actual_cost_nano(price, usage)


@st.composite
def rising_prices(draw: st.DrawFn) -> ModelPrice:
    """Prices whose tiers never get cheaper (as every provider's tiers are): cost grows with tokens."""
    price = draw(prices())
    raised: list[PriceTier] = []
    previous: ModelPrice | PriceTier = price
    for tier in price.tiers:
        # each effective rate (a missing cache / reasoning rate falls back) at least the previous one
        lifted = PriceTier(
            above=tier.above, input=max(tier.input, previous.input), output=max(tier.output, previous.output),
            cache_read=max(tier.cache_read or 0, previous.cache_read or previous.input),
            cache_write=max(tier.cache_write or 0, previous.cache_write or previous.input),
            cache_write_1h=max(tier.cache_write_1h or 0,
                               previous.cache_write_1h or previous.cache_write or previous.input),
            reasoning=max(tier.reasoning or 0, previous.reasoning or previous.output),
            per_request=max(tier.per_request, previous.per_request))
        raised.append(lifted)
        previous = lifted
    rate_sets: list[ModelPrice | PriceTier] = [price, *raised]
    return ModelPrice(provider="p", model="m", input=price.input, output=price.output,
                      max_input=max(rates.input for rates in rate_sets),
                      max_output=max(rates.output for rates in rate_sets), source="genai-prices",
                      cache_read=price.cache_read, cache_write=price.cache_write,
                      cache_write_1h=price.cache_write_1h, reasoning=price.reasoning,
                      per_request=price.per_request, tiers=tuple(raised))


_KINDS = ("uncached", "cache_read", "cache_write", "cache_write_1h", "output", "reasoning")


@settings(max_examples=300)
@given(price=rising_prices(), data=st.data(), kind=st.sampled_from(_KINDS), more=st.integers(1, 300_000))
def test_actual_cost_is_monotone_in_tokens(price: ModelPrice, data: st.DataObject, kind: str,
                                           more: int) -> None:
    usage = data.draw(usages(500_000, 100_000))
    grows_input = kind in ("uncached", "cache_read", "cache_write", "cache_write_1h")
    counts = {"input_tokens": usage.input_tokens + (more if grows_input else 0),
              "output_tokens": usage.output_tokens + (0 if grows_input else more)}
    if kind not in ("uncached", "output"):  # a more specific kind of input or output token
        counts[f"{kind}_tokens"] = getattr(usage, f"{kind}_tokens") + more
    grown = dataclasses.replace(usage, **counts)
    assert actual_cost_nano(price, grown) >= actual_cost_nano(price, usage)
