"""Ledger fixtures: every contract test runs once per backend listed in ``LEDGER_FACTORIES``.

A new backend joins the whole suite by adding one entry; a factory builds a fresh, empty ledger
in ``directory`` that reads time from ``clock``. The Redis ledger runs against the session's real
``redis-server``; each ledger gets its own key prefix, so ledgers never see each other's counters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest

from agentguard_otel.ledger import Ledger, MemoryLedger, RedisLedger, SQLiteLedger
from agentguard_otel.ledger.base import Clock, zone
from tests.redis_server import RedisServer, shared_server, stop_shared_server

LedgerFactory = Callable[[Path, Clock], Ledger]

LEDGER_FACTORIES: dict[str, LedgerFactory] = {
    "memory": lambda directory, clock: MemoryLedger(clock=clock),
    "sqlite": lambda directory, clock: SQLiteLedger(directory / "ledger.db", clock=clock),
    "redis": lambda directory, clock: RedisLedger(shared_server().url(), prefix=f"test:{directory}:", clock=clock),
}


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The real redis-server the Redis ledger tests share (stopped at the end of the session)."""
    yield shared_server()
    stop_shared_server()


class FakeClock:
    """A settable clock, so tests cross window boundaries and expire holds without sleeping."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def set_local(self, timezone: str, *fields: int, fold: int = 0) -> None:
        """Jump to a wall-clock time in ``timezone`` (``fold=1``: the second of a repeated time)."""
        self.now = local(timezone, *fields, fold=fold).timestamp()


def local(timezone: str, year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0,
          *, fold: int = 0) -> datetime:
    """An aware wall-clock datetime, to compare with ``CounterState.window_start``."""
    return datetime(year, month, day, hour, minute, second, tzinfo=zone(timezone), fold=fold)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2024, 5, 15, 12, 0, tzinfo=zone("UTC")).timestamp())


@pytest.fixture(params=sorted(LEDGER_FACTORIES))
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def make_ledger(backend: str, tmp_path: Path) -> Iterator[Callable[[Clock], Ledger]]:
    """Builds ledgers of the backend under test (each in its own directory); closes them after."""
    made: list[Ledger] = []

    def make(clock: Clock) -> Ledger:
        directory = tmp_path / f"ledger{len(made)}"
        directory.mkdir()
        made.append(LEDGER_FACTORIES[backend](directory, clock))
        return made[-1]

    yield make
    for ledger in made:
        ledger.close()


@pytest.fixture
def ledger(make_ledger: Callable[[Clock], Ledger], clock: FakeClock) -> Ledger:
    return make_ledger(clock)
