"""The fleet guarantee across hosts, not over loopback: three network namespaces made by the test,
each joined by a veth pair to a bridge in the root namespace, private addresses the test assigns
(10.231.N.0/24), one ``redis-server`` bound only to the bridge address. In each namespace a worker
process (its own provider on its own loopback, a real ``openai`` client guarded by agentguard, many
threads) hammers one shared cap over the network. Strict estimation: admitted spend never passes the
cap; afterwards nothing is held and spent = the sum of every host's settlement receipts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from agentguard_otel.ledger import open_ledger
from agentguard_otel.receipts import SigningKey, load_public_keys, verify
from tests.redis_server import REDIS_SERVER, free_port

HOSTS, THREADS, CALLS_PER_THREAD = 3, 8, 4
LIMIT_USD, LIMIT_NANO = "0.002", 2_000_000  # room for a dozen or so of the calls, far fewer than are tried
POLICY = {"version": 1, "id": "multihost", "mode": "enforce", "estimation": "strict", "rules": [
    {"id": "fleet", "max_output_tokens": 64, "caps": [{"limit_usd": LIMIT_USD, "window": "day", "action": "block"}]}]}
REPO = Path(__file__).resolve().parents[2]


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Network:
    """The test's namespaces: ``namespaces[i]`` has address ``host_address(i)``; Redis listens on
    ``bridge_address`` in the root namespace."""

    namespaces: list[str]
    subnet: str

    @property
    def bridge_address(self) -> str:
        return f"{self.subnet}.1"

    def host_address(self, index: int) -> str:
        return f"{self.subnet}.{10 + index}"


@pytest.fixture
def network() -> Iterator[Network]:
    if shutil.which("ip") is None:
        pytest.skip("the `ip` command (Debian package iproute2) is not installed")
    tag = f"{os.getpid() % 100000}"
    bridge, namespaces = f"agbr{tag}", [f"agentguard-{tag}-{i}" for i in range(HOSTS)]
    probe = subprocess.run(["ip", "netns", "add", namespaces[0]], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create network namespaces here: {probe.stderr.strip()}")
    net = Network(namespaces, f"10.231.{20 + os.getpid() % 200}")
    try:
        ip("link", "add", bridge, "type", "bridge")
        ip("addr", "add", f"{net.bridge_address}/24", "dev", bridge)
        ip("link", "set", bridge, "up")
        for i, namespace in enumerate(namespaces):
            if i:
                ip("netns", "add", namespace)
            outer, inner = f"agv{tag}h{i}", f"agp{tag}h{i}"
            ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            ip("link", "set", outer, "master", bridge)
            ip("link", "set", outer, "up")
            ip("link", "set", inner, "netns", namespace)
            ip("-n", namespace, "addr", "add", f"{net.host_address(i)}/24", "dev", inner)
            ip("-n", namespace, "link", "set", inner, "up")
            ip("-n", namespace, "link", "set", "lo", "up")  # the worker's own provider listens there
        yield net
    finally:
        for namespace in namespaces:  # deleting a namespace deletes its veth pair too
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


@pytest.fixture
def fleet_redis(network: Network, tmp_path: Path) -> Iterator[str]:
    """A redis-server reachable only on the bridge address (protected mode off: the address is private
    to this test's namespaces)."""
    port = free_port()
    directory = tmp_path / "redis"
    directory.mkdir()
    process = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", network.bridge_address, "--protected-mode", "no",
         "--save", "", "--appendonly", "no", "--dir", str(directory), "--logfile", str(directory / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(host=network.bridge_address, port=port, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert process.poll() is None and time.monotonic() < deadline, (
                    (directory / "redis.log").read_text(errors="replace"))
                time.sleep(0.02)
        client.close()
        yield f"redis://{network.bridge_address}:{port}/0?timeout=5"
    finally:
        process.kill()
        process.wait(10)


def test_hosts_in_separate_network_namespaces_never_exceed_one_cap(
        network: Network, fleet_redis: str, tmp_path: Path) -> None:
    SigningKey.generate(tmp_path / "key")
    go = tmp_path / "go"
    workers: list[subprocess.Popen[str]] = []
    try:
        for i, namespace in enumerate(network.namespaces):
            config = {"ledger": fleet_redis, "policy": POLICY, "key": str(tmp_path / "key"),
                      "receipts": str(tmp_path / f"receipts-{i}"), "go": str(go), "model": "gpt-4o-mini",
                      "threads": THREADS, "calls": CALLS_PER_THREAD}
            workers.append(subprocess.Popen(
                ["ip", "netns", "exec", namespace, sys.executable, "-m", "tests.fleet.netns_worker",
                 json.dumps(config)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        for worker in workers:
            assert worker.stdout is not None
            line = worker.stdout.readline().strip()
            assert line == "ready", worker.communicate(timeout=10)[1]
        go.touch()
        results = []
        for worker in workers:
            out, err = worker.communicate(timeout=120)
            assert worker.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(10)

    # Each host reached Redis from its own namespace address, over its veth link, not over loopback.
    assert [r["source"] for r in results] == [network.host_address(i) for i in range(HOSTS)]
    counts: Counter[str] = Counter()
    for result in results:
        counts.update(result["counts"])
        assert result["provider_requests"] == result["counts"].get("admitted", 0)  # blocked calls never left
    assert sum(counts.values()) == HOSTS * THREADS * CALLS_PER_THREAD
    assert counts["admitted"] > 0 and counts["blocked"] > 0, "the cap must bind for the test to mean anything"

    with open_ledger(fleet_redis) as ledger:
        (state,) = ledger.states()
    assert state.held_nano == 0
    assert state.spent_nano <= LIMIT_NANO  # to the nano-dollar, across hosts

    receipt_dirs = [tmp_path / f"receipts-{i}" for i in range(HOSTS)]
    report = verify(receipt_dirs, load_public_keys([tmp_path / "key.pub"]))
    assert report.ok, report.first_error
    assert len(report.chains) == HOSTS
    receipts = [json.loads(line) for d in receipt_dirs for path in d.glob("*.ndjson")
                for line in path.read_text().splitlines()]
    settled = [r for r in receipts if r["kind"] == "settlement"]
    assert len(settled) == counts["admitted"]
    assert sum(r["action"] == "block" for r in receipts if r["kind"] == "decision") == counts["blocked"]
    assert not any(r["degraded"] for r in receipts if r["kind"] != "checkpoint")
    assert state.spent_nano == sum(r["actual_nano"] for r in settled)
