"""Window math shared by every backend (``window_slot``) and counter validation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentguard_otel.ledger import CounterSpec
from agentguard_otel.ledger.base import ROLLING_SECONDS, ROLLING_START, Slot, window_slot

from .conftest import local


def start_of(window: str, tz: str, *fields: int, fold: int = 0) -> object:
    return window_slot(window, tz, False, local(tz, *fields, fold=fold).timestamp()).start


@pytest.mark.parametrize(("window", "tz", "now", "start"), [
    ("minute", "Asia/Kathmandu", (2024, 5, 15, 10, 41, 59), (2024, 5, 15, 10, 41)),
    ("hour", "Asia/Kathmandu", (2024, 5, 15, 10, 41, 59), (2024, 5, 15, 10)),
    ("day", "Pacific/Auckland", (2024, 5, 15, 0, 0, 0), (2024, 5, 15)),
    ("week", "Europe/Berlin", (2024, 5, 19, 23, 59, 59), (2024, 5, 13)),
    ("week", "Europe/Berlin", (2024, 5, 13, 0, 0, 0), (2024, 5, 13)),
    ("month", "America/Los_Angeles", (2024, 5, 31, 23, 59, 59), (2024, 5, 1)),
    # Chile springs forward at midnight: 2024-09-08 starts at 01:00
    ("day", "America/Santiago", (2024, 9, 8, 12, 0, 0), (2024, 9, 8, 1)),
    # Lord Howe springs forward by 30 minutes: 02:00-02:30 does not exist
    ("hour", "Australia/Lord_Howe", (2024, 10, 6, 2, 45, 0), (2024, 10, 6, 2, 30)),
])
def test_calendar_window_starts(window: str, tz: str, now: tuple[int, ...], start: tuple[int, ...]) -> None:
    assert start_of(window, tz, *now) == int(local(tz, *start).timestamp())


def test_fall_back_day_starts_at_the_first_midnight() -> None:
    # Chile falls back at midnight: 2024-04-06 23:00-24:00 happens twice, the day has 25 hours.
    first = start_of("day", "America/Santiago", 2024, 4, 6, 23, 30)
    second = start_of("day", "America/Santiago", 2024, 4, 6, 23, 30, fold=1)
    assert first == second == int(local("America/Santiago", 2024, 4, 6).timestamp())


def test_repeated_hour_gets_two_windows() -> None:
    first = start_of("hour", "America/New_York", 2024, 11, 3, 1, 30)
    second = start_of("hour", "America/New_York", 2024, 11, 3, 1, 30, fold=1)
    assert second - first == 3600  # type: ignore[operator]


@given(st.integers(min_value=946_684_800, max_value=4_102_444_800),
       st.sampled_from(["minute", "hour", "day", "week", "month"]),
       st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]),
       st.floats(min_value=0, max_value=0.999))
def test_window_contains_now_and_starts_where_the_previous_ended(now: int, window: str, tz: str, frac: float) -> None:
    slot = window_slot(window, tz, False, now + frac)
    assert slot.since is None and slot.start <= now
    assert window_slot(window, tz, False, slot.start) == slot
    assert window_slot(window, tz, False, slot.start - 1).start < slot.start


@pytest.mark.parametrize("window", sorted(ROLLING_SECONDS))
def test_rolling_slot_is_the_trailing_length(window: str) -> None:
    assert window_slot(window, "Asia/Tokyo", True, 1_000_000_000.5) == Slot(
        ROLLING_START, 1_000_000_000.5 - ROLLING_SECONDS[window])


def test_rolling_lengths() -> None:
    assert ROLLING_SECONDS == {"minute": 60, "hour": 3600, "day": 86_400, "week": 604_800, "month": 2_592_000}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"window": "call"}, "window"),
    ({"window": "day", "timezone": "Mars/Olympus"}, "time zone"),
    ({"window": "day", "limit_nano": -1}, "negative"),
])
def test_counter_spec_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CounterSpec(**{"key": "k", "limit_nano": 1, **kwargs})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        CounterSpec("k", 1.0, "day")  # type: ignore[arg-type]
