"""Redis specifics: URLs and options, server time and host clock skew, window boundaries sent to
the script, exact big integers, idempotent retries, script reloads, key expiry, errors, fork."""

from __future__ import annotations

import itertools
import multiprocessing
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from agentguard_otel.errors import ConfigError, LedgerUnavailable
from agentguard_otel.ledger import CounterSpec, RedisLedger, open_ledger
from agentguard_otel.ledger import redis as redis_ledger
from agentguard_otel.ledger.base import window_slot
from agentguard_otel.ledger.redis import MAX_AMOUNT_NANO, parse_redis_url, window_bounds
from tests.redis_server import RedisServer

CAP = CounterSpec("k", 1_000, "day")


@pytest.fixture
def live(redis_server: RedisServer, request: pytest.FixtureRequest) -> Iterator[RedisLedger]:
    """A ledger on server time (no injected clock), as in production, with its own key prefix."""
    ledger = RedisLedger(redis_server.url(), prefix=f"test:{request.node.name}:")
    yield ledger
    ledger.close()


def test_open_redis_urls(redis_server: RedisServer) -> None:
    with open_ledger(redis_server.url(3, timeout="0.5", prefix="fleet:")) as ledger:
        assert isinstance(ledger, RedisLedger)
        assert ledger.reserve([CAP], 5, 60).admitted
    client = redis.Redis(port=redis_server.port, db=3, decode_responses=True)
    assert client.hget("fleet:c:" + str(int(time.time() // 86_400 * 86_400)) + ":k", "held") == "5"
    client.flushdb()
    client.close()


@pytest.mark.parametrize(("url", "target", "timeout", "prefix"), [
    ("redis://h:6380/2", "redis://h:6380/2", 1.0, "agentguard:"),
    ("rediss://user:pw@h/0?timeout=2.5", "rediss://user:pw@h/0", 2.5, "agentguard:"),
    ("redis://h?prefix=team-a:&timeout=0.2", "redis://h", 0.2, "team-a:"),
])
def test_parse_redis_url(url: str, target: str, timeout: float, prefix: str) -> None:
    assert parse_redis_url(url) == (target, timeout, prefix)


@pytest.mark.parametrize("url", ["redis://", "redis://h/x", "redis://h?timeout=0", "redis://h?timeout=abc",
                                 "redis://h?timeout=inf", "redis://h?db=1", "redis://h?prefix=a&prefix=b",
                                 "redis://h:99999/0", "redis://h?oops"])
def test_malformed_redis_urls(url: str) -> None:
    with pytest.raises(ConfigError):
        open_ledger(url)


def test_unreachable_server_is_unavailable() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ledger = open_ledger(f"redis://127.0.0.1:{port}/0")  # opening does not connect
    for operation in (lambda: ledger.reserve([CAP], 1, 60), lambda: ledger.settle("x", 1),
                      lambda: ledger.release("x"), lambda: ledger.renew("x", 60), ledger.states):
        with pytest.raises(LedgerUnavailable, match=f"127.0.0.1:{port}/0: ConnectionError") as caught:
            operation()
        assert isinstance(caught.value.__cause__, redis.ConnectionError)
    ledger.close()


def test_a_server_that_does_not_answer_times_out_as_unavailable() -> None:
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        ledger = open_ledger(f"redis://127.0.0.1:{silent.getsockname()[1]}/0?timeout=0.2")
        started = time.monotonic()
        with pytest.raises(LedgerUnavailable, match="TimeoutError"):
            ledger.reserve([CAP], 1, 60)
        assert time.monotonic() - started < 2  # one retry of 0.2 s each, not the OS defaults
        ledger.close()


def test_windows_follow_server_time_whatever_the_host_clock(live: RedisLedger) -> None:
    """A host clock a day off changes nothing: the script answers with the server's time, the
    client learns the offset, and the window is the server's."""
    today = datetime.fromtimestamp(time.time(), timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    minute = CounterSpec("m", 10**9, "minute", timezone="Asia/Kathmandu")
    for skew in (86_400.0, -86_400.0 * 40):
        live._offset = skew
        result = live.reserve([CAP, minute], 1, 60)
        assert result.states[0].window_start == today
        assert abs(live._offset) < 5
        (state,) = live.states("k")
        assert state.window_start == today
    assert [s.held_nano for s in live.states()] == [2, 2]


@given(st.floats(min_value=946_684_800, max_value=4_102_444_800),
       st.sampled_from(["minute", "hour", "day", "week", "month"]),
       st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "America/Santiago", "Australia/Lord_Howe"]),
       st.floats(min_value=0, max_value=10))
@settings(deadline=None)
def test_window_bounds_agree_with_window_slot(now: float, window: str, tz: str, margin: float) -> None:
    bounds = window_bounds(window, tz, now - margin, now + margin)
    assert bounds[0] <= now - margin <= now + margin < bounds[-1]
    for start, end in itertools.pairwise(bounds):
        assert window_slot(window, tz, False, start).start == start
        assert window_slot(window, tz, False, end - 1).start == start
        assert window_slot(window, tz, False, end).start == end


def test_big_limits_are_compared_exactly(live: RedisLedger) -> None:
    """Totals past 2**53 (where doubles lose the last nano) are still checked to the nano."""
    limit = 3 * MAX_AMOUNT_NANO + 7
    cap = CounterSpec("big", limit, "month")
    for _ in range(3):
        assert live.reserve([cap], MAX_AMOUNT_NANO, 60).admitted
    assert not live.reserve([cap], 8, 60).admitted
    assert live.reserve([cap], 7, 60).admitted
    assert not live.reserve([cap], 1, 60).admitted
    (state,) = live.states("big")
    assert state.held_nano == limit
    with pytest.raises(ValueError, match="at most"):
        live.reserve([cap], MAX_AMOUNT_NANO + 1, 60)


def test_a_retried_reservation_does_not_hold_twice(live: RedisLedger, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reply lost after the server admitted: the retry (same hold id) reports the hold as admitted
    and holds nothing more."""
    monkeypatch.setattr(redis_ledger, "new_hold_id", lambda: "f" * 32)
    first = live.reserve([CAP], 600, 60)
    again = live.reserve([CAP], 600, 60)
    assert first.hold_id == again.hold_id == "f" * 32 and again.admitted
    assert [(s.spent_nano, s.held_nano) for s in again.states] == [(0, 600)]
    live.settle("f" * 32, 500)
    assert [(s.spent_nano, s.held_nano) for s in live.states()] == [(500, 0)]


def test_scripts_are_reloaded_after_the_server_forgets_them(live: RedisLedger, redis_server: RedisServer) -> None:
    assert live.reserve([CAP], 1, 60).admitted
    redis.Redis(port=redis_server.port).script_flush()
    assert live.reserve([CAP], 1, 60).admitted


def test_keys_expire_so_a_fleet_leaks_nothing(live: RedisLedger, redis_server: RedisServer) -> None:
    rolling = CounterSpec("r", 10**6, "hour", rolling=True)
    settled = live.reserve([CAP, rolling], 10, 60).hold_id
    dead = live.reserve([CAP], 10, 0.05).hold_id
    assert settled is not None and dead is not None
    live.settle(settled, 7)
    time.sleep(0.1)
    assert live.states("k")[0].held_nano == 0
    client = redis.Redis(port=redis_server.port, decode_responses=True)
    keys = [str(key) for key in client.keys(f"{live._prefix}*")]
    forever = sorted(key.removeprefix(live._prefix) for key in keys if client.ttl(key) == -1)
    assert forever == ["keys"]  # the key index; the live-hold index is empty once nothing is in flight
    assert client.ttl(f"{live._prefix}h:{dead}") > 86_000  # kept for a late settlement, then dropped
    assert live.settle(dead, 3)[0].spent_nano == 10
    client.close()


def test_threads_share_one_pool(live: RedisLedger) -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(50):
                hold = live.reserve([CAP], 1, 60).hold_id
                assert hold is not None
                live.settle(hold, 1)
        except BaseException as exc:
            errors.append(exc)
            raise

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [(s.spent_nano, s.held_nano) for s in live.states()] == [(200, 0)]


def _reserve_in_child(ledger: RedisLedger) -> None:
    hold = ledger.reserve([CAP], 400, 60).hold_id
    assert hold is not None
    ledger.settle(hold, 300)


def test_forked_child_opens_its_own_connections(live: RedisLedger) -> None:
    live.reserve([CAP], 100, 600)
    child = multiprocessing.get_context("fork").Process(target=_reserve_in_child, args=(live,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert [(s.spent_nano, s.held_nano) for s in live.states()] == [(300, 100)]
    assert live.reserve([CAP], 600, 60).admitted
