"""The ledger guarantee through the whole stack, on the distributed (Redis) and the embedded
(SQLite) ledger: 4 processes x 16 threads, each a real ``openai`` client guarded against one
shared ledger, hammer one daily cap with mixed call sizes, injected provider errors, streams read
to the end and streams abandoned half-way. In strict estimation admitted spend never passes the
cap; afterwards nothing is held and spent = the sum of actual costs = the sum of the settlement
receipts = the sum of the ``agentguard.cost`` metric, and every chain verifies."""

from __future__ import annotations

import json
import multiprocessing
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from multiprocessing.managers import SyncManager
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any

import pytest

from agentguard_otel.ledger import open_ledger
from agentguard_otel.money import NANO_PER_USD
from agentguard_otel.receipts import SigningKey, load_public_keys, verify
from tests.redis_server import RedisServer

LIMIT_USD = "0.004"
LIMIT_NANO = 4_000_000  # room for a few dozen of the calls below, far fewer than are tried
POLICY = {"version": 1, "id": "guarantee", "mode": "enforce", "estimation": "strict", "rules": [
    {"id": "shared", "max_output_tokens": 64,
     "caps": [{"limit_usd": LIMIT_USD, "window": "day", "action": "block"}]}]}
PROCESSES, THREADS, CALLS_PER_THREAD = 4, 16, 3
PROVIDER_ERRORS = 6
MODEL = "gpt-4o-mini"


def _worker(base_url: str, home: str, ledger_url: str, index: int, barrier: Any) -> dict[str, Any]:
    import openai
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from agentguard_otel import AgentGuardBlocked, AgentGuardInstrumentor

    reader = InMemoryMetricReader()
    instrumentor = AgentGuardInstrumentor()
    instrumentor.instrument(policy=POLICY, signing_key=f"{home}/key", ledger=ledger_url,
                            receipts=f"{home}/receipts", meter_provider=MeterProvider(metric_readers=[reader]))
    client = openai.OpenAI(base_url=base_url, api_key="sk-test", max_retries=0)
    counts: Counter[str] = Counter()
    lock = threading.Lock()

    def one(serial: int) -> str:
        messages: Any = [{"role": "user", "content": "x" * (40 + 97 * (serial % 7))}]  # mixed call sizes
        style = serial % 4
        try:
            if style < 2:
                client.chat.completions.create(model=MODEL, messages=messages)
                return "admitted"
            stream: Any = client.chat.completions.create(model=MODEL, messages=messages, stream=True)
            for seen, _chunk in enumerate(stream):
                if style == 2 and seen == 3:
                    break  # abandoned half-way
            stream.close()
            return "admitted"
        except AgentGuardBlocked:
            return "blocked"
        except openai.APIError:
            return "provider_error"

    def run(thread: int) -> None:
        for j in range(CALLS_PER_THREAD):
            outcome = one((index * THREADS + thread) * CALLS_PER_THREAD + j)
            with lock:
                counts[outcome] += 1

    barrier.wait()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    instrumentor.uninstrument()
    data = reader.get_metrics_data()
    cost_usd = sum(getattr(point, "value", 0.0) for resource in (data.resource_metrics if data else [])
                   for scope in resource.scope_metrics for metric in scope.metrics
                   if metric.name == "agentguard.cost" for point in metric.data.data_points)
    return {"counts": dict(counts), "cost_usd": cost_usd}


@pytest.fixture(scope="module")
def fleet() -> Iterator[tuple[Pool, SyncManager]]:
    """Spawned worker processes, kept for both ledgers: importing the SDKs is most of a cold start."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager, ctx.Pool(PROCESSES) as pool:
        yield pool, manager


@pytest.fixture(params=["redis", "sqlite"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    redis_server: RedisServer = request.getfixturevalue("redis_server")
    return redis_server.url(prefix=f"fleet-{uuid.uuid4().hex}:")


def test_a_fleet_never_exceeds_one_cap(tmp_path: Path, server: Any, ledger_url: str,
                                       fleet: tuple[Pool, SyncManager]) -> None:
    SigningKey.generate(tmp_path / "key")
    server.fail_next(500, count=PROVIDER_ERRORS)  # the server lives in this process: shared by all workers
    pool, manager = fleet
    barrier = manager.Barrier(PROCESSES)
    results = pool.starmap(_worker, [(server.base_url, str(tmp_path), ledger_url, i, barrier)
                                     for i in range(PROCESSES)], chunksize=1)
    counts: Counter[str] = Counter()
    for result in results:
        counts.update(result["counts"])
    assert sum(counts.values()) == PROCESSES * THREADS * CALLS_PER_THREAD
    assert counts["admitted"] > 0 and counts["blocked"] > 0, "the cap must bind for the test to mean anything"
    assert counts["provider_error"] == PROVIDER_ERRORS
    assert len(server.requests) == counts["admitted"] + PROVIDER_ERRORS  # blocked calls stayed in the process

    with open_ledger(ledger_url) as ledger:
        (state,) = ledger.states()
    assert state.held_nano == 0
    assert state.spent_nano <= LIMIT_NANO

    report = verify([tmp_path / "receipts"], load_public_keys([tmp_path / "key.pub"]))
    assert report.ok, report.first_error
    assert len(report.chains) == PROCESSES
    receipts = [json.loads(line) for path in (tmp_path / "receipts").glob("*.ndjson")
                for line in path.read_text().splitlines()]
    settled = [r for r in receipts if r["kind"] == "settlement"]
    decisions = [r for r in receipts if r["kind"] == "decision"]
    assert sum(r["action"] == "block" for r in decisions) == counts["blocked"]
    assert len(settled) == counts["admitted"] + PROVIDER_ERRORS
    outcomes = Counter(r["outcome"] for r in settled)
    assert outcomes["error"] == PROVIDER_ERRORS and outcomes["abandoned"] > 0 and outcomes["ok"] > 0
    assert not any(r["degraded"] for r in receipts if r["kind"] != "checkpoint")
    assert all(r["overshoot_nano"] == 0 for r in settled)  # strict: every actual within its reservation
    assert state.spent_nano == sum(r["actual_nano"] for r in settled)
    metric_nano = sum(result["cost_usd"] for result in results) * NANO_PER_USD
    assert abs(metric_nano - state.spent_nano) < len(settled)  # a double per call, off by rounding only
