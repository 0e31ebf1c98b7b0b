"""Receipt faults, for real: a process killed in the middle of a receipt append (the torn line is
reported by ``agentguard verify`` with its file and line, and the next process continues cleanly in
a segment of its own), and a receipts directory on a tiny tmpfs that fills up under a real
``openai`` client (``failure_mode: closed`` blocks before the provider and leaves no hold; ``open``
lets calls through marked degraded; both resume by themselves once there is room again, and what
was written verifies, with at most a torn last line)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import openai
import pytest

from agentguard_otel import AgentGuardBlocked, AgentGuardInstrumentor
from agentguard_otel.cli import main as agentguard
from agentguard_otel.ledger import open_ledger
from agentguard_otel.money import NANO_PER_USD
from agentguard_otel.receipts import SigningKey, load_public_keys, verify
from tests.conftest import Telemetry

MODEL = "gpt-4o-mini"
MESSAGES: Any = [{"role": "user", "content": "Summarise the incident report."}]
TORN_AFTER_CALLS = 3  # complete calls (a decision and a settlement receipt each) before the crash


def policy(failure_mode: str = "closed") -> dict[str, Any]:
    return {"version": 1, "id": "receipt-faults", "mode": "enforce", "failure_mode": failure_mode,
            "rules": [{"id": "team", "max_output_tokens": 64,
                       "caps": [{"limit_usd": 5, "window": "day", "action": "block"}]}]}


def call(base_url: str) -> Any:
    client = openai.OpenAI(base_url=base_url, api_key="sk-test", max_retries=0)
    return client.chat.completions.create(model=MODEL, messages=MESSAGES)


def _instrument(home: str) -> AgentGuardInstrumentor:
    instrumentor = AgentGuardInstrumentor()
    instrumentor.instrument(policy=policy(), signing_key=f"{home}/key", ledger=f"sqlite:///{home}/ledger.db",
                            receipts=f"{home}/receipts")
    return instrumentor


def _crash_mid_append(base_url: str, home: str) -> None:
    """Make complete calls, then die by SIGKILL in the middle of the next receipt's write: half the
    line reaches the file, as when a host loses power or the OOM killer strikes during ``write``."""
    _instrument(home)
    for _ in range(TORN_AFTER_CALLS):
        call(base_url)
    real_write = os.write
    receipts = os.path.realpath(f"{home}/receipts")

    def torn_write(fd: int, data: Any) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").startswith(receipts + os.sep):
            real_write(fd, bytes(data)[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        return real_write(fd, data)

    with mock.patch("os.write", torn_write):
        call(base_url)


def _carry_on(base_url: str, home: str, calls: int) -> str:
    """A fresh process on the same receipts directory: returns its chain id."""
    instrumentor = _instrument(home)
    guard = instrumentor.guard
    assert guard is not None
    chain = guard.receipts.chain
    for _ in range(calls):
        call(base_url)
    instrumentor.uninstrument()
    return chain


def test_a_writer_killed_mid_append_leaves_one_reported_torn_line(
        tmp_path: Path, server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    SigningKey.generate(tmp_path / "key")
    public_key = str(tmp_path / "key.pub")
    receipts = tmp_path / "receipts"
    ctx = multiprocessing.get_context("spawn")
    doomed = ctx.Process(target=_crash_mid_append, args=(server.base_url, str(tmp_path)))
    doomed.start()
    doomed.join(60)
    assert doomed.exitcode == -signal.SIGKILL
    assert len(server.requests) == TORN_AFTER_CALLS  # it died writing the decision, before sending

    (torn_file,) = receipts.glob("*.ndjson")
    torn_bytes = torn_file.read_bytes()
    complete, _, tail = torn_bytes.rpartition(b"\n")
    torn_line = 2 * TORN_AFTER_CALLS + 1
    assert complete.count(b"\n") + 1 == torn_line - 1 and tail and not tail.endswith(b"\n")

    assert agentguard(["verify", str(receipts), "--public-key", public_key]) == 1
    out = capsys.readouterr().out
    assert f"TORN LINE: {torn_file}:{torn_line} (an append was interrupted)" in out
    assert f"FAILED: {torn_file}:{torn_line} chain None seq None: torn last line" in out

    with ctx.Pool(1) as pool:
        chain = pool.apply(_carry_on, (server.base_url, str(tmp_path), 2))
    assert torn_file.read_bytes() == torn_bytes  # nobody appended to, or patched, the torn segment
    new_files = sorted(set(receipts.glob("*.ndjson")) - {torn_file})
    assert [f.name for f in new_files] == [f"{chain.replace(':', '_')}.00000.ndjson"]
    keys = load_public_keys([public_key])
    fresh = verify(new_files, keys)
    assert fresh.ok, fresh.first_error
    assert list(fresh.chains) == [chain] and fresh.chains[chain]["receipts"] == 2 * 2 + 1  # + final checkpoint

    assert agentguard(["verify", str(receipts), "--public-key", public_key, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["torn"] == [{"file": str(torn_file), "line": torn_line}]
    assert report["chains"][chain] == fresh.chains[chain]
    assert report["receipts"] == 2 * TORN_AFTER_CALLS + fresh.receipts
    _assert_only_torn_tails(receipts, keys, max_torn=1)


# -- disk full ------------------------------------------------------------------------------------


def _assert_only_torn_tails(receipts: Path, keys: Any, *, max_torn: int) -> None:
    """Everything written verifies except, at most, an interrupted last line of a segment: a copy
    without those partial tails is a clean set of chains (no corrupted middle, no gap)."""
    report = verify([receipts], keys)
    assert len(report.torn) <= max_torn
    clean = receipts.parent / f"{receipts.name}-without-torn-tails"
    clean.mkdir()
    for path in receipts.glob("*.ndjson"):
        data = path.read_bytes()
        lines = data.count(b"\n") + (not data.endswith(b"\n"))
        if (str(path), lines) in report.torn:
            data = data[: data.rfind(b"\n") + 1]
        (clean / path.name).write_bytes(data)
    stripped = verify([clean], keys)
    assert stripped.ok, stripped.first_error
    assert stripped.receipts == report.receipts


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs mounted as the receipts directory (needs root / CAP_SYS_ADMIN)."""
    directory = tmp_path / "receipts"
    directory.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(directory)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the disk-full test: {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=True)


def _grow(directory: Path) -> None:
    subprocess.run(["mount", "-o", "remount,size=1m", str(directory)], check=True, capture_output=True)


def _cost_metric_nano(otel: Telemetry) -> float:
    return float(sum(point.value for point in otel.metric_points("agentguard.cost")) * NANO_PER_USD)


def _ledger_totals(url: str) -> tuple[int, int]:
    with open_ledger(url) as ledger:
        (state,) = ledger.states()
    return state.spent_nano, state.held_nano


def _start(tmp_path: Path, receipts: Path, otel: Telemetry, failure_mode: str) -> tuple[AgentGuardInstrumentor, str]:
    SigningKey.generate(tmp_path / "key")
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    instrumentor = AgentGuardInstrumentor()
    instrumentor.instrument(policy=policy(failure_mode), signing_key=str(tmp_path / "key"), ledger=ledger,
                            receipts=str(receipts), tracer_provider=otel.tracer_provider,
                            meter_provider=otel.meter_provider, logger_provider=otel.logger_provider)
    return instrumentor, ledger


MAX_CALLS = 200  # 64 KiB holds a few dozen receipts: the disk is full long before this


def test_disk_full_closed_blocks_before_the_provider_and_recovers(
        tmp_path: Path, tiny_disk: Path, server: Any, otel: Telemetry) -> None:
    instrumentor, ledger = _start(tmp_path, tiny_disk, otel, "closed")
    try:
        admitted, reasons = 0, []
        for _ in range(MAX_CALLS):
            try:
                call(server.base_url)
                admitted += 1
            except AgentGuardBlocked as blocked:
                assert blocked.action == "block" and blocked.receipt_hash is None
                reasons.append(blocked.reason)
                if len(reasons) == 3:
                    break
        assert len(reasons) == 3, "the 64 KiB receipts disk never filled up"
        assert admitted > 0
        assert len(server.requests) == admitted  # every blocked call stayed in the process
        assert all(r.startswith("receipts unavailable (failure_mode closed): ") and str(tiny_disk) in r
                   for r in reasons)
        assert f"cannot write receipts in {tiny_disk}: No space left on device" in reasons[-1]
        spent, held = _ledger_totals(ledger)
        assert held == 0  # the blocked calls' holds were released
        assert abs(spent - _cost_metric_nano(otel)) < admitted  # only admitted calls spent

        _grow(tiny_disk)
        call(server.base_url)  # resumes by itself: no restart, no reconfiguration
        assert len(server.requests) == admitted + 1
        assert not otel.finished()[-1].attributes.get("agentguard.degraded", False)
    finally:
        instrumentor.uninstrument()
    _assert_only_torn_tails(tiny_disk, load_public_keys([tmp_path / "key.pub"]), max_torn=1)


def test_disk_full_open_lets_calls_through_marked_degraded(
        tmp_path: Path, tiny_disk: Path, server: Any, otel: Telemetry, caplog: pytest.LogCaptureFixture) -> None:
    instrumentor, ledger = _start(tmp_path, tiny_disk, otel, "open")
    try:
        degraded: list[bool] = []
        for _ in range(MAX_CALLS):
            assert call(server.base_url).choices[0].message.content
            degraded = [s.attributes.get("agentguard.degraded", False) for s in otel.finished()]
            if degraded[-3:] == [True] * 3:
                break
        assert degraded[-3:] == [True] * 3, "the 64 KiB receipts disk never filled up"
        assert degraded[0] is False
        calls = len(degraded)
        assert len(server.requests) == calls  # open: nothing blocked
        assert f"cannot write receipts in {tiny_disk}: No space left on device" in caplog.text
        spent, held = _ledger_totals(ledger)
        assert held == 0
        assert abs(spent - _cost_metric_nano(otel)) < calls  # degraded calls are still counted and settled

        _grow(tiny_disk)
        call(server.base_url)
        assert not otel.finished()[-1].attributes.get("agentguard.degraded", False)
    finally:
        instrumentor.uninstrument()
    _assert_only_torn_tails(tiny_disk, load_public_keys([tmp_path / "key.pub"]), max_torn=1)
