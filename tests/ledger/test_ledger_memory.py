"""Memory specifics: garbage collection keeps the dicts bounded."""

from __future__ import annotations

from agentguard_otel.ledger import CounterSpec, MemoryLedger
from agentguard_otel.ledger.base import HOLD_RETENTION_SECONDS

from .conftest import FakeClock


def test_garbage_collection() -> None:
    clock = FakeClock(1_700_000_000.0)
    ledger = MemoryLedger(clock=clock)
    minute = CounterSpec("minute", 10**9, "minute")
    rolling = CounterSpec("rolling", 10**9, "minute", rolling=True)
    stuck = ledger.reserve([minute], 5, 30).hold_id
    assert stuck is not None
    for _ in range(5):
        hold = ledger.reserve([minute, rolling], 1, 30).hold_id
        assert hold is not None
        ledger.settle(hold, 1)
        clock.advance(61)
    ledger.states()
    # ended minute windows are gone, except the one the expired hold may still settle into
    assert sum(key == "minute" for key, _start in ledger._counters) == 2
    assert ledger._spend["rolling"] == []
    clock.advance(HOLD_RETENTION_SECONDS)
    ledger.states()
    assert sum(key == "minute" for key, _start in ledger._counters) == 1
    assert ledger._holds == {}
    assert ledger.settle(stuck, 5) == ()
