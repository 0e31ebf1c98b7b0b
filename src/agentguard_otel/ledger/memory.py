"""In-process ledger (``memory://``): dicts behind one lock. Shared by the threads of one process only."""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from agentguard_otel.ledger.base import (
    ADJUSTABLE_SECONDS,
    GC_INTERVAL_SECONDS,
    HOLD_RETENTION_SECONDS,
    ROLLING_START,
    Clock,
    CounterSpec,
    CounterState,
    Ledger,
    Reservation,
    assess,
    check_counters,
    check_nano,
    check_ttl,
    new_hold_id,
    rolling_cutoff,
    window_slot,
    window_start_datetime,
)

_CounterId = tuple[str, int]


@dataclass
class _Counter:
    spent: int
    held: int
    limit: int
    window: str
    timezone: str
    touched: float


@dataclass
class _Hold:
    amount: int
    expires_at: float
    live: bool  # True while ``amount`` is included in the ``held`` of each of its counters
    counters: tuple[_CounterId, ...]


@dataclass(frozen=True)
class _Settled:
    amount: int
    settled_at: float
    counters: tuple[_CounterId, ...]


class MemoryLedger(Ledger):
    """The reference backend: the same contract as SQLite, without persistence."""

    def __init__(self, *, clock: Clock = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._counters: dict[_CounterId, _Counter] = {}
        self._holds: dict[str, _Hold] = {}
        self._expiry: list[tuple[float, str]] = []  # heap; entries outdated by renew are skipped
        # Spend events of rolling counters, a heap per key; a rolling row's ``spent`` is their total.
        self._spend: dict[str, list[tuple[float, int]]] = {}
        self._adjustable: dict[str, _Settled] = {}
        self._marks: dict[tuple[str, str, str], float] = {}  # (key, window, label) -> expires at
        self._next_gc = 0.0

    def reserve(self, counters: Sequence[CounterSpec], amount_nano: int, ttl_seconds: float) -> Reservation:
        specs = check_counters(counters)
        check_nano(amount_nano, "amount_nano")
        check_ttl(ttl_seconds)
        with self._lock:
            now = self._clock()
            self._expire(now)
            slots = [window_slot(spec.window, spec.timezone, spec.rolling, now) for spec in specs]
            placed = [(spec.key, slot.start) for spec, slot in zip(specs, slots, strict=True)]
            rows = [self._counters.get(counter) for counter in placed]
            for spec, slot, row in zip(specs, slots, rows, strict=True):
                if row is not None and slot.since is not None:
                    self._prune_rolling(spec.key, row, slot.since)
            totals = [(row.spent, row.held) if row is not None else (0, 0) for row in rows]
            reservation = assess(specs, slots, totals, amount_nano, new_hold_id)
            if reservation.hold_id is not None:
                for spec, counter in zip(specs, placed, strict=True):
                    row = self._counters.get(counter)
                    if row is None:
                        row = self._counters[counter] = _Counter(0, 0, spec.limit_nano, spec.window,
                                                                 spec.timezone, now)
                    row.held += amount_nano
                    row.limit, row.window, row.timezone, row.touched = (
                        spec.limit_nano, spec.window, spec.timezone, now)
                expires_at = now + ttl_seconds
                self._holds[reservation.hold_id] = _Hold(amount_nano, expires_at, True, tuple(placed))
                heapq.heappush(self._expiry, (expires_at, reservation.hold_id))
            return reservation

    def settle(self, hold_id: str, actual_nano: int, *, adjustable: bool = False) -> tuple[CounterState, ...]:
        check_nano(actual_nano, "actual_nano")
        with self._lock:
            now = self._clock()
            self._expire(now)
            hold = self._holds.pop(hold_id, None)
            if hold is None:
                return ()
            for key, start in hold.counters:
                if hold.live:
                    self._counters[(key, start)].held -= hold.amount
            if adjustable:
                self._adjustable[hold_id] = _Settled(actual_nano, now, hold.counters)
            return self._spend_on(hold.counters, actual_nano, now, now)

    def adjust(self, hold_id: str, actual_nano: int) -> tuple[CounterState, ...]:
        check_nano(actual_nano, "actual_nano")
        with self._lock:
            now = self._clock()
            self._expire(now)
            settled = self._adjustable.pop(hold_id, None)
            if settled is None or settled.settled_at <= now - ADJUSTABLE_SECONDS:
                return ()
            live = tuple(c for c in settled.counters if c in self._counters)
            return self._spend_on(live, actual_nano - settled.amount, settled.settled_at, now)

    def _spend_on(self, counters: Sequence[_CounterId], amount: int, stamped: float,
                  now: float) -> tuple[CounterState, ...]:
        """Add ``amount`` (negative for a correction down) to each counter; on a rolling one as a
        spend event stamped ``stamped``."""
        states: list[CounterState] = []
        for key, start in counters:
            row = self._counters[(key, start)]
            add = amount
            if start == ROLLING_START:
                cutoff = rolling_cutoff(row.window, now)
                self._prune_rolling(key, row, cutoff)
                if stamped <= cutoff:
                    add = 0  # the spend it corrects has slid out of the window already
                else:
                    heapq.heappush(self._spend.setdefault(key, []), (stamped, add))
            row.spent += add
            states.append(CounterState(key, window_start_datetime(start, row.timezone), row.spent,
                                       row.held, row.limit))
        return tuple(states)

    def release(self, hold_id: str) -> None:
        with self._lock:
            self._expire(self._clock())
            hold = self._holds.pop(hold_id, None)
            if hold is not None and hold.live:
                for counter_id in hold.counters:
                    self._counters[counter_id].held -= hold.amount

    def renew(self, hold_id: str, ttl_seconds: float) -> None:
        check_ttl(ttl_seconds)
        with self._lock:
            now = self._clock()
            hold = self._holds.get(hold_id)
            if hold is not None and hold.live and hold.expires_at > now:
                hold.expires_at = now + ttl_seconds
                heapq.heappush(self._expiry, (hold.expires_at, hold_id))

    def states(self, key_prefix: str = "") -> list[CounterState]:
        with self._lock:
            now = self._clock()
            self._expire(now)
            latest: dict[str, tuple[int, _Counter]] = {}
            for (key, start), row in self._counters.items():
                if key.startswith(key_prefix) and (key not in latest or row.touched > latest[key][1].touched):
                    latest[key] = (start, row)
            states: list[CounterState] = []
            for key in sorted(latest):
                start, row = latest[key]
                slot = window_slot(row.window, row.timezone, start == ROLLING_START, now)
                current = self._counters.get((key, slot.start))
                if current is not None and slot.since is not None:
                    self._prune_rolling(key, current, slot.since)
                spent, held = (current.spent, current.held) if current is not None else (0, 0)
                states.append(CounterState(key, window_start_datetime(slot.start, row.timezone), spent, held,
                                           row.limit, row.window))
            return states

    def mark(self, key: str, window: str, label: str, ttl_seconds: float) -> bool:
        check_ttl(ttl_seconds)
        with self._lock:
            now = self._clock()
            found = (key, window, label)
            if self._marks.get(found, now) > now:
                return False
            # marks are rare (a few per counter and window): forgetting the expired ones here keeps them bounded
            for old in [where for where, expires_at in self._marks.items() if expires_at <= now]:
                del self._marks[old]
            self._marks[found] = now + ttl_seconds
            return True

    def marks(self, key_prefix: str = "") -> dict[tuple[str, str], frozenset[str]]:
        with self._lock:
            now = self._clock()
            found: dict[tuple[str, str], set[str]] = {}
            for (key, window, label), expires_at in list(self._marks.items()):
                if expires_at <= now:
                    del self._marks[(key, window, label)]
                elif key.startswith(key_prefix):
                    found.setdefault((key, window), set()).add(label)
            return {where: frozenset(labels) for where, labels in found.items()}

    @property
    def location(self) -> str:
        return "memory:// (this process only)"

    def close(self) -> None:
        """Nothing to free: the ledger lives and dies with its dicts."""

    def _prune_rolling(self, key: str, row: _Counter, since: float) -> None:
        """Take the spend events that slid out of the window off the rolling counter's total."""
        events = self._spend.get(key)
        while events and events[0][0] <= since:
            row.spent -= heapq.heappop(events)[1]

    def _expire(self, now: float) -> None:
        """Take holds that expired by ``now`` off their counters; collect garbage now and then."""
        while self._expiry and self._expiry[0][0] <= now:
            expires_at, hold_id = heapq.heappop(self._expiry)
            hold = self._holds.get(hold_id)
            if hold is not None and hold.live and hold.expires_at == expires_at:
                hold.live = False
                for counter_id in hold.counters:
                    self._counters[counter_id].held -= hold.amount
        if now >= self._next_gc:
            self._next_gc = now + GC_INTERVAL_SECONDS
            self._collect(now)

    def _collect(self, now: float) -> None:
        """Drop dead holds past retention, calendar windows that ended and are not referenced by
        any hold, and spend events that slid out of their rolling window."""
        for hold_id in [hid for hid, hold in self._holds.items()
                        if not hold.live and hold.expires_at <= now - HOLD_RETENTION_SECONDS]:
            del self._holds[hold_id]
        for hold_id in [hid for hid, done in self._adjustable.items() if done.settled_at <= now - ADJUSTABLE_SECONDS]:
            del self._adjustable[hold_id]
        referenced = {counter_id for hold in self._holds.values() for counter_id in hold.counters}
        newest: dict[str, int] = {}
        for key, start in self._counters:
            newest[key] = max(start, newest.get(key, start))
        for counter_id in [cid for cid, row in self._counters.items()
                           if cid[1] != ROLLING_START and cid[1] < newest[cid[0]] and row.held == 0
                           and cid not in referenced]:
            del self._counters[counter_id]
        for (key, start), row in self._counters.items():
            if start == ROLLING_START:
                self._prune_rolling(key, row, rolling_cutoff(row.window, now))
