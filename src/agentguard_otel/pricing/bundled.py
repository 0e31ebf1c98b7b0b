"""Prices from the bundled genai-prices data, resolved once per model into integer rates.

genai-prices' own ``calc_price`` costs about half a millisecond a call; here its model matching
(aliases, regexes, provider fallbacks) runs once, and the matched Decimal rates become a
:class:`ModelPrice` the hot path prices with integer arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime, time, timedelta, timezone
from decimal import Decimal

from genai_prices import data_snapshot
from genai_prices import types as gp

from agentguard_otel.pricing.prices import ModelPrice, PriceTier, free_price, usd_to_nano_scaled

_PROVIDER_ALIASES = {
    "aws.bedrock": "aws",
    "bedrock": "aws",
    "gemini": "google",
    "gcp.gemini": "google",
    "gcp.vertex_ai": "google",
}
"""Names callers use (OTel ``gen_ai.provider.name`` values among them) for genai-prices providers
whose ids differ."""

_PER_MTOK = Decimal(1)
"""genai-prices token rates are already USD per million tokens."""
_PER_REQUEST = Decimal("0.001")
"""genai-prices' request rate (``requests_kcount``) is USD per thousand requests."""


def genai_provider(provider: str) -> gp.Provider | None:
    """The genai-prices provider a caller's provider id names, matched the way genai-prices does."""
    wanted = provider.strip().lower()
    providers = data_snapshot.get_snapshot().providers
    return data_snapshot.find_provider_by_id(providers, _PROVIDER_ALIASES.get(wanted, wanted))


def bundled_price(source: gp.Provider, model: str, at: datetime,
                  tier: str | None = None) -> tuple[ModelPrice | None, float]:
    """The price of ``model`` at ``source`` in effect at ``at``, and the POSIX time until which it
    stays in effect (``inf`` unless the model has time-constrained prices). ``tier``: a service tier
    the call asked for (``priority``, ``flex``...): its variant prices where the data has them, and
    where it has no variant for that tier, the dearest tier it has (an unknown tier is bounded).

    ``None`` when genai-prices does not know the model, or knows it but prices none of the units
    the guard meters (tokens, input characters, audio hours).
    """
    info = source.find_model(model, all_providers=data_snapshot.get_snapshot().providers)
    if info is None:
        return None, math.inf
    price = convert(source.id, model, info.get_prices(at))
    if tier is not None and price is not None:
        tiers = sorted({str(v.when["service_tier"]) for v in info.price_variants or () if "service_tier" in v.when})
        speeds = {str(v.when["speed"]) for v in info.price_variants or () if "speed" in v.when}
        if tier in speeds:  # a processing speed priced as its own variant (Anthropic's fast mode)
            price = convert(source.id, model, info.get_prices(at, {"speed": tier})) or price
        elif tier in tiers:
            price = convert(source.id, model, info.get_prices(at, {"service_tier": tier})) or price
        else:  # a tier the data does not price: bounded by the dearest one it has (or the standard price)
            variants = [convert(source.id, model, info.get_prices(at, {"service_tier": t})) for t in tiers]
            price = max([price, *(v for v in variants if v is not None)],
                        key=lambda p: (p.bound_input, p.bound_output))
    window = info.context_window
    if price is not None and isinstance(window, int) and window > 0:
        price = replace(price, context_window=window)
    return price, _valid_until(info, at)


def convert(provider: str, model: str, prices: gp.ModelPrice) -> ModelPrice | None:
    """genai-prices' Decimal USD-per-MTok rates as integer nano-USD per MTok (rounded up where a
    rate carries more than nine decimals), with tiers merged over every rate's thresholds."""
    values: dict[str, Decimal | gp.TieredPrices] = {
        key: value for key, value in vars(prices).items() if value is not None and not key.startswith("_")}
    metered = "input_mtok" in values or "output_mtok" in values or any(key in values for key in _UNIT_RATES)
    if not metered:
        if any(_is_token_rate(key) for key in values) or not model.lower().endswith(":free"):
            return None
        return free_price(provider, model, "genai-prices")
    thresholds = sorted({tier.start for value in values.values() if isinstance(value, gp.TieredPrices)
                         for tier in value.tiers})
    base = _tier(values, above=0, input_tokens=0)
    return ModelPrice(
        provider=provider, model=model, input=base.input, output=base.output,
        max_input=_max_rate(values, "input_"), max_output=_max_rate(values, "output_"), source="genai-prices",
        cache_read=base.cache_read, cache_write=base.cache_write, cache_write_1h=base.cache_write_1h,
        reasoning=base.reasoning, per_request=base.per_request, input_audio=base.input_audio,
        input_image=base.input_image, output_audio=base.output_audio, output_image=base.output_image,
        per_mchars=_max_unit_rate(values, ("input_mchars",)),
        per_audio_hour=_max_unit_rate(values, _AUDIO_HOUR_RATES),
        tiers=tuple(_tier(values, above=start, input_tokens=start + 1) for start in thresholds),
    )


_AUDIO_HOUR_RATES = ("audio_hours", "input_audio_hours")
"""genai-prices lists transcription by the hour under either key (the same rate where both are)."""
_UNIT_RATES = ("input_mchars", *_AUDIO_HOUR_RATES)


def _max_unit_rate(values: dict[str, Decimal | gp.TieredPrices], keys: tuple[str, ...]) -> int:
    """The highest of the listed rates (USD per million characters, per audio hour: kept at that
    scale, the cost arithmetic divides by it), 0 where none is listed."""
    return max((usd_to_nano_scaled(rate, 1) for key in keys if key in values
                for rate in _all_rates(values[key])), default=0)


def _is_token_rate(key: str) -> bool:
    return key.endswith("_mtok")


def _rate_at(value: Decimal | gp.TieredPrices, input_tokens: int) -> Decimal:
    """genai-prices' tier rule: the highest tier whose start the request's input exceeds."""
    if isinstance(value, Decimal):
        return value
    for tier in reversed(value.tiers):
        if input_tokens > tier.start:
            return tier.price
    return value.base


def _tier(values: dict[str, Decimal | gp.TieredPrices], *, above: int, input_tokens: int) -> PriceTier:
    """Every rate as it applies to a request with ``input_tokens`` input tokens."""
    def nano(key: str, scale: Decimal = _PER_MTOK) -> int | None:
        value = values.get(key)
        return None if value is None else usd_to_nano_scaled(_rate_at(value, input_tokens), scale)

    return PriceTier(above=above, input=nano("input_mtok") or 0, output=nano("output_mtok") or 0,
                     cache_read=nano("cache_read_mtok"), cache_write=nano("cache_write_mtok"),
                     cache_write_1h=nano("cache_write_1h_mtok"), reasoning=nano("output_reasoning_mtok"),
                     per_request=nano("requests_kcount", _PER_REQUEST) or 0, input_audio=nano("input_audio_mtok"),
                     input_image=nano("input_image_mtok"), output_audio=nano("output_audio_mtok"),
                     output_image=nano("output_image_mtok"))


def _all_rates(value: Decimal | gp.TieredPrices) -> Iterable[Decimal]:
    if isinstance(value, Decimal):
        return (value,)
    return (value.base, *(tier.price for tier in value.tiers))


def _max_rate(values: dict[str, Decimal | gp.TieredPrices], direction: str) -> int:
    """The highest rate of any non-cache token in one direction: plain, reasoning, or a modality
    (audio, image, video) genai-prices prices apart. Cache keys start with ``cache_``."""
    rates = [rate for key, value in values.items() if key.startswith(direction) and _is_token_rate(key)
             for rate in _all_rates(value)]
    return max((usd_to_nano_scaled(rate, _PER_MTOK) for rate in rates), default=0)


def _valid_until(info: gp.ModelInfo, at: datetime) -> float:
    """When the choice among a model's time-constrained prices can next change (``inf`` if never)."""
    if isinstance(info.prices, gp.ModelPrice):
        return math.inf
    at = at.astimezone(timezone.utc)
    changes: list[datetime] = []
    for conditional in info.prices:
        constraint = conditional.constraint
        if isinstance(constraint, gp.StartDateConstraint):
            changes.append(datetime.combine(constraint.start_date, time(), tzinfo=timezone.utc))
        elif isinstance(constraint, gp.TimeOfDateConstraint):
            changes.extend(_next_time_of_day(moment, at)
                           for moment in (constraint.start_time, constraint.end_time))
    return min((change.timestamp() for change in changes if change > at), default=math.inf)


def _next_time_of_day(moment: time, at: datetime) -> datetime:
    """The first instant after ``at`` at the time of day ``moment``, read in its own zone (naive
    times are UTC, as genai-prices reads them)."""
    zone = moment.tzinfo or timezone.utc
    local = at.astimezone(zone)
    candidate = datetime.combine(local.date(), moment.replace(tzinfo=None), tzinfo=zone)
    if candidate <= at:
        candidate += timedelta(days=1)
    return candidate.astimezone(timezone.utc)
