"""Ledger data types, the abstract contract and the window math every backend shares.

Every backend (memory, SQLite, and later Redis, which reads the server's clock) places a counter
in its window through :func:`window_slot` with an explicit ``now``, so all of them agree on where
a window starts and ends.
"""

from __future__ import annotations

import functools
import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import TracebackType
from typing import Literal, TypeVar, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

WindowName = Literal["minute", "hour", "day", "week", "month"]
WINDOWS: frozenset[str] = frozenset(get_args(WindowName))

#: Length of a rolling window in seconds. A rolling "month" is 30 days: calendar months differ in
#: length, and a sliding window needs one fixed length.
ROLLING_SECONDS: dict[str, int] = {
    "minute": 60,
    "hour": 3600,
    "day": 86_400,
    "week": 7 * 86_400,
    "month": 30 * 86_400,
}

#: Stored ``window_start`` of a rolling counter. A rolling counter has a single row; its ``spent``
#: is the running total of its time-stamped spend events, less those that slid out of the window.
ROLLING_START = -1

#: An expired hold is kept this long so that a late settlement still records its spend.
HOLD_RETENTION_SECONDS = 86_400.0

#: A settlement made adjustable is kept this long for :meth:`Ledger.adjust` (a deferred result
#: fetched later than that is no longer corrected).
ADJUSTABLE_SECONDS = 7 * 86_400.0

#: How often a backend drops dead holds, finished windows and slid-out spend events.
GC_INTERVAL_SECONDS = 60.0

_LedgerT = TypeVar("_LedgerT", bound="Ledger")

Clock = Callable[[], float]
"""Seconds since the epoch (``time.time`` by default: windows are wall-clock windows); injectable
so tests can cross window boundaries and expire holds."""


@functools.lru_cache(maxsize=64)
def zone(name: str) -> ZoneInfo:
    """The time zone called ``name``; a ValueError (not a KeyError) when there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


def check_nano(value: int, what: str) -> None:
    """Money is a non-negative int of nano-USD; a float or bool here is a bug upstream."""
    if type(value) is not int:
        raise TypeError(f"{what} must be an int of nano-USD, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{what} must not be negative, got {value}")


def check_ttl(ttl_seconds: float) -> None:
    """A hold that expires at once (or never) would defeat the expiry that frees crashed holds."""
    if not ttl_seconds > 0 or ttl_seconds == float("inf"):
        raise ValueError(f"ttl_seconds must be a positive finite number, got {ttl_seconds!r}")


@dataclass(frozen=True)
class CounterSpec:
    """One (scope, cap) counter a call is checked and held against."""

    key: str
    limit_nano: int
    window: WindowName
    rolling: bool = False
    timezone: str = "UTC"
    enforce: bool = True

    def __post_init__(self) -> None:
        check_nano(self.limit_nano, "limit_nano")
        if self.window not in WINDOWS:
            raise ValueError(f"window must be one of {sorted(WINDOWS)}, got {self.window!r}")
        zone(self.timezone)


@dataclass(frozen=True)
class CounterState:
    """A counter's totals in its current window (``window_start`` is None for rolling windows)."""

    key: str
    window_start: datetime | None
    spent_nano: int
    held_nano: int
    limit_nano: int
    # The cap's window name, filled by states() (a console shows it); not part of a state's value.
    window: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Reservation:
    """Outcome of :meth:`Ledger.reserve`."""

    admitted: bool
    hold_id: str | None
    exceeded: tuple[CounterSpec, ...]
    states: tuple[CounterState, ...]


@dataclass(frozen=True)
class Slot:
    """Where ``now`` falls for one counter.

    ``start`` is the stored identity of the window: the epoch second a calendar window starts at,
    or :data:`ROLLING_START`. ``since`` is set for rolling windows only: spend events stamped
    after it (``since < ts``) count, i.e. the window is ``(now - length, now]``.
    """

    start: int
    since: float | None


@functools.lru_cache(maxsize=1024)
def _calendar_start(window: str, timezone: str, now_second: int) -> int:
    local = datetime.fromtimestamp(now_second, zone(timezone))
    if window == "minute":
        start = local.replace(second=0)
    elif window == "hour":
        # replace() keeps ``fold``, so the repeated hour of a DST fall-back is its own window.
        start = local.replace(minute=0, second=0)
    else:
        # Fresh datetimes have fold=0: a local midnight that happens twice starts at its first
        # occurrence, and one skipped by a DST gap maps to the instant the gap ends.
        day = local.date()
        if window == "week":
            day -= timedelta(days=day.weekday())
        elif window == "month":
            day = day.replace(day=1)
        start = datetime(day.year, day.month, day.day, tzinfo=local.tzinfo)
    return int(start.timestamp())


def window_slot(window: str, timezone: str, rolling: bool, now: float) -> Slot:
    """The window of a counter at time ``now`` (seconds since the epoch).

    Calendar windows align to the wall clock of ``timezone``: minute, hour, day (local midnight),
    week (Monday 00:00) and month (the 1st, 00:00), DST-correct. Rolling windows slide over the
    last :data:`ROLLING_SECONDS` of their name.
    """
    if rolling:
        return Slot(ROLLING_START, rolling_cutoff(window, now))
    # Windows start on whole seconds (zone offsets are whole seconds), so the float's fraction
    # never moves a boundary; caching per second makes the hot path a dict lookup.
    return Slot(_calendar_start(window, timezone, int(now // 1)), None)


def rolling_cutoff(window: str, now: float) -> float:
    """Spend events of a rolling window count when stamped after this instant."""
    return now - ROLLING_SECONDS[window]


@functools.lru_cache(maxsize=1024)
def window_start_datetime(start: int, timezone: str) -> datetime | None:
    """The stored window identity as shown to users: an aware datetime, or None when rolling."""
    if start == ROLLING_START:
        return None
    return datetime.fromtimestamp(start, zone(timezone))


def check_counters(counters: Sequence[CounterSpec]) -> tuple[CounterSpec, ...]:
    """A key listed twice would be held twice in one reservation."""
    specs = tuple(counters)
    if len({spec.key for spec in specs}) != len(specs):
        raise ValueError("a reservation lists the same counter key twice")
    return specs


def assess(specs: Sequence[CounterSpec], slots: Sequence[Slot], totals: Sequence[tuple[int, int]],
           amount_nano: int, hold_id: Callable[[], str]) -> Reservation:
    """Decide a reservation from each counter's (spent, held) before it.

    Admitted only if no enforced counter would pass its limit; a limit reached exactly is
    admitted. ``hold_id`` is called only on admission, so a denial never names a hold.
    """
    exceeded = tuple(spec for spec, (spent, held) in zip(specs, totals, strict=True)
                     if spec.enforce and spent + held + amount_nano > spec.limit_nano)
    admitted = not exceeded
    added = amount_nano if admitted else 0
    states = tuple(
        CounterState(spec.key, window_start_datetime(slot.start, spec.timezone), spent, held + added,
                     spec.limit_nano)
        for spec, slot, (spent, held) in zip(specs, slots, totals, strict=True))
    return Reservation(admitted, hold_id() if admitted else None, exceeded, states)


STATES = ("active", "warned", "degraded", "stopped")  # a counter's states, in increasing severity
TRIPPED = {"downgrade": "tripped:downgrade", "block": "tripped:block"}  # mark labels of a tripped cap


def counter_state(labels: Iterable[str]) -> str:
    """The state a counter's marks in its current window put it in: ``active`` < ``warned`` (an
    ``alert_at`` threshold reached) < ``degraded`` (a downgrade cap tripped) < ``stopped`` (a block
    cap tripped)."""
    marks = set(labels)
    if TRIPPED["block"] in marks:
        return "stopped"
    if TRIPPED["downgrade"] in marks:
        return "degraded"
    if any(not label.startswith("tripped:") for label in marks):
        return "warned"
    return "active"


def window_id(window_start: datetime | None, window: str | None, limit_nano: int, now: float) -> str:
    """The identity of a counter's current window for marks, with the limit in force (a limit
    raised mid-window watches its thresholds afresh): the window's start for a calendar window; for
    a rolling one, which never starts, the period of its length since the epoch that ``now`` falls
    in (a threshold fires at most once per such period, on the guard host's clock)."""
    if window_start is not None:
        start = window_start.isoformat()  # the offset tells the two hours of a DST fall-back apart
    else:
        length = ROLLING_SECONDS.get(window or "", 0)
        start = f"rolling:{int(now // length) * length}" if length else "rolling"
    return f"{start}/{limit_nano}"


def mark_ttl(window: str | None) -> float:
    """How long a mark is kept: past the end of the window it was made in (twice the longest window
    of its kind, whatever the mark's instant in it), with a margin for host clocks."""
    return 2.0 * ROLLING_SECONDS.get(window or "", ROLLING_SECONDS["month"]) + 3600.0


def new_hold_id() -> str:
    """128 random bits as 32 hex digits, so holds from many processes and hosts never collide
    (what ``uuid4().hex`` gives, without building a UUID object on the hot path)."""
    return secrets.token_hex(16)


class Ledger(ABC):
    """Reservation ledger: holds the price bound of a call against every cap it falls under.

    Settling or releasing an unknown, already settled or released hold does nothing and returns
    ``()``. An expired hold stops counting as held, but settling it later still records the spend
    in the window the hold was made in (expired holds are kept :data:`HOLD_RETENTION_SECONDS`).
    On a rolling counter the spend is stamped at settlement, when the cost becomes known, and
    counts while that instant lies in ``(now - length, now]``.
    """

    # True when every operation is a network round trip: async callers then run ledger work in a
    # worker thread instead of stalling their event loop.
    remote: bool = False

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the counters live, for people: an absolute file path, a server, or "this process"."""

    @abstractmethod
    def reserve(self, counters: Sequence[CounterSpec], amount_nano: int, ttl_seconds: float) -> Reservation:
        """Check and hold ``amount_nano`` on every counter in one atomic step."""

    @abstractmethod
    def settle(self, hold_id: str, actual_nano: int, *, adjustable: bool = False) -> tuple[CounterState, ...]:
        """Replace the hold by the actual cost (which may exceed it). ``adjustable``: remember
        what was settled where (for :data:`ADJUSTABLE_SECONDS`) so :meth:`adjust` can correct it."""

    @abstractmethod
    def adjust(self, hold_id: str, actual_nano: int) -> tuple[CounterState, ...]:
        """Correct an adjustable settlement to ``actual_nano`` in the windows it was settled in (a
        rolling window: at the instant it was settled). Once only; ``()`` for a hold that was not
        settled adjustably, was adjusted already, or is past :data:`ADJUSTABLE_SECONDS`. A window
        that has since ended keeps its total: the correction no longer matters to any cap."""

    @abstractmethod
    def release(self, hold_id: str) -> None:
        """Drop the hold and spend nothing."""

    @abstractmethod
    def renew(self, hold_id: str, ttl_seconds: float) -> None:
        """Keep a live hold alive until ``ttl_seconds`` from now; an expired hold stays expired."""

    @abstractmethod
    def states(self, key_prefix: str = "") -> list[CounterState]:
        """Current-window totals of every counter whose key starts with ``key_prefix``, by key."""

    @abstractmethod
    def mark(self, key: str, window: str, label: str, ttl_seconds: float) -> bool:
        """Record that ``label`` happened to counter ``key`` in ``window`` (see :func:`window_id`);
        True for the one caller, across every process sharing the ledger, that recorded it first.
        A mark is forgotten after ``ttl_seconds`` (chosen to outlive its window)."""

    @abstractmethod
    def marks(self, key_prefix: str = "") -> dict[tuple[str, str], frozenset[str]]:
        """The live marks of every counter whose key starts with ``key_prefix``, by (key, window)."""

    @abstractmethod
    def close(self) -> None:
        """Free connections; the ledger must not be used afterwards."""

    def __enter__(self: _LedgerT) -> _LedgerT:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
