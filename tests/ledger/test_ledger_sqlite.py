"""SQLite specifics: URLs, files, persistence, sharing, errors, fork, garbage collection."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from agentguard_otel.errors import ConfigError, LedgerUnavailable
from agentguard_otel.ledger import CounterSpec, MemoryLedger, SQLiteLedger, open_ledger
from agentguard_otel.ledger.base import HOLD_RETENTION_SECONDS

from .conftest import FakeClock

CAP = CounterSpec("k", 1_000, "day")


def test_open_memory() -> None:
    first, second = open_ledger("memory://"), open_ledger("memory://")
    assert isinstance(first, MemoryLedger) and first is not second


def test_open_sqlite_relative_path_creates_parents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with open_ledger("sqlite:///data/nested/spend.db") as ledger:
        assert isinstance(ledger, SQLiteLedger)
        ledger.reserve([CAP], 1, 60)
    assert (tmp_path / "data" / "nested" / "spend.db").is_file()


def test_open_sqlite_absolute_path(tmp_path: Path) -> None:
    target = tmp_path / "abs" / "spend.db"
    with open_ledger(f"sqlite:///{target}") as ledger:
        assert isinstance(ledger, SQLiteLedger) and ledger.path == target
    assert target.is_file()


@pytest.mark.parametrize("url", ["postgres://db", "spend.db", "sqlite:/x.db", "rediss:/x"])
def test_unsupported_urls_name_the_supported_schemes(url: str) -> None:
    with pytest.raises(ConfigError, match=r"memory://, sqlite://, redis://, rediss://"):
        open_ledger(url)


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "memory://somewhere"])
def test_malformed_urls(url: str) -> None:
    with pytest.raises(ConfigError):
        open_ledger(url)


def test_state_persists_across_instances(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with SQLiteLedger(path) as first:
        settled = first.reserve([CAP], 300, 60).hold_id
        pending = first.reserve([CAP], 200, 600).hold_id
        assert settled is not None and pending is not None
        first.settle(settled, 250)
    with SQLiteLedger(path) as second:
        assert [(s.spent_nano, s.held_nano) for s in second.states()] == [(250, 200)]
        assert second.settle(pending, 100)[0].spent_nano == 350


def test_two_ledgers_on_one_file_share_the_cap(tmp_path: Path) -> None:
    with SQLiteLedger(tmp_path / "l.db") as first, SQLiteLedger(tmp_path / "l.db") as second:
        assert first.reserve([CAP], 700, 60).admitted
        assert not second.reserve([CAP], 301, 60).admitted
        assert second.reserve([CAP], 300, 60).admitted


def test_file_uses_wal(tmp_path: Path) -> None:
    SQLiteLedger(tmp_path / "l.db").close()
    conn = sqlite3.connect(tmp_path / "l.db")
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


def test_not_a_database_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(LedgerUnavailable) as caught:
        SQLiteLedger(path)
    assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)


def test_directory_in_the_way_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(LedgerUnavailable):
        SQLiteLedger(tmp_path / "file" / "ledger.db")


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "l.db")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(LedgerUnavailable, match="schema version 99"):
        SQLiteLedger(tmp_path / "l.db")


def test_locked_database_times_out_as_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    ledger = SQLiteLedger(path, busy_timeout_seconds=0.05)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(LedgerUnavailable, match="locked") as caught:
            ledger.reserve([CAP], 1, 60)
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert ledger.reserve([CAP], 1, 60).admitted
    assert [s.held_nano for s in ledger.states()] == [1]
    ledger.close()


def _reserve_in_child(ledger: SQLiteLedger) -> None:
    hold = ledger.reserve([CAP], 400, 60).hold_id
    assert hold is not None
    ledger.settle(hold, 300)


def test_forked_child_opens_its_own_connection(tmp_path: Path) -> None:
    ledger = SQLiteLedger(tmp_path / "l.db")
    ledger.reserve([CAP], 100, 600)
    child = multiprocessing.get_context("fork").Process(target=_reserve_in_child, args=(ledger,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert [(s.spent_nano, s.held_nano) for s in ledger.states()] == [(300, 100)]
    assert ledger.reserve([CAP], 600, 60).admitted
    ledger.close()


def test_garbage_collection(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    clock = FakeClock(1_700_000_000.0)
    ledger = SQLiteLedger(path, clock=clock)
    minute = CounterSpec("minute", 10**9, "minute")
    rolling = CounterSpec("rolling", 10**9, "minute", rolling=True)
    stuck = ledger.reserve([minute], 5, 30).hold_id  # never settled in time: expires
    assert stuck is not None
    for _ in range(5):
        hold = ledger.reserve([minute, rolling], 1, 30).hold_id
        assert hold is not None
        ledger.settle(hold, 1)
        clock.advance(61)
    ledger.states()

    def rows(sql: str) -> int:
        conn = sqlite3.connect(path)
        try:
            count: int = conn.execute(sql).fetchone()[0]
        finally:
            conn.close()
        return count

    # ended minute windows are gone, except the one the expired hold may still settle into
    assert rows("SELECT COUNT(*) FROM counters WHERE key = 'minute'") == 2
    assert rows("SELECT COUNT(*) FROM expired_holds") == 1
    assert rows("SELECT COUNT(*) FROM spend_events") == 0
    clock.advance(HOLD_RETENTION_SECONDS)
    ledger.states()
    assert rows("SELECT COUNT(*) FROM expired_holds") == 0
    assert rows("SELECT COUNT(*) FROM counters WHERE key = 'minute'") == 1
    assert ledger.settle(stuck, 5) == ()
    ledger.close()
