"""``agentguard verify --trace ID|latest``: the chains holding a trace's receipts verified whole, then
that trace's decisions and settlements; on receipts of real guarded calls traced by the OTel SDK."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import pytest

from agentguard_otel.cli import main
from agentguard_otel.scope import scope
from tests.console.support import Filled, tampered_copy


def _trace(filled: Filled) -> str:
    ids = {r["trace_id"] for r in filled.guarded.receipts()}
    assert len(ids) == 1 and None not in ids  # every call ran in the one "agent run" span
    return ids.pop()


def test_trace_prints_its_decisions_and_settlements(filled: Filled, capsys: pytest.CaptureFixture[str]) -> None:
    trace = _trace(filled)
    assert main(["verify", str(filled.receipts), "--public-key", str(filled.public_key), "--trace",
                 trace.upper()]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"trace {trace}: 15 receipt(s); the chain(s) holding them verified whole:")
    assert "OK: every receipt verifies against the trusted keys" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("20")]
    # acme's four calls, globex's two settled and one blocked, the markup tenant's one, in log order.
    assert [row[1] for row in rows] == ["decision", "settlement"] * 6 + ["decision"] + ["decision", "settlement"]
    downgrade = next(line for line in out.splitlines() if " downgrade " in line)
    assert "gpt-4o -> gpt-4o-mini" in downgrade and "est. $0.0000489" in downgrade
    assert "team task budget: downgraded to gpt-4o-mini" in downgrade
    block = next(line for line in out.splitlines() if " block " in line)
    assert "est. $0.0008175" in block and "tenant daily budget spent" in block
    assert sum(" settlement " in line and "$0.000265 " in line for line in out.splitlines()) == 3
    # Caller text from a receipt reaches the terminal escaped, never as control characters.
    assert "\x1b" not in out


def test_trace_latest_is_the_newest_receipts_trace(filled: Filled, guarded: Any, server: Any, otel: Any,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    first = _trace(filled)
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-test-secret", max_retries=0)
    with otel.tracer_provider.get_tracer("t").start_as_current_span("later") as span, scope(tenant="initech"):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    later = f"{span.get_span_context().trace_id:032x}"
    assert later != first
    assert main(["verify", str(filled.receipts), "--public-key", str(filled.public_key), "--trace", "latest",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["trace_id"] == later and report["verification"]["ok"] is True
    assert [(r["kind"], r["scope"]["tenant"]) for r in report["receipts"]] == \
        [("decision", "initech"), ("settlement", "initech")]
    # Both receipts name the guard's own span of the call, a child of the caller's.
    spans = {r["span_id"] for r in report["receipts"]}
    assert len(spans) == 1 and re.fullmatch(r"[0-9a-f]{16}", spans.pop() or "")
    assert f"{span.get_span_context().span_id:016x}" not in spans


def test_trace_not_found_or_malformed(filled: Filled, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["verify", str(filled.receipts), "--public-key", str(filled.public_key), "--trace"]
    assert main([*args, "0" * 31 + "1"]) == 1
    assert f"trace {'0' * 31}1: no receipts of it in {filled.receipts}" in capsys.readouterr().err
    assert main([*args, "not-a-trace"]) == 2
    assert "--trace takes a trace id (32 hex digits" in capsys.readouterr().err


def test_trace_of_untraced_receipts(guarded: Any, server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    handle = guarded(None, tracer_provider=None)  # the global (no-op) tracer: no span, no trace id
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-test-secret", max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert {r["trace_id"] for r in handle.receipts()} == {None}
    assert main(["verify", str(handle.home / "receipts"), "--public-key", f"{handle.key_path}.pub",
                 "--trace", "latest"]) == 1
    assert "no receipt in these files carries a trace id" in capsys.readouterr().err


def test_trace_fails_when_its_chain_does(filled: Filled, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = _trace(filled)
    segment = tampered_copy(filled.receipts, tmp_path / "copy", 2, '"actual_nano":265000', '"actual_nano":1')
    assert main(["verify", str(tmp_path / "copy"), "--public-key", str(filled.public_key), "--trace", trace]) == 1
    out = capsys.readouterr().out
    assert f"FAILED: {segment}:2 chain" in out and "hash mismatch: the receipt was edited" in out


def test_verify_trace_latest_after_the_demo(tmp_path: Path) -> None:
    env = {"AGENTGUARD_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    demo = subprocess.run([sys.executable, "-m", "agentguard_otel.cli", "demo"], env=env, capture_output=True,
                          text=True, timeout=180, check=False)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    hint = next(line for line in demo.stdout.splitlines() if line.startswith("follow the last call's trace: "))
    command = hint.removeprefix("follow the last call's trace: agentguard ").split()
    traced = subprocess.run([sys.executable, "-m", "agentguard_otel.cli", *command], env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert traced.returncode == 0, traced.stdout + traced.stderr
    assert "OK: every receipt verifies against the trusted keys" in traced.stdout
    lines = traced.stdout.splitlines()
    # The demo's 17 calls run in one trace: 14 settled (allowed or downgraded), 3 blocked.
    assert sum(line.split()[1:2] == ["decision"] for line in lines if line.startswith("20")) == 17
    assert sum(line.split()[1:2] == ["settlement"] for line in lines if line.startswith("20")) == 14
    assert any(" downgrade " in line and "gpt-4o -> gpt-4o-mini" in line for line in lines)
    assert any(" block " in line and "requires capability payment_execute" in line for line in lines)
