"""The ledger contract, run against every backend in ``LEDGER_FACTORIES``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from agentguard_otel.ledger import CounterSpec, CounterState, Ledger
from agentguard_otel.ledger.base import HOLD_RETENTION_SECONDS, Clock

from .conftest import FakeClock, local

TTL = 60.0


def state(ledger: Ledger, key: str) -> CounterState:
    (found,) = [s for s in ledger.states() if s.key == key]
    return found


def spent_held(ledger: Ledger, key: str) -> tuple[int, int]:
    found = state(ledger, key)
    return found.spent_nano, found.held_nano


def test_limit_reached_exactly_is_admitted_one_nano_over_is_denied(ledger: Ledger) -> None:
    cap = CounterSpec("r#0|user=alice", 1_000, "day")
    first = ledger.reserve([cap], 600, TTL)
    exact = ledger.reserve([cap], 400, TTL)
    over = ledger.reserve([cap], 1, TTL)
    assert first.admitted and exact.admitted
    assert exact.states == (CounterState(cap.key, local("UTC", 2024, 5, 15), 0, 1_000, 1_000),)
    assert not over.admitted and over.hold_id is None and over.exceeded == (cap,)
    assert over.states == (CounterState(cap.key, local("UTC", 2024, 5, 15), 0, 1_000, 1_000),)


def test_boundary_counts_spent_and_held_together(ledger: Ledger) -> None:
    cap = CounterSpec("k", 1_000, "hour")
    held = ledger.reserve([cap], 500, TTL)
    assert held.hold_id is not None
    ledger.settle(held.hold_id, 300)
    ledger.reserve([cap], 200, TTL)
    assert ledger.reserve([cap], 500, TTL).admitted
    assert not ledger.reserve([cap], 1, TTL).admitted
    assert spent_held(ledger, "k") == (300, 700)


def test_hold_ids_are_unique_hex(ledger: Ledger) -> None:
    cap = CounterSpec("k", 10**12, "day")
    ids = {ledger.reserve([cap], 1, TTL).hold_id for _ in range(50)}
    assert len(ids) == 50
    assert all(isinstance(i, str) and len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_denied_reservation_holds_nothing_anywhere(ledger: Ledger) -> None:
    tight = CounterSpec("tight", 100, "day")
    loose = CounterSpec("loose", 10_000, "day")
    ledger.reserve([loose], 1, TTL)
    result = ledger.reserve([loose, tight], 150, TTL)
    assert not result.admitted and result.hold_id is None
    assert result.exceeded == (tight,)
    assert [(s.key, s.held_nano) for s in result.states] == [("loose", 1), ("tight", 0)]
    assert spent_held(ledger, "loose") == (0, 1)
    assert [s.key for s in ledger.states()] == ["loose"]


def test_exceeded_lists_every_enforced_counter_over_its_limit(ledger: Ledger) -> None:
    a = CounterSpec("a", 100, "day")
    b = CounterSpec("b", 1_000, "month")
    c = CounterSpec("c", 50, "minute")
    d = CounterSpec("d", 10, "day", enforce=False)
    result = ledger.reserve([a, b, c, d], 101, TTL)
    assert not result.admitted
    assert result.exceeded == (a, c)
    assert [s.key for s in result.states] == ["a", "b", "c", "d"]
    assert all(s.held_nano == 0 and s.spent_nano == 0 for s in result.states)
    assert [s.limit_nano for s in result.states] == [100, 1_000, 50, 10]


def test_unenforced_counter_never_denies_but_holds(ledger: Ledger) -> None:
    shadow = CounterSpec("shadow", 0, "day", enforce=False)
    result = ledger.reserve([shadow], 500, TTL)
    assert result.admitted and result.exceeded == ()
    assert result.states[0].held_nano == 500
    assert result.hold_id is not None
    ledger.settle(result.hold_id, 700)
    assert spent_held(ledger, "shadow") == (700, 0)
    assert ledger.reserve([shadow], 10**15, TTL).admitted


@pytest.mark.parametrize("actual", [0, 250, 400, 900])
def test_settle_replaces_the_hold_by_the_actual_cost(ledger: Ledger, actual: int) -> None:
    day = CounterSpec("day", 1_000, "day")
    minute = CounterSpec("minute", 10**9, "minute")
    result = ledger.reserve([day, minute], 400, TTL)
    assert result.hold_id is not None
    states = ledger.settle(result.hold_id, actual)
    assert [(s.key, s.spent_nano, s.held_nano, s.limit_nano) for s in states] == [
        ("day", actual, 0, 1_000), ("minute", actual, 0, 10**9)]
    assert states[0].window_start == local("UTC", 2024, 5, 15)
    assert states[1].window_start == local("UTC", 2024, 5, 15, 12, 0)
    headroom = 1_000 - actual
    if headroom > 0:
        assert ledger.reserve([day], headroom, TTL).admitted
    assert not ledger.reserve([day], 1, TTL).admitted


def test_release_drops_the_hold_and_spends_nothing(ledger: Ledger) -> None:
    cap = CounterSpec("k", 1_000, "day")
    result = ledger.reserve([cap], 1_000, TTL)
    assert result.hold_id is not None
    ledger.release(result.hold_id)
    assert spent_held(ledger, "k") == (0, 0)
    assert ledger.reserve([cap], 1_000, TTL).admitted


def test_settle_and_release_are_idempotent(ledger: Ledger) -> None:
    cap = CounterSpec("k", 1_000, "day")
    settled = ledger.reserve([cap], 300, TTL).hold_id
    released = ledger.reserve([cap], 200, TTL).hold_id
    assert settled is not None and released is not None
    assert ledger.settle(settled, 100) != ()
    ledger.release(released)
    assert ledger.settle(settled, 100) == ()
    assert ledger.settle(released, 100) == ()
    ledger.release(settled)
    ledger.release(released)
    ledger.renew(settled, TTL)
    assert ledger.settle("no-such-hold", 5) == ()
    ledger.release("no-such-hold")
    assert spent_held(ledger, "k") == (100, 0)


def test_reservation_without_counters_is_admitted_and_records_nothing(ledger: Ledger) -> None:
    result = ledger.reserve([], 123, TTL)
    assert result.admitted and result.hold_id is not None and result.states == ()
    assert ledger.settle(result.hold_id, 123) == ()
    assert ledger.states() == []


def test_expired_hold_no_longer_counts(ledger: Ledger, clock: FakeClock) -> None:
    cap = CounterSpec("k", 1_000, "day")
    ledger.reserve([cap], 800, 10)
    clock.advance(9.5)
    assert spent_held(ledger, "k") == (0, 800)
    assert not ledger.reserve([cap], 201, TTL).admitted
    clock.advance(0.5)
    assert spent_held(ledger, "k") == (0, 0)
    assert ledger.reserve([cap], 1_000, TTL).admitted


def test_settling_an_expired_hold_still_records_the_spend(ledger: Ledger, clock: FakeClock) -> None:
    cap = CounterSpec("k", 1_000, "day")
    hold = ledger.reserve([cap], 800, 10).hold_id
    assert hold is not None
    clock.advance(30)
    other = ledger.reserve([cap], 1_000, TTL).hold_id
    assert other is not None
    states = ledger.settle(hold, 750)
    assert [(s.spent_nano, s.held_nano) for s in states] == [(750, 1_000)]
    assert ledger.settle(hold, 750) == ()
    ledger.release(other)
    assert spent_held(ledger, "k") == (750, 0)


def test_settling_or_releasing_an_expired_hold_no_sweep_has_seen_ends_as_after_a_sweep(
        ledger: Ledger, clock: FakeClock) -> None:
    # settle and release may run before any sweep took the expired holds off (SQLite sweeps only
    # when reserving and reading): the counters must end as they would after one
    cap = CounterSpec("k", 1_000, "day")
    settled, released, lapsed = (ledger.reserve([cap], 300, 10).hold_id for _ in range(3))
    assert settled is not None and released is not None and lapsed is not None
    clock.advance(30)
    assert [(s.spent_nano, s.held_nano) for s in ledger.settle(settled, 250)] in ([(250, 600)], [(250, 0)])
    ledger.release(released)
    assert ledger.settle(settled, 250) == ()
    assert spent_held(ledger, "k") == (250, 0)  # the third hold lapsed: its amount is no longer held
    assert ledger.reserve([cap], 750, TTL).admitted


def test_late_settlement_lands_in_the_window_the_hold_was_made_in(ledger: Ledger, clock: FakeClock) -> None:
    clock.set_local("Europe/Berlin", 2024, 5, 15, 23, 59, 50)
    cap = CounterSpec("k", 1_000, "day", timezone="Europe/Berlin")
    hold = ledger.reserve([cap], 900, 5).hold_id
    assert hold is not None
    clock.set_local("Europe/Berlin", 2024, 5, 16, 0, 10)
    (settled,) = ledger.settle(hold, 950)
    assert settled == CounterState("k", local("Europe/Berlin", 2024, 5, 15), 950, 0, 1_000)
    assert state(ledger, "k") == CounterState("k", local("Europe/Berlin", 2024, 5, 16), 0, 0, 1_000)
    assert ledger.reserve([cap], 1_000, TTL).admitted


def test_expired_holds_are_forgotten_after_the_retention(ledger: Ledger, clock: FakeClock) -> None:
    cap = CounterSpec("k", 1_000, "month")
    hold = ledger.reserve([cap], 100, 10).hold_id
    assert hold is not None
    clock.advance(10 + HOLD_RETENTION_SECONDS + 1)
    ledger.reserve([cap], 1, TTL)
    assert ledger.settle(hold, 100) == ()


def test_renew_keeps_a_hold_alive(ledger: Ledger, clock: FakeClock) -> None:
    cap = CounterSpec("k", 1_000, "day")
    hold = ledger.reserve([cap], 600, 10).hold_id
    assert hold is not None
    clock.advance(8)
    ledger.renew(hold, 10)
    clock.advance(9)
    assert spent_held(ledger, "k") == (0, 600)
    clock.advance(1)
    assert spent_held(ledger, "k") == (0, 0)
    ledger.renew(hold, 100)  # too late: an expired hold stays expired
    assert spent_held(ledger, "k") == (0, 0)
    assert ledger.settle(hold, 500)[0].spent_nano == 500


def test_limit_is_taken_from_the_latest_reservation(ledger: Ledger) -> None:
    ledger.reserve([CounterSpec("k", 1_000, "day")], 100, TTL)
    ledger.reserve([CounterSpec("k", 5_000, "day")], 100, TTL)
    assert state(ledger, "k").limit_nano == 5_000


WINDOW_ROLLOVERS = [
    # (window, zone, last second of one window, first second of the next, next window start)
    ("minute", "Asia/Kolkata", (2024, 5, 15, 10, 41, 59), (2024, 5, 15, 10, 42, 0), (2024, 5, 15, 10, 42)),
    ("hour", "America/Sao_Paulo", (2024, 5, 15, 10, 59, 59), (2024, 5, 15, 11, 0, 0), (2024, 5, 15, 11)),
    ("day", "Europe/Berlin", (2024, 5, 15, 23, 59, 59), (2024, 5, 16, 0, 0, 0), (2024, 5, 16)),
    # spring forward: 2024-03-10 in New York has 23 hours
    ("day", "America/New_York", (2024, 3, 10, 23, 59, 59), (2024, 3, 11, 0, 0, 0), (2024, 3, 11)),
    # fall back: 2024-11-03 in New York has 25 hours
    ("day", "America/New_York", (2024, 11, 3, 23, 59, 59), (2024, 11, 4, 0, 0, 0), (2024, 11, 4)),
    # Sunday night to Monday, across Berlin's spring-forward night
    ("week", "Europe/Berlin", (2024, 3, 31, 23, 59, 59), (2024, 4, 1, 0, 0, 0), (2024, 4, 1)),
    ("month", "Asia/Tokyo", (2024, 2, 29, 23, 59, 59), (2024, 3, 1, 0, 0, 0), (2024, 3, 1)),
    ("month", "America/Los_Angeles", (2024, 12, 31, 23, 59, 59), (2025, 1, 1, 0, 0, 0), (2025, 1, 1)),
]


@pytest.mark.parametrize(("window", "tz", "last", "first", "start"), WINDOW_ROLLOVERS,
                         ids=[f"{w}-{tz}-{first[:3]}" for w, tz, _l, first, _s in WINDOW_ROLLOVERS])
def test_calendar_windows_roll_over_at_local_boundaries(
        ledger: Ledger, clock: FakeClock, window: str, tz: str, last: tuple[int, ...], first: tuple[int, ...],
        start: tuple[int, ...]) -> None:
    cap = CounterSpec("k", 1_000, window, timezone=tz)  # type: ignore[arg-type]
    clock.set_local(tz, *last)
    hold = ledger.reserve([cap], 1_000, TTL).hold_id
    assert hold is not None
    ledger.settle(hold, 1_000)
    assert not ledger.reserve([cap], 1, TTL).admitted
    clock.set_local(tz, *first)
    result = ledger.reserve([cap], 1_000, TTL)
    assert result.admitted
    assert result.states == (CounterState("k", local(tz, *start), 0, 1_000, 1_000),)


def test_dst_day_is_one_window_of_23_hours(ledger: Ledger, clock: FakeClock) -> None:
    cap = CounterSpec("k", 1_000, "day", timezone="America/New_York")
    clock.set_local("America/New_York", 2024, 3, 10, 0, 0, 0)
    ledger.reserve([cap], 600, 10**6)
    clock.advance(23 * 3600 - 1)
    assert not ledger.reserve([cap], 401, TTL).admitted
    clock.advance(1)
    assert ledger.reserve([cap], 1_000, TTL).states[0].window_start == local("America/New_York", 2024, 3, 11)


def test_repeated_fall_back_hour_is_its_own_window(ledger: Ledger, clock: FakeClock) -> None:
    cap = CounterSpec("k", 1_000, "hour", timezone="America/New_York")
    clock.set_local("America/New_York", 2024, 11, 3, 1, 30)
    ledger.reserve([cap], 1_000, TTL)
    clock.set_local("America/New_York", 2024, 11, 3, 1, 30, fold=1)
    result = ledger.reserve([cap], 1_000, TTL)
    assert result.admitted
    assert result.states[0].window_start == local("America/New_York", 2024, 11, 3, 1, fold=1)


def test_rolling_window_slides(ledger: Ledger, clock: FakeClock) -> None:
    cap = CounterSpec("k", 100, "minute", rolling=True)
    start = clock.now
    first = ledger.reserve([cap], 60, TTL)
    assert first.hold_id is not None and first.states[0].window_start is None
    ledger.settle(first.hold_id, 60)
    clock.advance(30)
    second = ledger.reserve([cap], 40, TTL).hold_id
    assert second is not None
    ledger.settle(second, 40)
    clock.advance(29.5)
    assert not ledger.reserve([cap], 1, TTL).admitted
    clock.now = start + 60  # the first spend (stamped at ``start``) is now outside (now - 60, now]
    assert spent_held(ledger, "k") == (40, 0)
    assert ledger.reserve([cap], 60, TTL).admitted
    assert not ledger.reserve([cap], 1, TTL).admitted
    clock.now = start + 90
    assert spent_held(ledger, "k") == (0, 60)


def test_rolling_spend_is_stamped_at_settlement(ledger: Ledger, clock: FakeClock) -> None:
    cap = CounterSpec("k", 100, "hour", rolling=True)
    hold = ledger.reserve([cap], 100, 10**6).hold_id
    assert hold is not None
    clock.advance(3000)
    ledger.settle(hold, 100)
    clock.advance(3599)
    assert not ledger.reserve([cap], 1, TTL).admitted
    clock.advance(1)
    assert ledger.reserve([cap], 100, TTL).admitted


def test_rolling_and_calendar_counters_together(ledger: Ledger, clock: FakeClock) -> None:
    rolling = CounterSpec("r", 1_000, "day", rolling=True)
    calendar = CounterSpec("c", 10_000, "day")
    clock.set_local("UTC", 2024, 5, 15, 23, 0)
    hold = ledger.reserve([rolling, calendar], 700, TTL).hold_id
    assert hold is not None
    ledger.settle(hold, 700)
    clock.set_local("UTC", 2024, 5, 16, 1, 0)
    result = ledger.reserve([rolling, calendar], 400, TTL)
    assert result.exceeded == (rolling,)
    assert [(s.key, s.spent_nano) for s in result.states] == [("r", 700), ("c", 0)]


def test_states_filters_by_prefix_and_shows_the_current_window(ledger: Ledger, clock: FakeClock) -> None:
    caps = [CounterSpec("team|a", 10, "day"), CounterSpec("team|b", 20, "minute"), CounterSpec("user|c", 30, "day")]
    for cap in caps:
        hold = ledger.reserve([cap], 5, TTL).hold_id
        assert hold is not None
        ledger.settle(hold, 4)
    ledger.reserve([caps[0]], 3, TTL)
    today = local("UTC", 2024, 5, 15)
    assert ledger.states("team|") == [CounterState("team|a", today, 4, 3, 10),
                                      CounterState("team|b", local("UTC", 2024, 5, 15, 12, 0), 4, 0, 20)]
    assert [s.key for s in ledger.states()] == ["team|a", "team|b", "user|c"]
    assert ledger.states("nobody") == []
    clock.advance(60)
    assert ledger.states("team|b") == [CounterState("team|b", local("UTC", 2024, 5, 15, 12, 1), 0, 0, 20)]


def test_ledgers_built_by_the_factory_are_independent(make_ledger: Callable[[Clock], Ledger],
                                                      clock: FakeClock) -> None:
    first, second = make_ledger(clock), make_ledger(clock)
    first.reserve([CounterSpec("k", 10, "day")], 10, TTL)
    assert second.states() == []


@pytest.mark.parametrize(("amount", "error"), [(-1, ValueError), (1.5, TypeError), (True, TypeError)])
def test_amounts_must_be_non_negative_ints(ledger: Ledger, amount: object, error: type[Exception]) -> None:
    cap = CounterSpec("k", 10, "day")
    with pytest.raises(error):
        ledger.reserve([cap], amount, TTL)  # type: ignore[arg-type]
    hold = ledger.reserve([cap], 1, TTL).hold_id
    assert hold is not None
    with pytest.raises(error):
        ledger.settle(hold, amount)  # type: ignore[arg-type]
    assert spent_held(ledger, "k") == (0, 1)


def test_bad_reservations_are_refused(ledger: Ledger) -> None:
    cap = CounterSpec("k", 10, "day")
    with pytest.raises(ValueError, match="twice"):
        ledger.reserve([cap, CounterSpec("k", 20, "hour")], 1, TTL)
    for ttl in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="ttl"):
            ledger.reserve([cap], 1, ttl)
    assert ledger.states() == []


def test_an_adjustable_settlement_is_corrected_once_in_its_own_window(ledger: Ledger, clock: FakeClock) -> None:
    day = CounterSpec("day", 1_000, "day")
    rolling = CounterSpec("roll", 1_000, "hour", rolling=True)
    deferred = ledger.reserve([day, rolling], 800, TTL).hold_id
    plain = ledger.reserve([day], 100, TTL).hold_id
    assert deferred is not None and plain is not None
    ledger.settle(deferred, 800, adjustable=True)
    ledger.settle(plain, 100)
    clock.advance(600)
    states = ledger.adjust(deferred, 300)
    assert [(s.key, s.spent_nano) for s in states] == [("day", 400), ("roll", 300)]
    assert ledger.adjust(deferred, 0) == ()  # once only
    assert ledger.adjust(plain, 0) == ()  # a plain settlement is final
    assert spent_held(ledger, "day") == (400, 0)
    assert ledger.reserve([rolling], 700, TTL).admitted
    # the correction slides out with the spend it corrected: the rolling total never goes negative
    clock.advance(3_600)
    assert spent_held(ledger, "roll") == (0, 0)


def test_a_correction_upward_counts_and_an_ended_window_keeps_its_total(ledger: Ledger, clock: FakeClock) -> None:
    minute = CounterSpec("minute", 10**9, "minute")
    day = CounterSpec("day", 10**9, "day")
    first = ledger.reserve([minute, day], 100, TTL).hold_id
    assert first is not None
    ledger.settle(first, 100, adjustable=True)
    clock.advance(120)  # the minute window ended; the day window goes on
    states = ledger.adjust(first, 250)
    assert ("day", 250) in [(s.key, s.spent_nano) for s in states]
    assert state(ledger, "minute").spent_nano == 0  # the current minute is untouched
    assert spent_held(ledger, "day") == (250, 0)


# -- marks: what happened to a counter in a window, recorded once across processes -----------------

def test_a_mark_is_recorded_by_the_first_caller_only(ledger: Ledger) -> None:
    key = "r#0|team=a*b[c]\\d"  # glob characters in a key are literal
    assert ledger.mark(key, "2024-05-15T00:00:00+00:00", "0.8", TTL) is True
    assert ledger.mark(key, "2024-05-15T00:00:00+00:00", "0.8", TTL) is False
    assert ledger.mark(key, "2024-05-15T00:00:00+00:00", "1", TTL) is True
    assert ledger.mark(key, "2024-05-16T00:00:00+00:00", "0.8", TTL) is True
    assert ledger.mark("r#1", "rolling:0", "tripped:block", TTL) is True
    assert ledger.marks() == {
        (key, "2024-05-15T00:00:00+00:00"): frozenset({"0.8", "1"}),
        (key, "2024-05-16T00:00:00+00:00"): frozenset({"0.8"}),
        ("r#1", "rolling:0"): frozenset({"tripped:block"}),
    }
    assert ledger.marks("r#1") == {("r#1", "rolling:0"): frozenset({"tripped:block"})}
    assert ledger.marks("r#0|team=a*") == {k: v for k, v in ledger.marks().items() if k[0] == key}
    assert ledger.marks("r#0|team=a?") == {}


def test_a_mark_is_forgotten_after_its_lifetime(ledger: Ledger, backend: str, clock: FakeClock) -> None:
    if backend == "redis":  # a mark expires on the Redis server's own clock, as every Redis key does
        assert ledger.mark("k", "w", "0.8", 0.05)
        time.sleep(0.2)
    else:
        assert ledger.mark("k", "w", "0.8", TTL)
        clock.advance(TTL)
    assert ledger.marks() == {}
    assert ledger.mark("k", "w", "0.8", TTL) is True


def test_concurrent_markers_record_a_mark_once(make_ledger: Callable[[Clock], Ledger], clock: FakeClock) -> None:
    ledgers = [make_ledger(clock)]
    results: list[bool] = []
    lock = threading.Lock()

    def race() -> None:
        got = ledgers[0].mark("k", "w", "0.8", TTL)
        with lock:
            results.append(got)

    workers = [threading.Thread(target=race) for _ in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sorted(results) == [False] * 7 + [True]
