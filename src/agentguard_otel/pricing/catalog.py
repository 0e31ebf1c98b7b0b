"""The priced catalog as people and scripts read it (``agentguard models``, ``agentguard wizard``).

Rates stay integer nano-USD per million tokens until they are shown: the USD figures are the exact
decimals of those integers, and a price ceiling given in USD is compared as the integer it floors
to (a rate is at most ``x`` USD exactly when it is at most ``floor(x * 1e9)`` nano-USD).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from typing import Any

from agentguard_otel.errors import ConfigError
from agentguard_otel.money import NANO_PER_USD, usd_to_nano
from agentguard_otel.pricing.bundled import genai_provider
from agentguard_otel.pricing.prices import ModelPrice

SORT_KEYS = ("input", "output")
COLUMNS = ("model", "input", "output", "cache read", "context", "source", "billed per")
_UNPRICED_TOKENS = 2**63
"""Sort position of a model billed by characters or audio time alone: after every token price."""


def usd_per_mtok(nano: int) -> Decimal:
    """A nano-USD rate as its exact USD decimal (nine decimals at most: the division is exact)."""
    return (Decimal(nano) / NANO_PER_USD).normalize()


def usd_text(nano: int) -> str:
    """The exact USD decimal as text, without exponent or trailing zeros (``0.05``, ``10``)."""
    return f"${usd_per_mtok(nano):f}"


def parse_usd_per_mtok(text: str, flag: str) -> int:
    """A USD-per-MTok ceiling as written on the command line, as the nano-USD rate it admits up to."""
    try:
        amount = Decimal(text.strip())
    except InvalidOperation:
        raise ConfigError(f"{flag} takes a USD amount per million tokens such as 0.2, got {text!r}") from None
    if not amount.is_finite() or amount < 0:
        raise ConfigError(f"{flag} must be a finite, non-negative USD amount, got {text!r}")
    return usd_to_nano(amount, rounding=ROUND_FLOOR)


def token_rates(price: ModelPrice) -> tuple[int, int] | None:
    """Input and output rates, or ``None`` for a model billed by characters or audio time alone
    (text-to-speech, transcription): its zero token rates are no price to compare or show."""
    if price.input == 0 and price.output == 0 and (price.per_mchars or price.per_audio_hour):
        return None
    return price.input, price.output


def model_id(price: ModelPrice) -> str:
    """``provider/model``, the form a policy's ``models.allow`` globs and the wizard take."""
    return f"{price.provider}/{price.model}"


@dataclass(frozen=True)
class Selection:
    """Which catalog rows to show: every given condition must hold."""

    provider: str | None = None
    search: str | None = None
    max_input_nano: int | None = None
    max_output_nano: int | None = None
    sort: str = "input"

    def select(self, prices: Iterable[ModelPrice]) -> list[ModelPrice]:
        """The matching prices, cheapest first (by input then output rate, or the other way round)."""
        rows = list(prices)
        if self.provider is not None:
            wanted = canonical_provider(self.provider)
            known = sorted({price.provider for price in rows})
            if wanted not in known:
                raise ConfigError(f"--provider {self.provider!r} prices no model here; "
                                  f"providers: {', '.join(known)}")
            rows = [price for price in rows if price.provider == wanted]
        if self.search is not None:
            needle = self.search.lower()
            rows = [price for price in rows if needle in model_id(price).lower()]
        if self.max_input_nano is not None:
            rows = [price for price in rows if _under(price, 0, self.max_input_nano)]
        if self.max_output_nano is not None:
            rows = [price for price in rows if _under(price, 1, self.max_output_nano)]
        if self.sort not in SORT_KEYS:
            raise ConfigError(f"--sort takes {' or '.join(SORT_KEYS)}, got {self.sort!r}")
        first = SORT_KEYS.index(self.sort)

        def order(price: ModelPrice) -> tuple[int, int, str, str]:
            rates = token_rates(price) or (_UNPRICED_TOKENS, _UNPRICED_TOKENS)
            return rates[first], rates[1 - first], price.provider, price.model
        return sorted(rows, key=order)


def _under(price: ModelPrice, direction: int, ceiling: int) -> bool:
    rates = token_rates(price)
    return rates is not None and rates[direction] <= ceiling


def canonical_provider(name: str) -> str:
    """A provider as the price book names it (``bedrock`` -> ``aws``); unknown names as written."""
    source = genai_provider(name)
    return source.id if source is not None else name.strip().lower()


def _number(nano: int | None) -> int | float | None:
    """A USD rate as a JSON number whose text is its exact decimal: an integer, or a double (a rate
    has at most 15 significant digits, which a double's shortest repr reproduces)."""
    if nano is None:
        return None
    usd = usd_per_mtok(nano)
    return int(usd) if usd == usd.to_integral_value() else float(usd)


def as_json(price: ModelPrice) -> dict[str, Any]:
    """One catalog row for scripts; token rates are null for a model billed by characters or audio
    time alone, whose ``usd_per_mchars`` / ``usd_per_audio_hour`` say what it costs."""
    rates = token_rates(price)
    return {
        "id": model_id(price),
        "provider": price.provider,
        "input_usd_per_mtok": None if rates is None else _number(rates[0]),
        "output_usd_per_mtok": None if rates is None else _number(rates[1]),
        "cache_read_usd_per_mtok": _number(price.cache_read),
        "context_window": price.context_window,
        "source": price.source,
        "usd_per_mchars": _number(price.per_mchars or None),
        "usd_per_audio_hour": _number(price.per_audio_hour or None),
    }


def _shown(text: str) -> str:
    """Model ids come from files (an imported catalog, overrides): control characters are escaped."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def price_cells(price: ModelPrice) -> tuple[str, ...]:
    """A row as text: id, input, output, cache read (USD per MTok), context window, source, and
    the rates of a model billed per character or audio hour."""
    rates = token_rates(price)
    cache = "-" if price.cache_read is None else usd_text(price.cache_read)
    window = "-" if price.context_window is None else f"{price.context_window:,}"
    units = [f"{usd_text(rate)} {unit}" for rate, unit in ((price.per_mchars, "per 1M chars"),
                                                          (price.per_audio_hour, "per audio hour")) if rate]
    shown = ("-", "-") if rates is None else (usd_text(rates[0]), usd_text(rates[1]))
    return (_shown(model_id(price)), *shown, cache, window, price.source, ", ".join(units))


def table(prices: Iterable[ModelPrice]) -> str:
    """An aligned table: ids left-aligned, figures right-aligned, prices in USD per million tokens."""
    rows = [price_cells(price) for price in prices]
    if not rows:
        return "no priced model matches"
    cells = [COLUMNS, *rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = []
    for row in cells:
        parts = [row[0].ljust(widths[0]), *(row[i].rjust(widths[i]) for i in range(1, 5)),
                 row[5].ljust(widths[5]), row[6]]
        lines.append("  ".join(parts).rstrip())
    return "\n".join([*lines, f"{len(rows)} model(s); prices in USD per million tokens"])
