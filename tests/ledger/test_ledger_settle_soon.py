"""SQLite's queued settlements (``settle_soon``): applied by the next transaction of the process, by
the flusher, at close and at exit; never twice; a forked child leaves its parent's queue alone."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agentguard_otel.errors import LedgerUnavailable
from agentguard_otel.ledger import CounterSpec, CounterState, SQLiteLedger
from agentguard_otel.ledger import sqlite as sqlite_ledger

CAP = CounterSpec("k", 1_000, "day")


@pytest.fixture
def no_flusher(monkeypatch: pytest.MonkeyPatch) -> None:
    """A queued settlement waits for a transaction (the flusher would apply it only after an hour)."""
    monkeypatch.setattr(sqlite_ledger, "FLUSH_SECONDS", 3600.0)


def totals(path: Path) -> list[tuple[int, int]]:
    """(spent, held) as another process reading the file sees them."""
    with SQLiteLedger(path) as reader:
        return [(s.spent_nano, s.held_nano) for s in reader.states()]


def held(ledger: SQLiteLedger, amount: int) -> str:
    hold = ledger.reserve([CAP], amount, 600).hold_id
    assert hold is not None
    return hold


@pytest.mark.usefixtures("no_flusher")
def test_the_next_transaction_applies_the_queue_and_then_reports_it(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    ledger = SQLiteLedger(path)
    told: list[tuple[tuple[CounterState, ...], str]] = []
    ledger.settle_soon(held(ledger, 400), 250, lambda states: told.append((states, threading.current_thread().name)))
    assert told == [] and totals(path) == [(0, 400)]  # until applied, the hold counts in full

    def reserve_elsewhere() -> None:
        assert ledger.reserve([CAP], 100, 600).admitted

    worker = threading.Thread(target=reserve_elsewhere, name="another caller")
    worker.start()
    worker.join()
    assert [([(s.key, s.spent_nano, s.held_nano) for s in states], thread) for states, thread in told] == [
        ([("k", 250, 0)], "another caller")]  # the settlement's own counters, before the reservation
    assert totals(path) == [(250, 100)]
    ledger.close()


@pytest.mark.usefixtures("no_flusher")
def test_a_failed_transaction_puts_its_settlements_back(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    ledger = SQLiteLedger(path, busy_timeout_seconds=0.05)
    told: list[tuple[CounterState, ...]] = []
    ledger.settle_soon(held(ledger, 400), 300, told.append)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(LedgerUnavailable, match="locked"):
            ledger.reserve([CAP], 1, 60)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    with pytest.raises(RuntimeError), ledger._transaction():  # applied, then rolled back with the rest
        raise RuntimeError("the caller's statement failed")
    assert told == [] and totals(path) == [(0, 400)]
    ledger.flush()
    ledger.flush()
    assert [[s.spent_nano for s in states] for states in told] == [[300]] and totals(path) == [(300, 0)]
    ledger.close()


def test_the_flusher_applies_what_no_transaction_took(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_ledger, "FLUSH_SECONDS", 0.01)
    path = tmp_path / "l.db"
    ledger = SQLiteLedger(path)
    applied = threading.Event()
    ledger.settle_soon(held(ledger, 400), 120, lambda states: applied.set())
    assert applied.wait(30), "the flusher never applied the queued settlement"
    assert totals(path) == [(120, 0)]
    ledger.close()


@pytest.mark.usefixtures("no_flusher")
def test_close_applies_the_queue_and_a_settled_hold_settles_once(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    ledger = SQLiteLedger(path)
    hold = held(ledger, 400)
    told: list[tuple[CounterState, ...]] = []
    ledger.settle_soon(hold, 200, told.append)
    ledger.settle_soon(hold, 200, told.append)  # the same hold again: nothing left to settle
    ledger.close()
    assert [[s.spent_nano for s in states] for states in told] == [[200], []]
    assert totals(path) == [(200, 0)]


def _settle_soon_in_child(path: str) -> None:
    ledger = SQLiteLedger(path)
    hold = ledger.reserve([CAP], 400, 600).hold_id
    assert hold is not None
    ledger.settle_soon(hold, 150, lambda states: None)


@pytest.mark.usefixtures("no_flusher")
def test_a_forked_child_leaves_the_queue_to_its_parent(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    ledger = SQLiteLedger(path)
    ledger.settle_soon(held(ledger, 400), 100, lambda states: None)
    pid = os.fork()
    if pid == 0:  # the child's transactions apply nothing of its parent's queue
        code = 1
        try:
            ledger.reserve([CAP], 10, 600)
            ledger.close()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert totals(path) == [(0, 410)]
    ledger.flush()
    assert totals(path) == [(100, 10)]
    ledger.close()


def test_exit_applies_the_queue(tmp_path: Path) -> None:
    """A process that never closes its ledger still applies what it queued when it exits."""
    path = tmp_path / "l.db"
    program = (f"from agentguard_otel.ledger import sqlite\nsqlite.FLUSH_SECONDS = 3600.0\n"
               f"from {__name__} import _settle_soon_in_child\n_settle_soon_in_child({str(path)!r})\n")
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", program], check=True, cwd=root, timeout=120,
                   env={**os.environ, "PYTHONPATH": str(root)})
    assert totals(path) == [(150, 0)]
