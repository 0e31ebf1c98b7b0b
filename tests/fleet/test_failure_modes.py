"""The Redis ledger unreachable, silent or restarted, through the real guard and the real ``openai``
SDK: ``failure_mode: closed`` blocks before the provider, ``open`` lets calls through marked
degraded, and both recover by themselves when Redis is back, losing nothing."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import openai
import pytest

from agentguard_otel import AgentGuardBlocked
from agentguard_otel.ledger import open_ledger
from tests.conftest import GuardFactory
from tests.redis_server import RedisServer, free_port

MODEL = "gpt-4o-mini"
MESSAGES: Any = [{"role": "user", "content": "Summarise the incident report."}]


def policy(failure_mode: str) -> dict[str, Any]:
    return {"version": 1, "id": "fleet", "mode": "enforce", "failure_mode": failure_mode,
            "rules": [{"id": "team", "max_output_tokens": 64,
                       "caps": [{"limit_usd": 1, "window": "day", "action": "block"}]}]}


def call(server: Any) -> Any:
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
    return client.chat.completions.create(model=MODEL, messages=MESSAGES)


def decisions(receipts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in receipts if r["kind"] == "decision"]


def test_unreachable_closed_blocks_before_the_provider(guarded: GuardFactory, server: Any) -> None:
    handle = guarded(policy("closed"), ledger=f"redis://127.0.0.1:{free_port()}/0")
    reason = r"ledger unavailable \(failure_mode closed\).*ConnectionError"
    with pytest.raises(AgentGuardBlocked, match=reason) as caught:
        call(server)
    assert caught.value.action == "block"
    assert server.requests == []
    (decision,) = decisions(handle.receipts())
    assert decision["action"] == "block" and decision["degraded"] is True
    assert caught.value.receipt_hash == decision["hash"]


def test_unreachable_open_allows_and_marks_the_receipts_degraded(guarded: GuardFactory, server: Any) -> None:
    handle = guarded(policy("open"), ledger=f"redis://127.0.0.1:{free_port()}/0")
    assert call(server).choices[0].message.content
    assert len(server.requests) == 1
    decision, settlement = handle.receipts()
    assert decision["action"] == "allow" and decision["degraded"] is True
    assert decision["reason"].startswith("ledger unavailable (failure_mode open)")
    assert settlement["kind"] == "settlement" and settlement["degraded"] is True and settlement["actual_nano"] > 0


def test_a_silent_redis_times_out_into_the_failure_mode(guarded: GuardFactory, server: Any) -> None:
    with socket.socket() as silent:  # accepts TCP connections, never answers a command
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        guarded(policy("closed"), ledger=f"redis://127.0.0.1:{silent.getsockname()[1]}/0?timeout=0.2")
        with pytest.raises(AgentGuardBlocked, match="TimeoutError"):
            call(server)
    assert server.requests == []


@pytest.mark.parametrize("failure_mode", ["closed", "open"])
def test_a_redis_restart_mid_run_recovers_by_itself(guarded: GuardFactory, server: Any, tmp_path: Path,
                                                    failure_mode: str) -> None:
    """Calls before the crash settle; while Redis is down they block (closed) or pass degraded
    (open); once it is back on the same port calls are admitted again, and the ledger holds
    exactly the settlements made while it was up, with nothing left held."""
    directory = tmp_path / "redis"
    directory.mkdir()
    redis_server = RedisServer(directory, durable=True).start()
    url = redis_server.url(timeout="0.5")
    handle = guarded(policy(failure_mode), ledger=url)
    try:
        for _ in range(3):
            call(server)
        redis_server.stop()
        for _ in range(2):
            if failure_mode == "closed":
                with pytest.raises(AgentGuardBlocked, match="ledger unavailable"):
                    call(server)
            else:
                call(server)
        down_requests = len(server.requests)
        assert down_requests == (3 if failure_mode == "closed" else 5)
        redis_server.start()
        for _ in range(3):
            call(server)
        assert len(server.requests) == down_requests + 3
        receipts = handle.receipts()
        assert [d["degraded"] for d in decisions(receipts)] == [False] * 3 + [True] * 2 + [False] * 3
        recorded = [r["actual_nano"] for r in receipts if r["kind"] == "settlement" and not r["degraded"]]
        assert len(recorded) == 6
        with open_ledger(url) as ledger:
            (state,) = ledger.states()
        assert (state.spent_nano, state.held_nano) == (sum(recorded), 0)
    finally:
        redis_server.stop()
