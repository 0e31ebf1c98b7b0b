"""No cap is passed by concurrent reservations: threads on every backend, processes on SQLite."""

from __future__ import annotations

import multiprocessing
import random
import sqlite3
from pathlib import Path

import pytest

from agentguard_otel.ledger import Ledger, SQLiteLedger

from ._workers import CAP, MAX_AMOUNT, WATCH, in_threads, process_worker, reserve_phase, settle_phase


def totals(ledger: Ledger, key: str) -> tuple[int, int]:
    (state,) = ledger.states(key)
    return state.spent_nano, state.held_nano


def test_threads_never_pass_the_cap(ledger: Ledger) -> None:
    admitted = reserve_phase(ledger, threads=8, attempts=60, seed=1)
    amounts = [amount for _hold, amount in admitted]
    # Demand is ~5x the cap: it fills up to less than one request's worth, never past it.
    assert CAP.limit_nano - MAX_AMOUNT < sum(amounts) <= CAP.limit_nano
    assert totals(ledger, CAP.key) == (0, sum(amounts))
    actuals = settle_phase(ledger, admitted, threads=8, seed=2)
    assert totals(ledger, CAP.key) == (sum(actuals), 0)
    assert totals(ledger, WATCH.key) == (sum(actuals), 0)


def test_threads_mixing_reserve_settle_and_release(ledger: Ledger) -> None:
    """Budget freed by releases is reused, yet spent + held never passes the limit while every
    settlement costs exactly its hold."""
    settled: list[int] = []
    over: list[int] = []

    def work(index: int) -> None:
        rng = random.Random(index)
        for _ in range(50):
            amount = rng.randint(1, MAX_AMOUNT)
            result = ledger.reserve([CAP], amount, 600)
            if result.hold_id is None:
                continue
            (state,) = result.states
            if state.spent_nano + state.held_nano > CAP.limit_nano:
                over.append(state.spent_nano + state.held_nano)
            if rng.random() < 0.3:
                ledger.release(result.hold_id)
            else:
                ledger.settle(result.hold_id, amount)
                settled.append(amount)

    in_threads(8, work)
    assert over == []
    assert sum(settled) <= CAP.limit_nano
    assert totals(ledger, CAP.key) == (sum(settled), 0)


def test_processes_and_threads_never_pass_the_cap(tmp_path: Path) -> None:
    """4 processes x 8 threads on one SQLite file (created by the racing workers themselves)."""
    path = tmp_path / "shared" / "ledger.db"
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(4)
    results = context.Queue()
    workers = [context.Process(target=process_worker, args=(str(path), seed, 8, 40, barrier, results))
               for seed in range(4)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=180) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    admitted = sum(sum(amounts) for amounts, _actuals in outcomes)
    spent = sum(sum(actuals) for _amounts, actuals in outcomes)
    assert CAP.limit_nano - MAX_AMOUNT < admitted <= CAP.limit_nano
    with SQLiteLedger(path) as ledger:
        assert totals(ledger, CAP.key) == (spent, 0)
        assert totals(ledger, WATCH.key) == (spent, 0)


def test_each_thread_has_its_own_connection_closed_when_the_thread_ends(tmp_path: Path) -> None:
    ledger = SQLiteLedger(tmp_path / "ledger.db")
    connections: list[sqlite3.Connection] = []

    def work(_index: int) -> None:
        ledger.reserve([CAP], 1, 60)
        connections.append(ledger._connection())
        assert ledger._connection() is connections[-1]

    in_threads(4, work)
    assert len({id(conn) for conn in connections}) == 4
    for conn in connections:
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            conn.execute("SELECT 1")
    assert totals(ledger, CAP.key) == (0, 4)
    ledger.close()
