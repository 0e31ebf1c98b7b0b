"""Counter states as people read them (``agentguard spend``, the demo)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from agentguard_otel.ledger.base import CounterState, Ledger, counter_state, window_id
from agentguard_otel.money import format_usd


def printable(text: str) -> str:
    """Text that came from a caller (a scope value in a counter key), safe for a terminal: control
    characters (newlines, ANSI escapes) are shown escaped instead of acting."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def counter_states(ledger: Ledger, key_prefix: str = "") -> list[tuple[CounterState, str]]:
    """Every counter's current-window totals with its state (see :func:`counter_state`), as its
    marks in the ledger say."""
    marks = ledger.marks(key_prefix)
    now = time.time()
    return [(s, counter_state(marks.get((s.key, window_id(s.window_start, s.window, s.limit_nano, now)), ())))
            for s in ledger.states(key_prefix)]


def spend_table(states: Sequence[tuple[CounterState, str]]) -> str:
    """Current-window totals and state per counter, as a text table."""
    rows = [("counter", "window start", "spent", "held", "limit", "used", "state")]
    for s, state in states:
        used = (s.spent_nano + s.held_nano) / s.limit_nano if s.limit_nano else 0.0
        start = s.window_start.isoformat(timespec="minutes") if s.window_start else "rolling"
        rows.append((printable(s.key), start, format_usd(s.spent_nano), format_usd(s.held_nano),
                     format_usd(s.limit_nano), f"{used:.0%}", state))
    if len(rows) == 1:
        return "no spend recorded in the current windows"
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)
