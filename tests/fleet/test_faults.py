"""Fault injection on the fleet ledger: a worker process SIGKILLed in the middle of a call leaks
nothing (its hold expires on the server's clock) and nothing else is affected."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import uuid
from typing import Any

from agentguard_otel.ledger import CounterSpec, open_ledger
from tests.redis_server import RedisServer

CAP = CounterSpec("team=eng", 1_000, "day")


def _hold_and_hang(url: str, ready: Any) -> None:
    """Reserve as a guarded call does before sending, then hang as if waiting for the provider."""
    ledger = open_ledger(url)
    assert ledger.reserve([CAP], 600, 1.0).admitted
    ready.set()
    time.sleep(600)


def test_a_killed_worker_leaks_nothing_and_disturbs_no_one(redis_server: RedisServer) -> None:
    url = redis_server.url(prefix=f"faults-{uuid.uuid4().hex}:")
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    worker = ctx.Process(target=_hold_and_hang, args=(url, ready))
    worker.start()
    assert ready.wait(60)
    with open_ledger(url) as ledger:
        survivor = ledger.reserve([CAP], 300, 60).hold_id
        assert survivor is not None
        assert not ledger.reserve([CAP], 101, 60).admitted  # the doomed worker's hold still counts
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(10)
        assert worker.exitcode == -signal.SIGKILL
        deadline = time.monotonic() + 5
        while ledger.states()[0].held_nano != 300:  # the hold expires one second after it was made
            assert time.monotonic() < deadline, "the killed worker's hold never expired"
            time.sleep(0.05)
        late = ledger.reserve([CAP], 700, 60).hold_id
        assert late is not None
        assert [s.spent_nano for s in ledger.settle(survivor, 250)] == [250]
        ledger.release(late)
        (state,) = ledger.states()
        assert (state.spent_nano, state.held_nano) == (250, 0)
