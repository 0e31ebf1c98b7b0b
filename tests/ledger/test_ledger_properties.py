"""Stateful property test: random reserve / settle / release / renew / clock steps against a
simple model of the contract, on every backend."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from agentguard_otel.ledger import CounterSpec
from agentguard_otel.ledger.base import ROLLING_SECONDS

from .conftest import LEDGER_FACTORIES, FakeClock, local

# The clock stays inside one calendar day and month (it starts at 15:30 in Kolkata and moves at
# most a few hours), so only the rolling counter sees time pass.
COUNTERS = (
    CounterSpec("day", 1_000, "day", timezone="Asia/Kolkata"),
    CounterSpec("month-shadow", 0, "month", enforce=False),
    CounterSpec("rolling", 700, "minute", rolling=True),
)


@dataclass
class ModelHold:
    amount: int
    expires_at: float
    keys: tuple[str, ...]


class LedgerMachine(RuleBasedStateMachine):
    """Subclassed per backend, naming it in ``backend``."""

    backend: ClassVar[str]
    holds = Bundle("holds")

    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.TemporaryDirectory()
        self.clock = FakeClock(local("Asia/Kolkata", 2024, 5, 15, 15, 30).timestamp())
        self.ledger = LEDGER_FACTORIES[self.backend](Path(self.directory.name), self.clock)
        self.open: dict[str, ModelHold] = {}
        self.spent = {spec.key: 0 for spec in COUNTERS}
        self.events: list[tuple[float, int]] = []  # settled spend of the rolling counter

    def teardown(self) -> None:
        self.ledger.close()
        self.directory.cleanup()

    def live_held(self, key: str) -> int:
        return sum(h.amount for h in self.open.values() if key in h.keys and h.expires_at > self.clock.now)

    def model_spent(self, key: str) -> int:
        if key == "rolling":
            cutoff = self.clock.now - ROLLING_SECONDS["minute"]
            return sum(amount for ts, amount in self.events if ts > cutoff)
        return self.spent[key]

    @rule(target=holds, amount=st.integers(0, 400), ttl=st.sampled_from([5.0, 30.0, 10_000.0]),
          chosen=st.lists(st.sampled_from(COUNTERS), unique=True))
    def reserve(self, amount: int, ttl: float, chosen: list[CounterSpec]) -> str:
        expected_over = tuple(spec for spec in chosen if spec.enforce and
                              self.model_spent(spec.key) + self.live_held(spec.key) + amount > spec.limit_nano)
        result = self.ledger.reserve(chosen, amount, ttl)
        assert result.exceeded == expected_over
        assert result.admitted == (not expected_over) == (result.hold_id is not None)
        assert [(s.key, s.spent_nano) for s in result.states] == [(c.key, self.model_spent(c.key)) for c in chosen]
        if result.hold_id is None:
            return "denied"
        for spec, state in zip(chosen, result.states, strict=True):
            assert state.held_nano == self.live_held(spec.key) + amount
            if spec.enforce:  # admitted totals never pass an enforced limit
                assert state.spent_nano + state.held_nano <= spec.limit_nano
        self.open[result.hold_id] = ModelHold(amount, self.clock.now + ttl, tuple(c.key for c in chosen))
        return result.hold_id

    @rule(hold=holds, actual=st.integers(0, 600))
    def settle(self, hold: str, actual: int) -> None:
        known = self.open.pop(hold, None)
        states = self.ledger.settle(hold, actual)
        if known is None:
            assert states == ()
            return
        for key in known.keys:
            if key == "rolling":
                self.events.append((self.clock.now, actual))
            else:
                self.spent[key] += actual
        assert [(s.key, s.spent_nano, s.held_nano) for s in states] == [
            (key, self.model_spent(key), self.live_held(key)) for key in known.keys]

    @rule(hold=holds)
    def release(self, hold: str) -> None:
        self.open.pop(hold, None)
        self.ledger.release(hold)

    @rule(hold=holds, ttl=st.sampled_from([5.0, 60.0]))
    def renew(self, hold: str, ttl: float) -> None:
        self.ledger.renew(hold, ttl)
        known = self.open.get(hold)
        if known is not None and known.expires_at > self.clock.now:
            known.expires_at = self.clock.now + ttl

    @rule(seconds=st.sampled_from([0.5, 3.0, 5.0, 20.0, 45.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def totals_match_the_model(self) -> None:
        shown = {s.key: s for s in self.ledger.states()}
        for spec in COUNTERS:
            state = shown.get(spec.key)
            spent, held = (state.spent_nano, state.held_nano) if state else (0, 0)
            assert (spent, held) == (self.model_spent(spec.key), self.live_held(spec.key)), spec.key


def test_ledger_matches_the_model(backend: str) -> None:
    machine = type(f"LedgerMachine_{backend}", (LedgerMachine,), {"backend": backend})
    run_state_machine_as_test(
        machine,
        settings=settings(max_examples=60, stateful_step_count=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow]))
