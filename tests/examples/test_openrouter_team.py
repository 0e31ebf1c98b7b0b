"""examples/openrouter_team: the policy encodes the finance lead's task table, every model in it is
priced, and driving each task once through the real SDK (OpenRouter wire format, served locally)
produces exactly the decisions the table calls for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentguard_otel import AgentGuardInstrumentor
from agentguard_otel.demo.routing import local_openrouter_client
from agentguard_otel.money import NANO_PER_USD
from agentguard_otel.policy import load_policy
from agentguard_otel.pricing import PriceBook
from agentguard_otel.receipts import SigningKey
from tests.examples.loader import EXAMPLES, load_example
from tests.servers.openai_server import LocalOpenAIServer

team = load_example("openrouter_team/run.py")
POLICY_FILE = EXAMPLES / "openrouter_team" / "policy.yaml"

# The table: task -> (rule id, model, downgrade target or None).
TABLE = {
    "code review": ("code-review", "anthropic/claude-haiku-4.5", None),
    "risk analysis": ("risk-analysis", "openai/gpt-5", "openai/gpt-5-mini"),
    "payment approval": ("payment-approval", "anthropic/claude-opus-4.7", None),
    "chargeback evidence": ("chargeback-evidence", "anthropic/claude-sonnet-4.6", "anthropic/claude-haiku-4.5"),
    "agent support": ("agent-support", "openai/gpt-5-mini", None),
    "repo scan": ("repo-scan", "google/gemini-3.1-pro-preview", "openai/gpt-5-mini"),
}


def _usd_per_mtok(nano: int) -> str:
    return str(Decimal(nano) / NANO_PER_USD)


def _models() -> set[str]:
    policy = load_policy(POLICY_FILE)
    names = {m for r in policy.rules if r.models and r.models.allow for m in r.models.allow}
    names |= {c.downgrade_to for r in policy.rules for c in r.caps if c.downgrade_to}
    return names | {t.model for t in team.TASKS}


@pytest.fixture(scope="module")
def router() -> Iterator[LocalOpenAIServer]:
    """The local server in OpenRouter mode, reporting usage.cost at the price book's rates."""
    book = PriceBook()
    prices = {}
    for model in _models():
        price = book.lookup("openrouter", model)
        assert price is not None
        prices[model] = (_usd_per_mtok(price.input), _usd_per_mtok(price.output))
    with LocalOpenAIServer(openrouter=True, prices_usd_per_mtok=prices) as server:
        yield server


def _client(router: LocalOpenAIServer) -> Any:
    router.reset()
    return local_openrouter_client(router.base_url)


def test_every_model_of_the_table_is_priced_as_openrouter_spells_it() -> None:
    book = PriceBook()
    unpriced = sorted(m for m in _models() if book.lookup("openrouter", m) is None)
    assert unpriced == []
    assert {model for _, model, _ in TABLE.values()} | {t for *_, t in TABLE.values() if t} <= _models()


def test_policy_encodes_the_task_table() -> None:
    policy = load_policy(POLICY_FILE)
    rules = {r.id: r for r in policy.rules}
    for rule_id, model, target in TABLE.values():
        rule = rules[rule_id]
        assert rule.model_allowed_by_name("openrouter", model)
        downgrades = {c.downgrade_to for c in rule.caps if c.action == "downgrade"}
        assert downgrades == ({target} if target else set())
    assert rules["code-review"].match == {"team": "engineering", "task": "code-review"}
    assert rules["payment-approval"].require_capability == "payment_execute"
    assert all(c.action == "block" for c in rules["payment-approval"].caps)
    assert rules["risk-analysis"].caps[0].window == "day"  # the daily soft cap
    assert rules["chargeback-evidence"].max_output_tokens == 8192  # long transcripts
    research = rules["research"]
    assert research.require_capability == "read_only"
    assert research.models is not None and research.models.max_input_usd_per_mtok == Decimal("0.20")
    assert policy.mode == "enforce" and policy.unknown_model == "block"


def test_each_task_once(tmp_path: Path, router: LocalOpenAIServer) -> None:
    rows = team.run(_client(router), tmp_path)
    assert [(r.label, r.action, r.model) for r in rows] == [
        ("code review", "allow", "anthropic/claude-haiku-4.5"),
        ("risk analysis", "allow", "openai/gpt-5"),
        ("payment approval (read_only agent)", "block", "anthropic/claude-opus-4.7"),
        ("payment approval (payment_execute)", "allow", "anthropic/claude-opus-4.7"),
        ("chargeback evidence", "allow", "anthropic/claude-sonnet-4.6"),
        ("agent support", "allow", "openai/gpt-5-mini"),
        ("repo scan (long context)", "downgrade", "openai/gpt-5-mini"),
        ("research (cheap model)", "allow", "openai/gpt-5-nano"),
        ("research (expensive model)", "block", "openai/gpt-5"),
    ]
    assert rows[2].reason == "rule payment-approval requires capability payment_execute, caller has read_only"
    assert rows[8].reason == "model openai/gpt-5 costs more than rule research allows per 1M input tokens"
    # blocked calls never reached the provider; the downgraded scan was sent as the cheaper model
    sent = [r.body["model"] for r in router.requests if r.body]
    assert sent == [r.model for r in rows if r.action != "block"]
    assert all(r.headers.get("host") == "openrouter.ai" for r in router.requests)


def _guarded_run(client: Any, policy: Path | str, tasks: tuple[Any, ...], home: Path) -> list[Any]:
    SigningKey.generate(home / "agentguard.key")
    instrumentor = AgentGuardInstrumentor()
    instrumentor.instrument(policy=str(policy), signing_key=str(home / "agentguard.key"), ledger="memory://",
                            receipts=str(home / "receipts"))
    try:
        team.drive(client, tasks)
    finally:
        instrumentor.uninstrument()
    return [json.loads(line) for path in sorted((home / "receipts").glob("*.ndjson"))
            for line in path.read_text().splitlines()]


def _policy_with_day_caps(rule_id: str, limit_nano: int, path: Path) -> Path:
    """The team policy with one rule's day caps lowered to `limit_nano` (a block ceiling above a
    downgrade cap stays 10x above it), so the second call already crosses the first cap."""
    data = yaml.safe_load(POLICY_FILE.read_text(encoding="utf-8"))
    rule = next(r for r in data["rules"] if r["id"] == rule_id)
    has_downgrade = any(c["action"] == "downgrade" and c["window"] == "day" for c in rule["caps"])
    for cap in rule["caps"]:
        if cap["window"] == "day":
            factor = 10 if cap["action"] == "block" and has_downgrade else 1
            cap["limit_usd"] = str(Decimal(limit_nano * factor) / NANO_PER_USD)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.mark.parametrize(("label", "expected"), [
    ("risk analysis", ["allow", "downgrade", "downgrade"]),                   # daily soft cap -> gpt-5-mini
    ("chargeback evidence", ["allow", "downgrade", "downgrade"]),             # sonnet budget -> haiku
    ("payment approval (payment_execute)", ["allow", "block", "block"]),       # blocked on cap, never downgraded
])
def test_daily_caps_downgrade_or_block_as_the_table_says(tmp_path: Path, router: LocalOpenAIServer, label: str,
                                                         expected: list[str]) -> None:
    key = next(k for k in TABLE if label.startswith(k))
    rule_id, model, target = TABLE[key]
    task = next(t for t in team.TASKS if t.label == label)
    # One probe call under the real policy gives the call's reservation (price bound) and actual cost.
    probe = _guarded_run(_client(router), POLICY_FILE, (task,), tmp_path / "probe")
    bound = next(r["estimated_nano"] for r in probe if r["kind"] == "decision")
    actual = next(r["actual_nano"] for r in probe if r["kind"] == "settlement")
    # A cap the first call fits under and the second, after the first's actual spend, does not.
    policy = _policy_with_day_caps(rule_id, bound + actual // 2, tmp_path / "policy.yaml")
    records = _guarded_run(_client(router), policy, (task,) * len(expected), tmp_path / "run")
    decisions = [r for r in records if r["kind"] == "decision"]
    assert [d["action"] for d in decisions] == expected, [(d["action"], d["reason"]) for d in decisions]
    assert all(d["rule_id"] == rule_id for d in decisions[1:])
    assert {d["model_effective"] for d in decisions if d["action"] == "downgrade"} == ({target} if target else set())
    sent = [r.body["model"] for r in router.requests if r.body]
    assert sent == [model] + [target or model] * expected.count("downgrade")  # blocked calls never sent


def test_run_script_offline(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENROUTER_API_KEY"}
    run = subprocess.run([sys.executable, str(EXAMPLES / "openrouter_team" / "run.py")], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == len(team.TASKS)
    assert sum(" allow " in line for line in lines) == 6 and sum(" block " in line for line in lines) == 2
