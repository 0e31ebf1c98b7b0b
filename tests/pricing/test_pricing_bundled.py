"""Bundled genai-prices data: exact integer rates, cross-checked against genai-prices' own
``calc_price`` (Decimal USD), tiers, time-constrained prices, provider aliases and OpenRouter ids."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from decimal import ROUND_CEILING, Decimal

import genai_prices
import pytest
from genai_prices import data_snapshot
from genai_prices import types as gp

from agentguard_otel.pricing import PriceBook, TokenUsage
from agentguard_otel.pricing.bundled import convert, genai_provider


def genai_cost_nano(provider: str, model: str, usage: TokenUsage, at: datetime | None = None) -> int:
    """What genai-prices charges for ``usage``, in nano-USD rounded up. Its cache-write count includes
    1-hour writes (a more specific kind of cache write); ours keeps them apart."""
    calc = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                           cache_read_tokens=usage.cache_read_tokens,
                           cache_write_tokens=usage.cache_write_tokens + usage.cache_write_1h_tokens,
                           cache_write_1h_tokens=usage.cache_write_1h_tokens,
                           output_reasoning_tokens=usage.reasoning_tokens),
        model, provider_id=provider, genai_request_timestamp=at)
    return int((calc.total_price * 10**9).to_integral_value(rounding=ROUND_CEILING))


PLAIN = TokenUsage(input_tokens=12_345, output_tokens=678)
CACHED = TokenUsage(input_tokens=50_000, output_tokens=4_000, cache_read_tokens=20_000,
                    cache_write_tokens=5_000, cache_write_1h_tokens=3_000, reasoning_tokens=1_500)


@pytest.fixture(scope="module")
def book() -> PriceBook:
    return PriceBook()


@pytest.mark.parametrize(("provider", "model", "rates"), [
    ("openai", "gpt-4o", (2_500_000_000, 10_000_000_000, 1_250_000_000, None, None)),
    ("openai", "gpt-4o-mini", (150_000_000, 600_000_000, 75_000_000, None, None)),
    ("anthropic", "claude-haiku-4-5",
     (1_000_000_000, 5_000_000_000, 100_000_000, 1_250_000_000, 2_000_000_000)),
    ("aws", "us.anthropic.claude-haiku-4-5-20251001-v1:0",
     (1_100_000_000, 5_500_000_000, 110_000_000, 1_375_000_000, 2_200_000_000)),
    ("aws", "amazon.nova-micro-v1:0", (35_000_000, 140_000_000, 8_750_000, None, None)),
])
def test_bundled_rates_are_exact_nano_usd(book: PriceBook, provider: str, model: str,
                                          rates: tuple[int, int, int, int | None, int | None]) -> None:
    price = book.lookup(provider, model)
    assert price is not None
    assert (price.input, price.output, price.cache_read, price.cache_write, price.cache_write_1h) == rates
    assert (price.max_input, price.max_output) == (price.input, price.output)
    assert (price.per_request, price.tiers) == (0, ())
    assert (price.provider, price.model, price.source) == (provider, model, "genai-prices")


@pytest.mark.parametrize(("provider", "model"), [
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-haiku-4-5"),
    ("aws", "us.anthropic.claude-haiku-4-5-20251001-v1:0"),
    ("perplexity", "sonar-deep-research"),  # has its own reasoning rate
    ("perplexity", "sonar"),  # per-request fee
])
@pytest.mark.parametrize("usage", [PLAIN, CACHED], ids=["plain", "cached+reasoning"])
def test_actual_cost_matches_genai_prices(book: PriceBook, provider: str, model: str,
                                          usage: TokenUsage) -> None:
    price = book.lookup(provider, model)
    assert price is not None
    assert book.actual_cost_nano(price, usage) == genai_cost_nano(provider, model, usage)


def test_cached_and_reasoning_tokens_are_priced_at_their_rates(book: PriceBook) -> None:
    price = book.lookup("anthropic", "claude-haiku-4-5")
    assert price is not None
    # 22,000 uncached x $1 + 20,000 x $0.10 + 5,000 x $1.25 + 3,000 x $2 + 4,000 output x $5
    assert book.actual_cost_nano(price, CACHED) == 22_000_000 + 2_000_000 + 6_250_000 + 6_000_000 + 20_000_000
    deep = book.lookup("perplexity", "sonar-deep-research")
    assert deep is not None and deep.reasoning == 3_000_000_000 and deep.output == 8_000_000_000
    # 2,500 plain output x $8 + 1,500 reasoning x $3, 50,000 input x $2
    assert book.actual_cost_nano(deep, CACHED) == 100_000_000 + 20_000_000 + 4_500_000


def test_tiered_model_bills_the_tier_the_input_selects(book: PriceBook) -> None:
    price = book.lookup("google", "gemini-2.5-pro")
    assert price is not None
    assert (price.input, price.output, price.cache_read) == (1_250_000_000, 10_000_000_000, 125_000_000)
    [tier] = price.tiers
    assert (tier.above, tier.input, tier.output, tier.cache_read) == (200_000, 2_500_000_000, 15_000_000_000,
                                                                      250_000_000)
    assert (price.max_input, price.max_output) == (2_500_000_000, 15_000_000_000)
    small = TokenUsage(input_tokens=200_000, output_tokens=1_000, cache_read_tokens=50_000)
    large = TokenUsage(input_tokens=200_001, output_tokens=1_000, cache_read_tokens=50_000)
    assert book.actual_cost_nano(price, small) == 150_000 * 1_250 + 50_000 * 125 + 1_000 * 10_000
    assert book.actual_cost_nano(price, large) == 150_001 * 2_500 + 50_000 * 250 + 1_000 * 15_000
    for usage in (small, large):
        assert book.actual_cost_nano(price, usage) == genai_cost_nano("google", "gemini-2.5-pro", usage)
        assert book.bound_cost_nano(price, usage.input_tokens, usage.output_tokens) >= \
            book.actual_cost_nano(price, usage)


def test_modality_rates_raise_the_max_rates(book: PriceBook) -> None:
    price = book.lookup("openai", "gpt-realtime")
    assert price is not None
    # text $4 / $16, audio $32 / $64 per MTok: a strict bound must assume audio
    assert (price.input, price.output, price.max_input, price.max_output) == (
        4_000_000_000, 16_000_000_000, 32_000_000_000, 64_000_000_000)


def test_every_bundled_rate_converts_exactly_or_rounds_up() -> None:
    for provider in data_snapshot.get_snapshot().providers:
        for info in provider.models:
            listed = info.prices
            for prices in [listed] if isinstance(listed, gp.ModelPrice) else [c.prices for c in listed]:
                price = convert(provider.id, info.id, prices)
                rate = prices.input_mtok
                if price is not None and isinstance(rate, Decimal):
                    assert price.input == math.ceil(rate * 10**9)


def test_rates_with_more_than_nine_decimals_round_up(book: PriceBook) -> None:
    # genai-prices lists this OpenRouter cache-write rate as the float artifact 0.0833333333333333
    price = book.lookup("openrouter", "google/gemini-2.5-flash")
    assert price is not None and price.cache_write == 83_333_334


@pytest.mark.parametrize(("provider", "model", "expected_input"), [
    ("aws.bedrock", "anthropic.claude-3-haiku-20240307-v1:0", 250_000_000),
    ("bedrock", "us.amazon.nova-pro-v1:0", 800_000_000),
    ("gemini", "gemini-2.5-pro", 1_250_000_000),
    ("gcp.gemini", "gemini-2.5-pro", 1_250_000_000),
    ("OpenAI", "GPT-4o-mini", 150_000_000),
])
def test_provider_aliases(book: PriceBook, provider: str, model: str, expected_input: int) -> None:
    price = book.lookup(provider, model)
    assert price is not None and price.input == expected_input and price.provider == provider


def test_aws_alias_points_at_the_bedrock_provider() -> None:
    source = genai_provider("aws.bedrock")
    assert source is not None and source.id == "aws"


def test_openrouter_ids_variants_and_vendor_fallback(book: PriceBook) -> None:
    direct = book.lookup("openrouter", "openai/gpt-5-mini")
    assert direct is not None and (direct.input, direct.output) == (250_000_000, 2_000_000_000)
    # OpenRouter lists claude-haiku-4.5; the dashed id falls back to the vendor's own price list
    dashed = book.lookup("openrouter", "anthropic/claude-haiku-4-5")
    assert dashed is not None and (dashed.input, dashed.output, dashed.cache_write_1h) == (
        1_000_000_000, 5_000_000_000, 2_000_000_000)
    for variant in (":floor", ":nitro"):
        routed = book.lookup("openrouter", "anthropic/claude-haiku-4-5" + variant)
        assert routed is not None and routed.input == 1_000_000_000 and routed.model.endswith(variant)
    free = book.lookup("openrouter", "anthropic/claude-haiku-4-5:free")
    assert free is not None and (free.input, free.output, free.max_input, free.max_output) == (0, 0, 0, 0)
    assert free.source == "openrouter"
    assert book.actual_cost_nano(free, CACHED) == 0


def test_free_variant_listed_in_the_bundled_data_is_a_known_zero(book: PriceBook) -> None:
    price = book.lookup("openrouter", "meta-llama/llama-3.3-70b-instruct:free")
    assert price is not None and price.source == "genai-prices" and price.input == price.output == 0


def test_character_and_audio_hour_models_are_priced_by_their_units(book: PriceBook) -> None:
    """tts-1 per million characters and whisper-1 per audio hour (genai-prices ``input_mchars``,
    ``audio_hours``); gpt-image and gpt-4o-transcribe rates per modality, as integer nano-USD."""
    tts, whisper = book.lookup("openai", "tts-1-hd"), book.lookup("openai", "whisper-1")
    assert tts is not None and whisper is not None
    assert (tts.per_mchars, tts.input, tts.output) == (30 * 10**9, 0, 0)
    assert (whisper.per_audio_hour, whisper.per_mchars) == (360_000_000, 0)
    assert book.actual_cost_nano(tts, TokenUsage(0, 0, input_characters=1_000)) == 30_000_000
    assert book.actual_cost_nano(whisper, TokenUsage(0, 0, input_audio_seconds=61)) == 6_100_000
    image, transcribe = book.lookup("openai", "gpt-image-1.5"), book.lookup("openai", "gpt-4o-transcribe")
    assert image is not None and transcribe is not None
    billion = 10**9
    assert (image.input, image.input_image, image.output, image.output_image) == \
        (5 * billion, 8 * billion, 10 * billion, 32 * billion)
    assert (transcribe.input_audio, transcribe.max_input) == (6 * billion, 6 * billion)
    usage = TokenUsage(input_tokens=100, output_tokens=1_000, input_image_tokens=60, output_image_tokens=1_000)
    assert book.actual_cost_nano(image, usage) == 40 * 5_000 + 60 * 8_000 + 1_000 * 32_000
    assert book.bound_cost_nano(image, 100, 1_000) >= book.actual_cost_nano(image, usage)


@pytest.mark.parametrize(("provider", "model"), [
    ("openai", "gpt-unknown-9000"),
    ("openrouter", "nobody/nothing"),
    ("no-such-provider", "gpt-4o"),
    ("openrouter", "openrouter/auto"),
])
def test_unknown_model_is_none(book: PriceBook, provider: str, model: str) -> None:
    assert book.lookup(provider, model) is None


def test_lookup_is_cached(book: PriceBook) -> None:
    first = book.lookup("openai", "gpt-4o-mini")
    assert first is not None
    assert book.lookup("openai", "gpt-4o-mini") is first
    assert book.lookup("openai", "no-such-model") is None
    assert book.lookup("openai", "no-such-model") is None


def test_time_constrained_price_follows_the_clock() -> None:
    now = [datetime(2026, 11, 23, 10, 0, tzinfo=timezone.utc).timestamp()]
    book = PriceBook(clock=lambda: now[0])
    peak = book.lookup("deepseek", "deepseek-chat")
    assert peak is not None and peak.input == 270_000_000 and peak.output == 1_100_000_000
    now[0] = datetime(2026, 11, 23, 16, 29, 59, tzinfo=timezone.utc).timestamp()
    assert book.lookup("deepseek", "deepseek-chat") is peak
    now[0] = datetime(2026, 11, 23, 16, 30, tzinfo=timezone.utc).timestamp()
    off_peak = book.lookup("deepseek", "deepseek-chat")
    assert off_peak is not None and off_peak.input == 135_000_000 and off_peak.output == 550_000_000
    at = datetime.fromtimestamp(now[0], timezone.utc)
    assert book.actual_cost_nano(off_peak, PLAIN) == genai_cost_nano("deepseek", "deepseek-chat", PLAIN, at)
