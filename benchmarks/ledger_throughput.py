"""Ledger throughput: reserve + settle pairs per second, and the latency of one pair, for the
memory, SQLite and Redis ledgers, from 1 and from 4 processes (4 threads each).

Not a test: run ``python benchmarks/ledger_throughput.py`` (it starts its own ``redis-server`` on
127.0.0.1, without persistence, unless ``--redis URL`` names one) and copy the markdown table into
the README. Each pair reserves against two counters (a daily cap and a per-user minute cap), as a
guarded call under two caps does, and settles at once. ``memory://`` is per process, so its
4-process figure is 4 independent ledgers, not a shared cap.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from agentguard_otel.ledger import CounterSpec, open_ledger

THREADS = 4
COUNTERS = [CounterSpec("team=eng", 10**15, "day", timezone="Europe/Berlin"),
            CounterSpec("user=alice", 10**15, "minute")]


def _run(url: str, seconds: float, barrier: Any) -> tuple[int, list[float]]:
    """Reserve+settle pairs from THREADS threads for ``seconds``, once every process is ready."""
    ledger = open_ledger(url)
    hold = ledger.reserve(COUNTERS, 1_000, 60).hold_id  # connect, load the scripts, create the files
    assert hold is not None
    ledger.settle(hold, 900)
    latencies: list[list[float]] = [[] for _ in range(THREADS)]
    barrier.wait()
    start_at = time.time()

    def work(index: int) -> None:
        mine = latencies[index]
        stop = start_at + seconds
        while (now := time.perf_counter()) and time.time() < stop:
            hold = ledger.reserve(COUNTERS, 1_000, 60).hold_id
            assert hold is not None
            ledger.settle(hold, 900)
            mine.append(time.perf_counter() - now)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ledger.close()
    flat = [value for chunk in latencies for value in chunk]
    return len(flat), flat


def measure(url: str, processes: int, seconds: float) -> tuple[float, float, float]:
    """Pairs per second (all processes together), median and p99 latency of a pair in ms."""
    if processes == 1:
        results = [_run(url, seconds, threading.Barrier(1))]
    else:
        context = multiprocessing.get_context("spawn")
        with context.Manager() as manager, context.Pool(processes) as pool:
            barrier = manager.Barrier(processes)
            results = pool.starmap(_run, [(url, seconds, barrier)] * processes)
    count = sum(n for n, _ in results)
    latencies = sorted(value for _, values in results for value in values)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return count / seconds, statistics.median(latencies) * 1000, p99 * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per row")
    parser.add_argument("--redis", help="redis:// URL of a running server (default: start one)")
    args = parser.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="agentguard-bench-"))
    server: subprocess.Popen[bytes] | None = None
    redis_url = args.redis
    try:
        if redis_url is None:
            port = 46_379
            server = subprocess.Popen([shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(port),
                                       "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(home)],
                                      stdout=subprocess.DEVNULL)
            time.sleep(0.5)
            redis_url = f"redis://127.0.0.1:{port}/0"
        rows: list[tuple[str, int, tuple[float, float, float]]] = []
        for name in ("memory", "sqlite", "redis"):
            for processes in (1, 4):
                url = {"memory": "memory://", "sqlite": f"sqlite:///{home / uuid.uuid4().hex}.db",
                       "redis": f"{redis_url}?prefix=bench-{uuid.uuid4().hex}:"}[name]
                rows.append((name, processes, measure(url, processes, args.seconds)))
                print(f"{name} x{processes}: {rows[-1][2][0]:,.0f} pairs/s", file=sys.stderr)
        print("| ledger | processes x threads | reserve+settle pairs/s | median pair (ms) | p99 pair (ms) |\n"
              "|---|---|---:|---:|---:|")
        for name, processes, (rate, median, p99) in rows:
            print(f"| {name} | {processes} x {THREADS} | {rate:,.0f} | {median:.3f} | {p99:.3f} |")
    finally:
        if server is not None:
            server.kill()
            server.wait()
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
