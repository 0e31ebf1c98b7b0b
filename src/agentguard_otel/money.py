"""Money is integer nano-USD (1e-9 USD). Floats never enter a ledger, a receipt or a comparison."""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal, InvalidOperation

NANO_PER_USD = 1_000_000_000
# The largest amount every ledger backend holds exactly (Redis scripts compute in doubles): about
# $9 million. A limit, a reservation or a settled cost above it is refused or distrusted.
MAX_AMOUNT_NANO = 2**53


def usd_to_nano(value: Decimal | int | str, *, rounding: str = ROUND_CEILING) -> int:
    """Convert a USD amount to nano-USD exactly; fractions of a nano-dollar round up by default.

    Floats are refused: a float has already lost the exact value the user wrote.
    """
    if isinstance(value, (bool, float)):
        raise TypeError(f"USD amounts must be Decimal, int or str, not {type(value).__name__}")
    try:
        amount = Decimal(value)
    except InvalidOperation as exc:
        raise ValueError(f"not a USD amount: {value!r}") from exc
    if not amount.is_finite():
        raise ValueError(f"not a finite USD amount: {value!r}")
    return int((amount * NANO_PER_USD).to_integral_value(rounding=rounding))


def nano_to_usd(nano: int) -> float:
    """For export only (metrics and span attributes may carry USD as a double)."""
    return nano / NANO_PER_USD


def format_usd(nano: int) -> str:
    """Human form with all nine decimals trimmed of trailing zeros, e.g. ``$0.0042``."""
    sign = "-" if nano < 0 else ""
    whole, frac = divmod(abs(nano), NANO_PER_USD)
    frac_text = f"{frac:09d}".rstrip("0")
    if len(frac_text) < 2:
        frac_text = frac_text.ljust(2, "0")
    return f"{sign}${whole}.{frac_text}"


def ceil_div(numerator: int, denominator: int) -> int:
    """Integer ceiling division for non-negative numerators."""
    return -(-numerator // denominator)
