"""Load generators for the concurrency tests; a module of its own so spawned processes import
only this and the ledger."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentguard_otel.ledger import CounterSpec, Ledger, SQLiteLedger

CAP = CounterSpec("team=eng", 5_000, "day", timezone="Europe/Berlin")
WATCH = CounterSpec("user=any", 0, "day", enforce=False)
MAX_AMOUNT = 100


def in_threads(count: int, work: Callable[[int], None]) -> None:
    """Run ``work(i)`` in ``count`` threads that start together; re-raise the first failure."""
    start = threading.Barrier(count)
    failures: list[BaseException] = []

    def run(index: int) -> None:
        try:
            start.wait()
            work(index)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]


def reserve_phase(ledger: Ledger, threads: int, attempts: int, seed: int) -> list[tuple[str, int]]:
    """Every thread asks for random amounts against CAP; returns the admitted (hold_id, amount)."""
    admitted: list[tuple[str, int]] = []

    def work(index: int) -> None:
        rng = random.Random(seed * 1_000 + index)
        for _ in range(attempts):
            amount = rng.randint(1, MAX_AMOUNT)
            result = ledger.reserve([CAP, WATCH], amount, 600)
            if result.hold_id is not None:
                admitted.append((result.hold_id, amount))

    in_threads(threads, work)
    return admitted


def settle_phase(ledger: Ledger, holds: list[tuple[str, int]], threads: int, seed: int) -> list[int]:
    """Settle every hold from ``threads`` threads at a random actual cost (up to twice the hold)."""
    rng = random.Random(seed)
    actuals = [rng.randint(0, 2 * amount) for _hold, amount in holds]

    def work(index: int) -> None:
        for (hold, _amount), actual in list(zip(holds, actuals, strict=True))[index::threads]:
            ledger.settle(hold, actual)

    in_threads(threads, work)
    return actuals


def process_worker(path: str, seed: int, threads: int, attempts: int, barrier: Any, results: Any) -> None:
    """One process of the multi-process test: reserve with many threads, wait until every process
    has finished reserving (so no settlement frees budget early), then settle."""
    ledger = SQLiteLedger(Path(path))
    try:
        admitted = reserve_phase(ledger, threads, attempts, seed)
        barrier.wait(timeout=120)
        actuals = settle_phase(ledger, admitted, threads, seed)
        results.put(([amount for _hold, amount in admitted], actuals))
    finally:
        ledger.close()
