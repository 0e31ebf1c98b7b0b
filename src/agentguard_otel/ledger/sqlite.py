"""SQLite ledger (``sqlite:///PATH``): the embedded default, safe across the threads and processes
of one host.

Every operation is one ``BEGIN IMMEDIATE`` transaction, which takes the database's write lock
before reading, so two reservations can never both see the same headroom. WAL lets readers run
beside the writer; ``synchronous=NORMAL`` skips the per-commit fsync (WAL stays consistent; a
power cut may lose the last commits, a process crash loses nothing). Each thread of each process
gets its own connection: SQLite connections must not cross a ``fork()``.

The hot path is a few statements that touch few pages (each written page costs a WAL frame at
commit): one multi-row select of the counters, then, if admitted, one multi-row upsert and one
insert of the hold. Statements avoid ``RETURNING``, which costs several times a plain statement.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from agentguard_otel.errors import LedgerUnavailable
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

SCHEMA_VERSION = 2  # 2: settled_holds (version 1 files gain the table on open)

# Money columns are INTEGER nano-USD; times are REAL seconds since the epoch.
# - counters: one row per (key, window_start); ``held`` is the sum of the live holds on it. A
#   rolling counter has one row (window_start = ROLLING_START) whose ``spent`` is the total of its
#   ``spend_events``, which are pruned as they slide out of the window.
# - holds: live holds only, with their counters as JSON [[key, window_start], ...] in reservation
#   order. Few rows (one per call in flight), so the expiry sweep scans it without an index.
# - expired_holds: holds that expired unsettled; kept HOLD_RETENTION_SECONDS for late settlement.
# - settled_holds: settlements made adjustable (deferred results), kept ADJUSTABLE_SECONDS.
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS counters (
        key TEXT NOT NULL,
        window_start INTEGER NOT NULL,
        spent INTEGER NOT NULL DEFAULT 0,
        held INTEGER NOT NULL DEFAULT 0,
        limit_nano INTEGER NOT NULL,
        window TEXT NOT NULL,
        timezone TEXT NOT NULL,
        touched REAL NOT NULL,
        PRIMARY KEY (key, window_start)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS holds (
        hold_id TEXT PRIMARY KEY,
        amount INTEGER NOT NULL,
        expires_at REAL NOT NULL,
        counters TEXT NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS expired_holds (
        hold_id TEXT PRIMARY KEY,
        expires_at REAL NOT NULL,
        counters TEXT NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS spend_events (
        key TEXT NOT NULL,
        ts REAL NOT NULL,
        amount INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS spend_events_key_ts ON spend_events (key, ts)",
    """CREATE TABLE IF NOT EXISTS settled_holds (
        hold_id TEXT PRIMARY KEY,
        amount INTEGER NOT NULL,
        settled_at REAL NOT NULL,
        counters TEXT NOT NULL
    ) WITHOUT ROWID""",
)
# Added without a schema version: a process of an older release sharing the file keeps working (it
# ignores the table), so every connection creates it if it is missing.
_MARKS_TABLE = """CREATE TABLE IF NOT EXISTS marks (
        key TEXT NOT NULL,
        window TEXT NOT NULL,
        label TEXT NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (key, window, label)
    ) WITHOUT ROWID"""

_CounterId = tuple[str, int]


@functools.lru_cache(maxsize=32)
def _matching(count: int) -> str:
    """A WHERE clause for a list of counters, spelled as ORs so each is a primary-key lookup (a
    row-value ``IN (VALUES ...)`` makes SQLite scan the table). Used for reads only: an UPDATE
    with this clause is slower than one primary-key UPDATE per counter."""
    return " OR ".join(["(key = ? AND window_start = ?)"] * count)


@functools.lru_cache(maxsize=32)
def _select_counters(count: int) -> str:
    return (f"SELECT key, window_start, spent, held, limit_nano, timezone FROM counters "
            f"WHERE {_matching(count)}")


@functools.lru_cache(maxsize=32)
def _hold_on_counters(count: int) -> str:
    """Create or update every counter of an admitted call and add the hold to each."""
    return f"""
        INSERT INTO counters (key, window_start, held, limit_nano, window, timezone, touched)
        VALUES {", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * count)}
        ON CONFLICT (key, window_start) DO UPDATE SET
            held = held + excluded.held, limit_nano = excluded.limit_nano, window = excluded.window,
            timezone = excluded.timezone, touched = excluded.touched"""


_UPDATE_COUNTER = "UPDATE counters SET spent = spent + ?, held = held - ? WHERE key = ? AND window_start = ?"


def _flat(placed: Sequence[_CounterId]) -> list[str | int]:
    return [value for counter in placed for value in counter]


_ADD_HOLD = "INSERT INTO holds (hold_id, amount, expires_at, counters) VALUES (?, ?, ?, ?)"
_EXPIRED = "SELECT hold_id, amount, expires_at, counters FROM holds WHERE expires_at <= ?"
_KEEP_EXPIRED_HOLD = "INSERT INTO expired_holds (hold_id, expires_at, counters) VALUES (?, ?, ?)"
_SLID_OUT = "SELECT COALESCE(SUM(amount), 0) FROM spend_events WHERE key = ? AND ts <= ?"
# A calendar window has ended once a newer window of its key exists.
_ENDED_WINDOWS = """
    SELECT key, window_start FROM counters AS c WHERE c.window_start <> ? AND c.held = 0
    AND c.window_start < (SELECT MAX(n.window_start) FROM counters AS n WHERE n.key = c.key)"""


def _take_hold(conn: sqlite3.Connection, hold_id: str) -> tuple[int, list[_CounterId]] | None:
    """Delete a hold. Returns the amount still held on its counters (0 once it expired) and
    its counters in reservation order, or None for an unknown hold."""
    for table, held in (("holds", "amount"), ("expired_holds", "0")):
        hold = conn.execute(f"SELECT {held}, counters FROM {table} WHERE hold_id = ?",
                            (hold_id,)).fetchone()
        if hold is not None:
            conn.execute(f"DELETE FROM {table} WHERE hold_id = ?", (hold_id,))
            return hold[0], [(key, start) for key, start in json.loads(hold[1])]
    return None


def _spend_on(conn: sqlite3.Connection, placed: Sequence[_CounterId], amount: int, held_part: int,
              stamped: float, now: float) -> tuple[CounterState, ...]:
    """Add ``amount`` (negative for a correction down) to each counter and take ``held_part`` off
    it; on a rolling counter the spend is an event stamped ``stamped`` (when its cost became known),
    and a correction of spend that has slid out of the window already changes nothing."""
    updates = []
    for key, start in placed:
        add = amount
        if start == ROLLING_START:
            (window,) = conn.execute("SELECT window FROM counters WHERE key = ? AND window_start = ?",
                                     (key, ROLLING_START)).fetchone()
            cutoff = rolling_cutoff(window, now)
            _prune_rolling(conn, key, cutoff)
            if stamped <= cutoff:
                add = 0
            else:
                conn.execute("INSERT INTO spend_events (key, ts, amount) VALUES (?, ?, ?)", (key, stamped, add))
        updates.append((add, held_part, key, start))
    conn.executemany(_UPDATE_COUNTER, updates)
    after = {(key, start): CounterState(key, window_start_datetime(start, tz), spent, held, limit)
             for key, start, spent, held, limit, tz in conn.execute(_select_counters(len(placed)), _flat(placed))}
    return tuple(after[counter] for counter in placed)


def _prune_rolling(conn: sqlite3.Connection, key: str, since: float) -> None:
    """Drop the spend events that slid out of a rolling window and take them off its total."""
    (slid_out,) = conn.execute(_SLID_OUT, (key, since)).fetchone()
    if slid_out:
        conn.execute("DELETE FROM spend_events WHERE key = ? AND ts <= ?", (key, since))
        conn.execute("UPDATE counters SET spent = spent - ? WHERE key = ? AND window_start = ?",
                     (slid_out, key, ROLLING_START))


# Connections inherited through fork() are parked here: closing them in the child could unlock
# or checkpoint the parent's database, so they are neither used nor closed.
_INHERITED: list[sqlite3.Connection] = []


class _Connection:
    """Owns one sqlite3 connection; closes it when its thread (the only holder) goes away."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.pid = os.getpid()

    def __del__(self) -> None:
        if self.pid == os.getpid():
            self.conn.close()
        else:
            _INHERITED.append(self.conn)


@dataclass(frozen=True)
class _Tx:
    """An open transaction: its connection and the time it runs at."""

    conn: sqlite3.Connection
    now: float


class SQLiteLedger(Ledger):
    """Ledger in one SQLite file; every call is a single short write transaction."""

    def __init__(self, path: str | os.PathLike[str], *, clock: Clock = time.time,
                 busy_timeout_seconds: float = 30.0) -> None:
        self._path = Path(path)
        self._clock = clock
        self._busy_timeout = busy_timeout_seconds
        self._local = threading.local()
        self._open: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._open_lock = threading.Lock()
        self._next_gc = 0.0
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LedgerUnavailable(f"cannot create the directory of {self._path}: {exc}") from exc
        self._connection()

    @property
    def path(self) -> Path:
        return self._path

    @property
    def location(self) -> str:
        return f"sqlite:///{self._path.resolve()}"

    def reserve(self, counters: Sequence[CounterSpec], amount_nano: int, ttl_seconds: float) -> Reservation:
        specs = check_counters(counters)
        check_nano(amount_nano, "amount_nano")
        check_ttl(ttl_seconds)
        with self._transaction() as tx:
            slots = [window_slot(spec.window, spec.timezone, spec.rolling, tx.now) for spec in specs]
            placed = [(spec.key, slot.start) for spec, slot in zip(specs, slots, strict=True)]
            for spec, slot in zip(specs, slots, strict=True):
                if slot.since is not None:
                    _prune_rolling(tx.conn, spec.key, slot.since)
            found: dict[_CounterId, tuple[int, int]] = {}
            if specs:
                found = {(key, start): (spent, held) for key, start, spent, held, _limit, _tz in
                         tx.conn.execute(_select_counters(len(placed)), _flat(placed))}
            totals = [found.get(counter, (0, 0)) for counter in placed]
            reservation = assess(specs, slots, totals, amount_nano, new_hold_id)
            if reservation.hold_id is not None:
                if specs:
                    tx.conn.execute(_hold_on_counters(len(specs)), [
                        value for spec, slot in zip(specs, slots, strict=True)
                        for value in (spec.key, slot.start, amount_nano, spec.limit_nano, spec.window,
                                      spec.timezone, tx.now)])
                tx.conn.execute(_ADD_HOLD, (reservation.hold_id, amount_nano, tx.now + ttl_seconds,
                                            json.dumps(placed)))
            return reservation

    def settle(self, hold_id: str, actual_nano: int, *, adjustable: bool = False) -> tuple[CounterState, ...]:
        check_nano(actual_nano, "actual_nano")
        with self._transaction(expire=False) as tx:
            taken = _take_hold(tx.conn, hold_id)
            if taken is None:
                return ()
            held_part, placed = taken
            if not placed:
                return ()
            if adjustable:
                tx.conn.execute("INSERT OR REPLACE INTO settled_holds VALUES (?, ?, ?, ?)",
                                (hold_id, actual_nano, tx.now, json.dumps(placed)))
            return _spend_on(tx.conn, placed, actual_nano, held_part, tx.now, tx.now)

    def adjust(self, hold_id: str, actual_nano: int) -> tuple[CounterState, ...]:
        check_nano(actual_nano, "actual_nano")
        with self._transaction() as tx:
            row = tx.conn.execute("SELECT amount, settled_at, counters FROM settled_holds WHERE hold_id = ?",
                                  (hold_id,)).fetchone()
            if row is None:
                return ()
            tx.conn.execute("DELETE FROM settled_holds WHERE hold_id = ?", (hold_id,))
            amount, settled_at, counters = row
            if settled_at <= tx.now - ADJUSTABLE_SECONDS:
                return ()
            placed = [(key, start) for key, start in json.loads(counters)]
            present = {(key, start) for key, start, *_ in tx.conn.execute(_select_counters(len(placed)),
                                                                         _flat(placed))} if placed else set()
            live = [c for c in placed if c in present]
            return _spend_on(tx.conn, live, actual_nano - amount, 0, settled_at, tx.now) if live else ()

    def release(self, hold_id: str) -> None:
        with self._transaction(expire=False) as tx:
            taken = _take_hold(tx.conn, hold_id)
            if taken is None:
                return
            held_part, placed = taken
            if held_part and placed:
                tx.conn.executemany(_UPDATE_COUNTER, [(0, held_part, *counter) for counter in placed])

    def renew(self, hold_id: str, ttl_seconds: float) -> None:
        check_ttl(ttl_seconds)
        with self._transaction() as tx:
            tx.conn.execute("UPDATE holds SET expires_at = ? WHERE hold_id = ?",
                            (tx.now + ttl_seconds, hold_id))

    def states(self, key_prefix: str = "") -> list[CounterState]:
        with self._transaction() as tx:
            # SQLite takes the bare columns of a MAX() aggregate from the row holding the maximum:
            # the row last reserved against says the key's current window, zone and limit.
            latest = tx.conn.execute(
                """SELECT key, MAX(touched), window_start, window, timezone, limit_nano FROM counters
                   WHERE substr(key, 1, ?) = ? GROUP BY key ORDER BY key""",
                (len(key_prefix), key_prefix)).fetchall()
            states: list[CounterState] = []
            for key, _touched, start, window, timezone, limit in latest:
                slot = window_slot(window, timezone, start == ROLLING_START, tx.now)
                if slot.since is not None:
                    _prune_rolling(tx.conn, key, slot.since)
                row = tx.conn.execute("SELECT spent, held FROM counters WHERE key = ? AND window_start = ?",
                                      (key, slot.start)).fetchone()
                spent, held = row if row is not None else (0, 0)
                states.append(CounterState(key, window_start_datetime(slot.start, timezone), spent, held,
                                           limit, window))
            return states

    def mark(self, key: str, window: str, label: str, ttl_seconds: float) -> bool:
        check_ttl(ttl_seconds)
        with self._transaction(expire=False) as tx:
            tx.conn.execute("DELETE FROM marks WHERE key = ? AND window = ? AND label = ? AND expires_at <= ?",
                            (key, window, label, tx.now))
            cursor = tx.conn.execute("INSERT OR IGNORE INTO marks VALUES (?, ?, ?, ?)",
                                     (key, window, label, tx.now + ttl_seconds))
            return cursor.rowcount == 1

    def marks(self, key_prefix: str = "") -> dict[tuple[str, str], frozenset[str]]:
        with self._transaction() as tx:
            rows = tx.conn.execute(
                "SELECT key, window, label FROM marks WHERE substr(key, 1, ?) = ? AND expires_at > ?",
                (len(key_prefix), key_prefix, tx.now)).fetchall()
        found: dict[tuple[str, str], set[str]] = {}
        for key, window, label in rows:
            found.setdefault((key, window), set()).add(label)
        return {where: frozenset(labels) for where, labels in found.items()}

    def close(self) -> None:
        with self._open_lock:
            owned = [handle for handle in self._open if handle.pid == os.getpid()]
            self._open.clear()
        for handle in owned:
            handle.conn.close()
        self._local = threading.local()

    @contextmanager
    def _transaction(self, *, expire: bool = True) -> Iterator[_Tx]:
        """One immediate transaction. ``now`` is read once the write lock is held, so it is never
        older than the state it is compared with; holds expired by then are taken off first, unless
        the outcome does not depend on them (``expire=False``: settling or releasing one hold, or
        marking, ends the same with or without the sweep, which the next reservation or read makes)."""
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                tx = _Tx(conn, self._clock())
                if expire:
                    self._expire(tx)
                yield tx
            except BaseException:
                if conn.in_transaction:  # some errors (e.g. a full disk) already rolled back
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise LedgerUnavailable(f"SQLite ledger {self._path}: {exc}") from exc

    def _expire(self, tx: _Tx) -> None:
        for hold_id, amount, expires_at, counters in tx.conn.execute(_EXPIRED, (tx.now,)).fetchall():
            placed = [(key, start) for key, start in json.loads(counters)]
            tx.conn.executemany(_UPDATE_COUNTER, [(0, amount, *counter) for counter in placed])
            tx.conn.execute("DELETE FROM holds WHERE hold_id = ?", (hold_id,))
            tx.conn.execute(_KEEP_EXPIRED_HOLD, (hold_id, expires_at, counters))
        if tx.now >= self._next_gc:
            self._next_gc = tx.now + GC_INTERVAL_SECONDS
            self._collect(tx.conn, tx.now)

    def _collect(self, conn: sqlite3.Connection, now: float) -> None:
        """Drop expired holds past retention, ended calendar windows no hold refers to, and spend
        events that slid out of their rolling window."""
        conn.execute("DELETE FROM expired_holds WHERE expires_at <= ?", (now - HOLD_RETENTION_SECONDS,))
        conn.execute("DELETE FROM settled_holds WHERE settled_at <= ?", (now - ADJUSTABLE_SECONDS,))
        conn.execute("DELETE FROM marks WHERE expires_at <= ?", (now,))
        referenced = {(key, start)
                      for (counters,) in conn.execute("SELECT counters FROM holds UNION ALL "
                                                      "SELECT counters FROM expired_holds").fetchall()
                      for key, start in json.loads(counters)}
        ended = [row for row in conn.execute(_ENDED_WINDOWS, (ROLLING_START,)).fetchall()
                 if tuple(row) not in referenced]
        conn.executemany("DELETE FROM counters WHERE key = ? AND window_start = ?", ended)
        for key, window in conn.execute("SELECT key, window FROM counters WHERE window_start = ?",
                                        (ROLLING_START,)).fetchall():
            _prune_rolling(conn, key, rolling_cutoff(window, now))

    def _connection(self) -> sqlite3.Connection:
        handle: _Connection | None = getattr(self._local, "handle", None)
        if handle is not None and handle.pid == os.getpid():
            return handle.conn
        try:
            conn = sqlite3.connect(self._path, timeout=self._busy_timeout, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as exc:
            raise LedgerUnavailable(f"cannot open SQLite ledger {self._path}: {exc}") from exc
        handle = _Connection(conn)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            self._ensure_schema(conn)
            conn.execute(_MARKS_TABLE)
        except sqlite3.Error as exc:
            raise LedgerUnavailable(f"cannot open SQLite ledger {self._path}: {exc}") from exc
        self._local.handle = handle
        with self._open_lock:
            self._open.add(handle)
        return conn

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        version: int = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise LedgerUnavailable(f"SQLite ledger {self._path} has schema version {version}; "
                                    f"this agentguard-otel understands up to {SCHEMA_VERSION}")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
