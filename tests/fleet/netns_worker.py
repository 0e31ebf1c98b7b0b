"""One "host" of the multi-host test, run inside its own network namespace by
``ip netns exec NS python -m tests.fleet.netns_worker CONFIG_JSON``.

It serves its own OpenAI-wire provider on the namespace's loopback, instruments agentguard against
the shared Redis ledger across the namespace's veth link, prints ``ready``, waits for the test's go
file (so every host starts hammering at once), runs its threads and prints one JSON result line."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openai

from agentguard_otel import AgentGuardBlocked, AgentGuardInstrumentor
from tests.servers.openai_server import LocalOpenAIServer


def run(config: dict[str, Any]) -> dict[str, Any]:
    ledger = urlsplit(config["ledger"])
    with socket.create_connection((ledger.hostname, ledger.port), timeout=5) as probe:
        source = probe.getsockname()[0]  # the address this host reaches Redis from
    with LocalOpenAIServer() as provider:
        instrumentor = AgentGuardInstrumentor()
        instrumentor.instrument(policy=config["policy"], signing_key=config["key"], ledger=config["ledger"],
                                receipts=config["receipts"])
        client = openai.OpenAI(base_url=provider.base_url, api_key="sk-test", max_retries=0)
        counts: Counter[str] = Counter()
        lock = threading.Lock()

        def thread(index: int) -> None:
            for serial in range(config["calls"]):
                size = 40 + 97 * ((index * config["calls"] + serial) % 7)  # mixed call sizes
                try:
                    client.chat.completions.create(model=config["model"],
                                                   messages=[{"role": "user", "content": "x" * size}])
                    outcome = "admitted"
                except AgentGuardBlocked:
                    outcome = "blocked"
                with lock:
                    counts[outcome] += 1

        print("ready", flush=True)
        go = Path(config["go"])
        deadline = time.monotonic() + 60
        while not go.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no go signal at {go}")
            time.sleep(0.01)
        threads = [threading.Thread(target=thread, args=(i,)) for i in range(config["threads"])]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        instrumentor.uninstrument()
        return {"source": source, "counts": dict(counts), "provider_requests": len(provider.requests)}


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.argv[1]))), flush=True)
