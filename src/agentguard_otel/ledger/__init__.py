"""Reservation ledger: holds a call's price bound against every cap it falls under, atomically.

``open_ledger`` turns a ledger URL into a backend: ``memory://`` (one process), ``sqlite:///PATH``
(the embedded default, shared by the processes of one host), ``redis://HOST:PORT/DB`` (or
``rediss://`` with TLS; the distributed ledger of a fleet).
"""

from __future__ import annotations

from collections.abc import Callable

from agentguard_otel.errors import ConfigError
from agentguard_otel.ledger.base import CounterSpec, CounterState, Ledger, Reservation, WindowName
from agentguard_otel.ledger.memory import MemoryLedger
from agentguard_otel.ledger.redis import RedisLedger
from agentguard_otel.ledger.sqlite import SQLiteLedger

__all__ = [
    "CounterSpec",
    "CounterState",
    "Ledger",
    "MemoryLedger",
    "RedisLedger",
    "Reservation",
    "SQLiteLedger",
    "WindowName",
    "open_ledger",
]


def _open_memory(rest: str) -> Ledger:
    if rest:
        raise ConfigError(f"memory ledger URL takes nothing after 'memory://', got {rest!r}")
    return MemoryLedger()


def _open_sqlite(rest: str) -> Ledger:
    """As in SQLAlchemy: ``sqlite:///relative.db`` is relative to the working directory and
    ``sqlite:////abs/path.db`` is absolute (the path is everything after the third slash)."""
    if not rest.startswith("/") or rest == "/":
        raise ConfigError("SQLite ledger URL needs a file path: sqlite:///relative.db or sqlite:////abs/path.db")
    return SQLiteLedger(rest[1:])


_OPENERS: dict[str, Callable[[str], Ledger]] = {
    "memory": _open_memory,
    "sqlite": _open_sqlite,
    "redis": lambda rest: RedisLedger.from_url(f"redis://{rest}"),
    "rediss": lambda rest: RedisLedger.from_url(f"rediss://{rest}"),
}


def open_ledger(url: str) -> Ledger:
    """The ledger a URL names; ConfigError for a malformed URL or an unsupported scheme."""
    scheme, sep, rest = url.partition("://")
    opener = _OPENERS.get(scheme.lower()) if sep else None
    if opener is None:
        supported = ", ".join(f"{name}://" for name in _OPENERS)
        raise ConfigError(f"unsupported ledger URL {url!r}: supported schemes are {supported}")
    return opener(rest)
