"""Added latency per guarded call, and guard decisions per second.

Not a test: run ``python benchmarks/overhead.py`` and copy the table into the README.

Latency: the real ``openai`` SDK against the demo's local OpenAI-wire endpoint, in alternating blocks of
bare and guarded calls within one run (the machine is shared and noisy, so only same-run
comparisons mean anything). Added latency = median(guarded) - median(bare), reported with the
ratio. Each guarded call makes a reservation, signs a decision receipt, settles and signs a
settlement receipt, and emits a span, metrics and two log records to SDK providers with no-op
exporters.

Throughput: 16 threads calling the guard directly (decide + reserve + sign, then settle + sign),
no SDK and no network: the ceiling a process's governance can sustain.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider

from agentguard_otel import AgentGuardInstrumentor
from agentguard_otel.call import LLMRequest, ResponseInfo
from agentguard_otel.demo.server import DemoServer
from agentguard_otel.pricing import TokenUsage
from agentguard_otel.receipts import SigningKey

POLICY = {"version": 1, "id": "bench", "mode": "enforce", "rules": [
    {"id": "team", "match": {"team": "*"}, "per": "user", "max_output_tokens": 256,
     "caps": [{"limit_usd": 1_000_000, "window": "day", "action": "block"},
              {"limit_usd": 1_000_000, "window": "minute", "action": "block"}]}]}
MESSAGES = [{"role": "user", "content": "Review this diff and list the risky changes."}]


def _instrument(workdir: Path, ledger: str) -> AgentGuardInstrumentor:
    key = workdir / "bench.key"
    if not key.exists():
        SigningKey.generate(key)
    instrumentor = AgentGuardInstrumentor()
    instrumentor.instrument(policy=POLICY, signing_key=str(key), ledger=ledger, receipts=str(workdir / "receipts"),
                            tracer_provider=TracerProvider(), meter_provider=MeterProvider(),
                            logger_provider=LoggerProvider())
    return instrumentor


def _time(call: Callable[[], Any], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


def latency(ledger: str, stream: bool, rounds: int, block: int) -> tuple[float, float]:
    """(median bare µs, median guarded µs) over interleaved blocks."""
    from agentguard_otel import scope

    with DemoServer() as server, tempfile.TemporaryDirectory() as tmp:
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-bench", max_retries=0)

        def call() -> None:
            if stream:
                for _ in client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True,
                                                        stream_options={"include_usage": True}):
                    pass
            else:
                client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

        ledger_url = ledger.format(tmp=tmp)
        _time(call, block)  # warm connections and caches
        bare: list[float] = []
        guarded: list[float] = []
        for _ in range(rounds):
            bare += _time(call, block)
            instrumentor = _instrument(Path(tmp), ledger_url)
            with scope(team="eng", user="alice"):
                guarded += _time(call, block)
            instrumentor.uninstrument()
        return statistics.median(bare) * 1e6, statistics.median(guarded) * 1e6


def throughput(ledger: str, threads: int, seconds: float) -> float:
    """Guard decisions (with settlement) per second across ``threads`` threads."""
    from agentguard_otel import scope

    with tempfile.TemporaryDirectory() as tmp:
        instrumentor = _instrument(Path(tmp), ledger.format(tmp=tmp))
        guard = instrumentor.guard
        assert guard is not None
        request = LLMRequest(provider="openai", price_provider="openai", operation="chat", model="gpt-4o-mini",
                             stream=False, input_bytes=200, input_items=1, input_images=0, max_output_tokens=256)
        info = ResponseInfo(usage=TokenUsage(input_tokens=50, output_tokens=24), response_model="gpt-4o-mini")
        counts = [0] * threads
        stop = time.perf_counter() + seconds

        def work(i: int) -> None:
            with scope(team="eng", user=f"user{i % 4}"):
                while time.perf_counter() < stop:
                    guard.begin(request).finish(info)
                    counts[i] += 1

        workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        instrumentor.uninstrument()
        return sum(counts) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--block", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    ledgers = {"memory": "memory://", "sqlite": "sqlite:///{tmp}/ledger.db"}
    print("| ledger | call | bare median | guarded median | added | ratio |")
    print("|---|---|---|---|---|---|")
    for name, url in ledgers.items():
        for stream in (False, True):
            bare, guarded = latency(url, stream, args.rounds, args.block)
            kind = "stream" if stream else "non-stream"
            print(f"| {name} | {kind} | {bare:.0f} µs | {guarded:.0f} µs | {guarded - bare:.0f} µs "
                  f"| {guarded / bare:.2f}× |", flush=True)
    print()
    print("| ledger | threads | decisions/s (decide + settle, 2 signed receipts each) |")
    print("|---|---|---|")
    for name, url in ledgers.items():
        print(f"| {name} | 16 | {throughput(url, 16, args.seconds):,.0f} |", flush=True)


if __name__ == "__main__":
    main()
