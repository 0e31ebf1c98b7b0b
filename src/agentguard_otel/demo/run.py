"""``agentguard demo``: a short agent loop through the real ``openai`` SDK, under a sample policy,
showing allow, downgrade and block, then spend per scope and verification of the receipts written.

It talks to the built-in local OpenAI-compatible endpoint, or to OpenRouter when
``OPENROUTER_API_KEY`` is set. The signing key is the embedded default (generated on first use);
the ledger and receipts of each run go to a fresh folder under the data directory, so a run always
starts from an empty budget and its receipts stay around to inspect.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from opentelemetry.sdk.trace import TracerProvider

from agentguard_otel import config
from agentguard_otel.demo.routing import OPENROUTER_BASE_URL
from agentguard_otel.errors import AgentGuardBlocked
from agentguard_otel.instrumentor import AgentGuardInstrumentor
from agentguard_otel.ledger.report import counter_states, spend_table
from agentguard_otel.money import format_usd
from agentguard_otel.receipts import load_public_keys, verify
from agentguard_otel.scope import scope


def demo_policy(big: str, small: str) -> dict[str, Any]:
    """The sample policy: review work downgrades, then stops; a runaway sub-agent is cut off;
    payments need a capability the agent does not hold."""
    return {
        "version": 1,
        "id": "demo",
        "mode": "enforce",
        "unknown_model": "block",
        "rules": [
            {"id": "code-review", "match": {"team": "engineering", "task": "code-review"}, "per": "user",
             "max_output_tokens": 256,
             "caps": [
                 {"limit_usd": "0.004", "window": "day", "action": "downgrade", "downgrade_to": small,
                  "reason": f"daily {big} budget for reviews used"},
                 {"limit_usd": "0.005", "window": "day", "action": "block", "reason": "daily review budget spent"},
             ]},
            {"id": "summarizer", "match": {"task": "summarize"}, "max_output_tokens": 256,
             "caps": [{"limit_usd": "0.0052", "window": "minute", "action": "block", "reason": "runaway loop"}]},
            {"id": "payments", "match": {"task": "payment-approval"}, "require_capability": "payment_execute",
             "models": {"allow": [big]}},
        ],
    }


@contextmanager
def _endpoint() -> Iterator[tuple[str, str, str, str]]:
    """(base_url, api_key, big model, small model): OpenRouter if a key is set, else the local one."""
    key = os.environ.get("OPENROUTER_API_KEY")
    if key:
        yield OPENROUTER_BASE_URL, key, "openai/gpt-4o", "openai/gpt-4o-mini"
        return
    from agentguard_otel.demo.server import DemoServer

    with DemoServer() as server:
        yield server.base_url, "sk-local-demo", "gpt-4o", "gpt-4o-mini"


def run_demo(calls: int = 12) -> int:
    import openai

    home = config.data_dir()
    run_dir = home / "demo" / time.strftime("%Y%m%dT%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    key_path = config.resolve({}).signing_key
    with _endpoint() as (base_url, api_key, big, small):
        policy = demo_policy(big, small)
        (run_dir / "policy.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
        instrumentor = AgentGuardInstrumentor()
        ledger_url = f"sqlite:///{(run_dir / 'ledger.db').resolve()}"
        # An SDK tracer provider of the demo's own (no exporter): each call gets a real span in the
        # run's trace, so its receipts carry their trace_id and span_id (``verify --trace`` follows them).
        tracing = TracerProvider()
        instrumentor.instrument(policy=policy, signing_key=str(key_path), ledger=ledger_url,
                                receipts=str(run_dir / "receipts"), tracer_provider=tracing)
        try:
            print(f"endpoint: {base_url}\npolicy:   {run_dir / 'policy.yaml'}\n")
            client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0)
            with tracing.get_tracer("agentguard.demo").start_as_current_span("demo agent run"):
                labels = _agent_loop(client, big, calls)
            guard = instrumentor.guard
            assert guard is not None
            states = counter_states(guard.ledger)
        finally:
            instrumentor.uninstrument()
    rows = _rows(labels, run_dir / "receipts")
    print(_table(rows))
    print("\nA cap trips on the reservation: a call is admitted only if its reserved price bound fits what is "
          "left, so a cap acts before the spend so far reaches it; each call then settles to its actual cost.")
    print("\nspend per scope (current windows):")
    print(spend_table(states))
    print(f"read this ledger again: agentguard spend --ledger {ledger_url}")
    return _verify(run_dir, key_path, rows)


def _agent_loop(client: Any, big: str, calls: int) -> list[str]:
    """Review steps for alice, a looping summarizer, one payment approval; returns step labels in
    call order (the receipts say what happened to each)."""
    labels: list[str] = []

    def step(label: str, prompt: str, stream: bool = False) -> None:
        labels.append(label)
        messages = [{"role": "user", "content": prompt}]
        try:
            if stream:
                for _chunk in client.chat.completions.create(model=big, messages=messages, stream=True):
                    pass
            else:
                client.chat.completions.create(model=big, messages=messages)
        except AgentGuardBlocked:
            pass  # the decision receipt records it; the agent moves on

    with scope(tenant="acme", team="engineering", user="alice", task="code-review"):
        for i in range(calls):
            step(f"review #{i + 1}", f"Review hunk {i + 1} of the payment service diff.")
    with scope(tenant="acme", team="engineering", agent="summarizer", task="summarize"):
        for i in range(4):
            step(f"summary #{i + 1}", "Summarise the review so far. " * 20, stream=True)
    with scope(tenant="acme", team="finance", user="alice", task="payment-approval", capability="read_only"):
        step("approve payment", "Approve invoice 4711.")
    return labels


Row = tuple[str, str, str, str, str, str]


def _rows(labels: list[str], receipts: Path) -> list[Row]:
    """One row per step, read back from the signed receipts (one chain, in seq order)."""
    records = [json.loads(line) for path in sorted(receipts.glob("*.ndjson")) for line in path.read_text().splitlines()]
    records.sort(key=lambda r: int(r["seq"]))
    settled = {r["call_id"]: r for r in records if r["kind"] == "settlement"}
    decisions = [r for r in records if r["kind"] == "decision"]
    rows: list[Row] = []
    for label, d in zip(labels, decisions, strict=True):
        settlement = settled.get(d["call_id"])
        reserved = format_usd(d["estimated_nano"]) if d["action"] != "block" else "-"
        cost = format_usd(settlement["actual_nano"]) if settlement else "-"
        note = "" if d["action"] == "allow" else d["reason"]
        model = d["model_requested"]
        if d["model_effective"] != model:
            model = f"{model} -> {d['model_effective']}"
        rows.append((label, d["action"], model, reserved, cost, note))
    return rows


def _table(rows: list[Row]) -> str:
    header = ("step", "decision", "model", "reserved", "actual", "why")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows])


def _verify(run_dir: Path, key_path: Path, rows: list[Row]) -> int:
    report = verify([run_dir / "receipts"], load_public_keys([Path(f"{key_path}.pub")]))
    actions = {r[1] for r in rows}
    print(f"\nreceipts: {report.receipts} written to {run_dir / 'receipts'}")
    if not report.ok:
        print(f"receipt verification FAILED: {report.first_error}")
        return 1
    print(f"verified against {key_path}.pub: every receipt's hash, signature and chain link check out")
    print(f"check them yourself: agentguard verify {run_dir / 'receipts'} --public-key {key_path}.pub")
    print(f"follow the last call's trace: agentguard verify {run_dir / 'receipts'} --public-key {key_path}.pub "
          "--trace latest")
    missing = {"allow", "downgrade", "block"} - actions
    if missing:
        print(f"demo did not show: {', '.join(sorted(missing))}")
        return 1
    return 0


__all__ = ["demo_policy", "run_demo"]
