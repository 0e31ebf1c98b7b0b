"""Async callers and a remote ledger: while the guard waits on Redis, the event loop keeps running
other tasks (the guard's ledger work for async SDK calls runs in a worker thread)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import openai

from tests.conftest import GuardFactory
from tests.redis_server import RedisServer

POLICY = {"version": 1, "id": "async", "failure_mode": "open", "rules": [
    {"id": "all", "caps": [{"limit_usd": 10, "window": "day", "action": "block"}]}]}


def test_a_stalled_redis_does_not_stall_the_event_loop(tmp_path: Path, server: Any, guarded: GuardFactory) -> None:
    (tmp_path / "redis").mkdir()
    redis = RedisServer(tmp_path / "redis").start()
    try:
        handle = guarded(POLICY, ledger=redis.url(timeout="0.3"))
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
        assert redis.process is not None
        pid = redis.process.pid

        async def main() -> tuple[int, float]:
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            task = asyncio.create_task(ticker())
            await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            os.kill(pid, signal.SIGSTOP)  # Redis accepts nothing and answers nothing from here on
            try:
                before, start = ticks, time.monotonic()
                await client.chat.completions.create(model="gpt-4o-mini",
                                                     messages=[{"role": "user", "content": "hi"}])
                elapsed = time.monotonic() - start
            finally:
                os.kill(pid, signal.SIGCONT)
            task.cancel()
            return ticks - before, elapsed

        ticks, elapsed = asyncio.run(main())
    finally:
        redis.stop()
    assert elapsed >= 0.3  # the call really waited on the ledger (timeouts, then failure_mode open)
    assert ticks >= 0.3 * elapsed / 0.01, f"event loop ran {ticks} ticks in {elapsed:.2f} s"
    decisions = [r for r in handle.receipts() if r["kind"] == "decision"]
    assert [d["degraded"] for d in decisions] == [False, True]
    assert len(server.requests) == 2
