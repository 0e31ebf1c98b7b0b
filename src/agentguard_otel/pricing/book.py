"""The price book: one lookup per (provider, model), answered from the user's overrides, an imported
OpenRouter catalog, or the bundled genai-prices data, in that order, and cached."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from agentguard_otel.pricing.bundled import bundled_price, genai_provider
from agentguard_otel.pricing.estimate import actual_cost_nano, bound_cost_nano, unpriced_unit
from agentguard_otel.pricing.openrouter import dashed_versions, load_catalog
from agentguard_otel.pricing.overrides import OverrideSource, load_overrides
from agentguard_otel.pricing.prices import ModelPrice, TokenUsage, free_price

OPENROUTER = "openrouter"
FREE_VARIANT = "free"
"""OpenRouter's ``:free`` variants cost nothing: a known price of zero, not an unknown one."""
PRICED_AS_BASE_VARIANTS = ("floor", "nitro")
"""OpenRouter routing variants (cheapest / fastest provider) priced as their base model unless a
source lists the variant itself."""
CACHE_LIMIT = 10_000
"""Distinct (provider, model) pairs kept; model names come from requests, so the cache is bounded."""

_Entry = tuple[ModelPrice | None, float]


# The price-book providers of the adapters' calls (OpenAI and compatible, OpenRouter, Anthropic, Bedrock).
ADAPTER_PROVIDERS = ("openai", "openrouter", "anthropic", "aws")
ANY_PROVIDER = "*"
"""The provider a bare override key (no ``provider/``) is listed under: it prices the model at any."""


class PriceBook:
    """Prices by (provider, model). ``lookup`` resolves a pair once and then answers from a cache
    (a dict hit), so pricing never slows the hot path."""

    def __init__(self, overrides: OverrideSource = None, catalog_dir: Path | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        """``overrides``: a mapping or a YAML/JSON file of user prices (they win over everything);
        ``catalog_dir``: where ``sync_openrouter_catalog`` wrote its catalog (wins over bundled data
        for provider ``openrouter``); ``clock``: POSIX time, for choosing time-constrained prices."""
        self._overrides = load_overrides(overrides)
        self._catalog = load_catalog(catalog_dir) if catalog_dir is not None else {}
        self._clock = clock
        self._cache: dict[tuple[str, str, str | None], _Entry] = {}

    def knows(self, model: str) -> bool:
        """Whether a model id has a price under any provider the adapters speak for."""
        return any(self.lookup(provider, model) is not None for provider in ADAPTER_PROVIDERS)

    def lookup(self, provider: str, model: str, tier: str | None = None) -> ModelPrice | None:
        """The price of ``model`` at ``provider`` (at a service ``tier`` the call asked for), or
        ``None`` when no source knows it.

        The same object is returned until a time-constrained price (e.g. off-peak hours) changes.
        """
        key = (provider, model, tier)
        hit = self._cache.get(key)
        if hit is not None and (hit[1] == math.inf or hit[1] > self._clock()):
            return hit[0]
        entry = self._resolve(provider, model, tier)
        if len(self._cache) >= CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = entry
        return entry[0]

    def catalog(self) -> list[ModelPrice]:
        """Every model this book prices under a provider the adapters speak for, each resolved by
        :meth:`lookup` (so the source shown is the one a call would be priced from): the bundled
        models, the imported OpenRouter catalog and the overrides. A bare override key applies to
        any provider and is listed under :data:`ANY_PROVIDER`. OpenRouter ids priced only through
        their vendor's bundled price are not enumerated."""
        pairs: dict[tuple[str, str], None] = {}
        for provider in ADAPTER_PROVIDERS:
            source = genai_provider(provider)
            for info in source.models if source is not None else ():
                pairs[(provider, info.id)] = None
        aliases = {dashed_versions(key) for key, price in self._catalog.items()
                   if dashed_versions(key) != key and self._catalog.get(dashed_versions(key)) is price}
        for key in self._catalog:
            if key not in aliases:
                pairs[(OPENROUTER, key)] = None
        for key in self._overrides:
            prefix, slash, rest = key.partition("/")
            named = genai_provider(prefix) if slash else None
            if named is not None and named.id in ADAPTER_PROVIDERS:
                pairs[(named.id, rest)] = None
            if not slash:
                pairs[(ANY_PROVIDER, key)] = None
            elif named is None or named.id != OPENROUTER:  # a bare OpenRouter id (vendor/model) too
                pairs[(OPENROUTER, key)] = None
        found = (self.lookup(provider, model) for provider, model in pairs)
        return [price for price in found if price is not None]

    def actual_cost_nano(self, price: ModelPrice, usage: TokenUsage) -> int:
        """See :func:`agentguard_otel.pricing.estimate.actual_cost_nano`; a usage in a unit the
        price does not rate (:func:`~agentguard_otel.pricing.estimate.unpriced_unit`) is a
        ValueError, not a cost of $0."""
        unit = unpriced_unit(price, usage)
        if unit is not None:
            raise ValueError(f"{price.model} has no rate for the {unit} its usage reports")
        return actual_cost_nano(price, usage)

    def bound_cost_nano(self, price: ModelPrice, input_tokens: int, output_tokens: int, *, characters: int = 0,
                        audio_seconds: int = 0) -> int:
        """See :func:`agentguard_otel.pricing.estimate.bound_cost_nano`."""
        return bound_cost_nano(price, input_tokens, output_tokens, characters=characters,
                               audio_seconds=audio_seconds)

    def _resolve(self, provider: str, model: str, tier: str | None) -> _Entry:
        """First match wins: overrides, the OpenRouter catalog (provider ``openrouter`` only), the
        bundled data for the provider, OpenRouter's ``:free`` rule, then the OpenRouter model's
        vendor in the bundled data. ``:floor``/``:nitro`` ids fall back to their base id at each
        source. Returns the price and the POSIX time until which it holds."""
        asked = provider.strip().lower()
        source = genai_provider(asked)
        canonical = source.id if source is not None else asked
        name = model.strip()
        base, colon, variant = name.rpartition(":")
        openrouter = canonical == OPENROUTER
        names = [name, base] if openrouter and colon and variant in PRICED_AS_BASE_VARIANTS else [name]

        def found(price: ModelPrice) -> ModelPrice:
            return dataclasses.replace(price, provider=provider, model=model)

        for candidate in names:
            override = self._override(asked, canonical, candidate)
            if override is not None:
                return found(override), math.inf
        if openrouter:
            for candidate in names:
                listed = self._listed(candidate)
                if listed is not None:
                    return found(listed), math.inf
        at = datetime.fromtimestamp(self._clock(), timezone.utc)
        valid_until = math.inf
        if source is not None:
            for candidate in names:
                price, until = bundled_price(source, candidate, at, tier)
                valid_until = min(valid_until, until)
                if price is not None:
                    return found(price), valid_until
        if openrouter and colon and variant == FREE_VARIANT:
            return free_price(provider, model, "openrouter"), math.inf
        if openrouter and "/" in names[-1]:
            price, until = self._vendor_price(names[-1], at)
            if price is not None:
                return found(price), min(valid_until, until)
        return None, valid_until

    def _override(self, provider: str, canonical: str, model: str) -> ModelPrice | None:
        wanted = model.lower()
        for key in (f"{provider}/{wanted}", f"{canonical}/{wanted}", wanted):
            price = self._overrides.get(key)
            if price is not None:
                return price
        return None

    def _listed(self, model: str) -> ModelPrice | None:
        wanted = model.lower()
        return self._catalog.get(wanted) or self._catalog.get(dashed_versions(wanted))

    def _vendor_price(self, model: str, at: datetime) -> tuple[ModelPrice | None, float]:
        """An OpenRouter model (``openai/gpt-5-mini``) priced at its vendor (``openai``,
        ``gpt-5-mini``): OpenRouter passes vendor prices through."""
        vendor, _, vendor_model = model.partition("/")
        source = genai_provider(vendor)
        if source is None or source.id == OPENROUTER:
            return None, math.inf
        return bundled_price(source, vendor_model, at)
