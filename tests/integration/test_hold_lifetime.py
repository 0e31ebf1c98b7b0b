"""A hold lasts as long as its call can: with a short connect timeout and no read timeout, a call
the provider answers after 75 s keeps its reservation to its end, whatever other threads try
meanwhile (a hold that expired with the connect timeout, or after a minute, would let them in).

Runs in the default suite (about 80 s): no marker deselects it."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx2
import openai

from agentguard_otel import AgentGuardBlocked
from tests.conftest import GuardFactory

SLOW_SECONDS = 75.0
# Seconds into the slow call at which other threads try calls of their own: throughout, and after 61 s.
TICKS = (0, 10, 20, 30, 40, 50, 58, 62, 66, 70, 73)
PROBES = 3  # concurrent calls per tick
CAP = {"version": 1, "mode": "enforce", "estimation": "strict", "rules": [
    {"id": "all", "caps": [{"limit_usd": 0.01, "window": "day", "action": "block"}]}]}
# gpt-4o-mini at $0.60 per 1M output tokens: 12,000 tokens reserve $0.0072, so one call fits the cap, two do not.
ASK: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 12_000}


def _probe(client: openai.OpenAI) -> str:
    try:
        client.chat.completions.create(**ASK)
    except AgentGuardBlocked as blocked:
        return "blocked: " + blocked.reason
    return "sent"


def test_a_75_second_call_holds_its_reservation_to_its_end_under_concurrent_load(server: Any,
                                                                              guarded: GuardFactory) -> None:
    g = guarded(CAP)  # the embedded default ledger (sqlite)
    client = openai.OpenAI(base_url=server.base_url, api_key="sk", max_retries=0,
                           timeout=httpx2.Timeout(None, connect=1.0))
    server.delay_next(SLOW_SECONDS)
    with ThreadPoolExecutor(1) as slow_pool, ThreadPoolExecutor(PROBES) as pool:
        slow = slow_pool.submit(client.chat.completions.create, **ASK)
        while not server.requests and not slow.done():
            time.sleep(0.01)  # until the slow call is at the server
        start = time.monotonic()
        outcomes: list[str] = []
        for tick in TICKS:
            time.sleep(max(0.0, start + tick - time.monotonic()))
            outcomes += [f.result() for f in [pool.submit(_probe, client) for _ in range(PROBES)]]
            assert not slow.done()  # every probe of this tick ran while the slow call was in flight
        response = slow.result()
    assert response.usage is not None and response.usage.completion_tokens == 24
    assert set(outcomes) == {"blocked: day cap of rule all reached"} and len(outcomes) == len(TICKS) * PROBES
    assert len(server.requests) == 1  # no probe reached the provider
    decisions = [r["action"] for r in g.receipts() if r["kind"] == "decision"]
    assert decisions == ["allow"] + ["block"] * len(outcomes)
    (settlement,) = [r for r in g.receipts() if r["kind"] == "settlement"]
    (state,) = g.guard.ledger.states()
    assert (state.held_nano, state.spent_nano) == (0, settlement["actual_nano"])
    assert settlement["actual_nano"] <= 10_000_000  # the cap, in nano-USD
    assert _probe(client) == "sent"  # once settled, the hold is gone and the cap has room again
