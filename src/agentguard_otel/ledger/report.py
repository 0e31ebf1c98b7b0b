"""Counter states as people read them (``agentguard spend``, the demo)."""

from __future__ import annotations

from collections.abc import Sequence

from agentguard_otel.ledger.base import CounterState
from agentguard_otel.money import format_usd


def printable(text: str) -> str:
    """Text that came from a caller (a scope value in a counter key), safe for a terminal: control
    characters (newlines, ANSI escapes) are shown escaped instead of acting."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def spend_table(states: Sequence[CounterState]) -> str:
    """Current-window totals per counter, as a text table."""
    rows = [("counter", "window start", "spent", "held", "limit", "used")]
    for s in states:
        used = (s.spent_nano + s.held_nano) / s.limit_nano if s.limit_nano else 0.0
        start = s.window_start.isoformat(timespec="minutes") if s.window_start else "rolling"
        rows.append((printable(s.key), start, format_usd(s.spent_nano), format_usd(s.held_nano),
                     format_usd(s.limit_nano), f"{used:.0%}"))
    if len(rows) == 1:
        return "no spend recorded in the current windows"
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)
