"""Reservation ledger: holds a call's price bound against every cap it falls under, atomically.

``open_ledger`` turns a ledger URL into a backend: ``memory://`` (one process), ``sqlite:///PATH``
(the embedded default, shared by the processes of one host), ``redis://HOST:PORT/DB`` (or
``rediss://`` with TLS; the distributed ledger of a fleet). The Redis driver is an optional extra,
imported only when a ``redis://`` URL asks for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentguard_otel.errors import ConfigError
from agentguard_otel.ledger.base import CounterSpec, CounterState, Ledger, Reservation, WindowName
from agentguard_otel.ledger.memory import MemoryLedger
from agentguard_otel.ledger.sqlite import SQLiteLedger

if TYPE_CHECKING:
    from agentguard_otel.ledger.redis import RedisLedger

logger = logging.getLogger(__name__)

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


def _open_memory(rest: str, existing: bool) -> Ledger:
    if rest:
        raise ConfigError(f"memory ledger URL takes nothing after 'memory://', got {rest!r}")
    return MemoryLedger()


def _open_sqlite(rest: str, existing: bool) -> Ledger:
    """As in SQLAlchemy: ``sqlite:///relative.db`` is relative to the working directory and
    ``sqlite:////abs/path.db`` is absolute (the path is everything after the third slash)."""
    if not rest.startswith("/") or rest == "/":
        raise ConfigError("SQLite ledger URL needs a file path: sqlite:///relative.db or sqlite:////abs/path.db")
    path = Path(rest[1:])
    if existing and not path.is_file():
        raise ConfigError(f"no SQLite ledger at {path.resolve()} (nothing was created)")
    if not path.is_absolute():
        logger.warning("agentguard: ledger path %s is relative to the working directory (%s): processes started "
                       "elsewhere use another ledger; write sqlite:////absolute/path.db to share one",
                       path, Path.cwd())
    return SQLiteLedger(path)


def _redis_ledger_class() -> type[RedisLedger]:
    try:
        from agentguard_otel.ledger.redis import RedisLedger
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != "redis":
            raise
        raise ConfigError('redis:// ledger needs the Redis driver: pip install "agentguard-otel[redis]"') from exc
    return RedisLedger


def _open_redis(scheme: str) -> Callable[[str, bool], Ledger]:
    return lambda rest, existing: _redis_ledger_class().from_url(f"{scheme}://{rest}")


_OPENERS: dict[str, Callable[[str, bool], Ledger]] = {
    "memory": _open_memory,
    "sqlite": _open_sqlite,
    "redis": _open_redis("redis"),
    "rediss": _open_redis("rediss"),
}


def __getattr__(name: str) -> Any:
    """``RedisLedger`` on first use only, so the package imports without the Redis driver."""
    if name == "RedisLedger":
        return _redis_ledger_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_ledger(url: str, *, existing: bool = False) -> Ledger:
    """The ledger a URL names; ConfigError for a malformed URL or an unsupported scheme. ``existing``:
    for readers, a SQLite file must already exist (a typo must not create an empty ledger)."""
    scheme, sep, rest = url.partition("://")
    opener = _OPENERS.get(scheme.lower()) if sep else None
    if opener is None:
        supported = ", ".join(f"{name}://" for name in _OPENERS)
        raise ConfigError(f"unsupported ledger URL {url!r}: supported schemes are {supported}")
    return opener(rest, existing)
