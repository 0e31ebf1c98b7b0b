"""The ledger guarantee through the whole stack: 4 processes x 8 threads, each a real ``openai``
client guarded against one shared SQLite ledger, hammer one daily cap. Admitted spend never
passes the cap, no hold is left, and spent equals the sum of the settlement receipts."""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path
from typing import Any

from agentguard_otel.ledger import open_ledger
from agentguard_otel.receipts import SigningKey, load_public_keys, verify

LIMIT_NANO = 2_000_000  # $0.002: room for a few dozen of the calls below, far fewer than are tried
POLICY = {"version": 1, "id": "guarantee", "mode": "enforce", "estimation": "strict", "rules": [
    {"id": "shared", "max_output_tokens": 64,
     "caps": [{"limit_usd": "0.002", "window": "day", "action": "block"}]}]}
PROCESSES, THREADS, CALLS_PER_THREAD = 4, 8, 6


def _worker(base_url: str, home: str, barrier: Any) -> tuple[int, int]:
    import openai

    from agentguard_otel import AgentGuardBlocked, AgentGuardInstrumentor

    instrumentor = AgentGuardInstrumentor()
    instrumentor.instrument(policy=POLICY, signing_key=f"{home}/key", ledger=f"sqlite:///{home}/ledger.db",
                            receipts=f"{home}/receipts")
    client = openai.OpenAI(base_url=base_url, api_key="sk-test", max_retries=0)
    counts = {"admitted": 0, "blocked": 0}
    lock = threading.Lock()

    def run(i: int) -> None:
        for j in range(CALLS_PER_THREAD):
            content = "x" * (50 + 37 * ((i * CALLS_PER_THREAD + j) % 9))  # mixed call sizes
            try:
                client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": content}])
                outcome = "admitted"
            except AgentGuardBlocked:
                outcome = "blocked"
            with lock:
                counts[outcome] += 1

    barrier.wait()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    instrumentor.uninstrument()
    return counts["admitted"], counts["blocked"]


def test_four_processes_never_exceed_one_cap(tmp_path: Path, server: Any) -> None:
    SigningKey.generate(tmp_path / "key")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Manager().Barrier(PROCESSES)
    with ctx.Pool(PROCESSES) as pool:
        results = pool.starmap(_worker, [(server.base_url, str(tmp_path), barrier)] * PROCESSES)
    admitted = sum(a for a, _ in results)
    blocked = sum(b for _, b in results)
    assert admitted + blocked == PROCESSES * THREADS * CALLS_PER_THREAD
    assert admitted > 0 and blocked > 0, "the cap must bind for the test to mean anything"
    assert len(server.requests) == admitted  # every blocked call stayed in the process

    ledger = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    (state,) = ledger.states()
    ledger.close()
    assert state.held_nano == 0
    assert state.spent_nano <= LIMIT_NANO

    report = verify([tmp_path / "receipts"], load_public_keys([tmp_path / "key.pub"]))
    assert report.ok, report.first_error
    assert len(report.chains) == PROCESSES
    import json
    settlements = [json.loads(line) for path in (tmp_path / "receipts").glob("*.ndjson")
                   for line in path.read_text().splitlines()]
    settled = [r for r in settlements if r["kind"] == "settlement"]
    decisions = [r for r in settlements if r["kind"] == "decision"]
    assert len(settled) == admitted
    assert sum(r["action"] == "block" for r in decisions) == blocked
    assert state.spent_nano == sum(r["actual_nano"] for r in settled)
    assert sum(r["estimated_nano"] for r in decisions if r["action"] == "allow") >= state.spent_nano
