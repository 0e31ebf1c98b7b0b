"""Drive each task of the OpenRouter team policy once and print what the guard decided.

    OPENROUTER_API_KEY=sk-or-... python examples/openrouter_team/run.py     # real OpenRouter
    python examples/openrouter_team/run.py                                  # built-in local endpoint

Without a key the client still targets ``https://openrouter.ai/api/v1`` (so the guard prices calls as
OpenRouter and reads OpenRouter's reported ``usage.cost``), but its connections go to agentguard's
local OpenRouter-compatible server on 127.0.0.1: nothing leaves the machine and nothing is billed.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai

from agentguard_otel import AgentGuardBlocked, AgentGuardInstrumentor, scope
from agentguard_otel.demo.routing import OPENROUTER_BASE_URL, local_openrouter_client
from agentguard_otel.receipts import SigningKey

HERE = Path(__file__).resolve().parent
POLICY = HERE / "policy.yaml"


@dataclass(frozen=True)
class Task:
    label: str
    model: str
    scope: Mapping[str, str]
    prompt: str
    extra: Mapping[str, Any] = field(default_factory=dict)


REPO_DUMP = "".join(f"# file {i}.py\ndef handler_{i}(event):\n    return process(event, retries=3)\n\n"
                    for i in range(1500))

TASKS = (
    Task("code review", "anthropic/claude-haiku-4.5",
         {"team": "engineering", "user": "alice", "task": "code-review"}, "Review this diff for bugs."),
    Task("risk analysis", "openai/gpt-5",
         {"team": "risk", "user": "dana", "task": "risk-analysis"}, "Assess the counterparty risk of ACME Ltd."),
    Task("payment approval (read_only agent)", "anthropic/claude-opus-4.7",
         {"team": "finance", "agent": "ap-bot", "task": "payment-approval", "capability": "read_only"},
         "Approve invoice 4711."),
    Task("payment approval (payment_execute)", "anthropic/claude-opus-4.7",
         {"team": "finance", "user": "erin", "task": "payment-approval", "capability": "payment_execute"},
         "Approve invoice 4711."),
    Task("chargeback evidence", "anthropic/claude-sonnet-4.6",
         {"team": "disputes", "user": "frank", "task": "chargeback-evidence"},
         "Summarise the evidence in this call transcript: " + "Customer: I did not order this. " * 200),
    Task("agent support", "openai/gpt-5-mini",
         {"team": "support", "agent": "helpdesk", "task": "agent-support"}, "How do I reset my password?"),
    Task("repo scan (long context)", "google/gemini-3.1-pro-preview",
         {"team": "engineering", "agent": "scanner", "task": "repo-scan"}, "Find unsafe retries:\n" + REPO_DUMP),
    Task("research (cheap model)", "openai/gpt-5-nano",
         {"team": "research", "user": "gina", "task": "research", "capability": "read_only"},
         "Summarise recent papers on LLM cost control."),
    Task("research (expensive model)", "openai/gpt-5",
         {"team": "research", "user": "gina", "task": "research", "capability": "read_only"},
         "Summarise recent papers on LLM cost control."),
)


@dataclass(frozen=True)
class Outcome:
    label: str
    action: str
    model: str
    reason: str


def drive(client: openai.OpenAI, tasks: tuple[Task, ...] = TASKS) -> list[str]:
    """Run each task once under its scope; a blocked call is expected and recorded, never retried."""
    blocked = []
    for task in tasks:
        with scope(**task.scope):
            try:
                client.chat.completions.create(model=task.model, messages=[{"role": "user", "content": task.prompt}],
                                               **task.extra)
            except AgentGuardBlocked as exc:
                blocked.append(f"{task.label}: {exc.reason}")
    return blocked


def outcomes(receipts: Path, tasks: tuple[Task, ...] = TASKS) -> list[Outcome]:
    """The decision of each task, read back from the signed receipts (one chain, in order)."""
    records = [json.loads(line) for path in sorted(receipts.glob("*.ndjson")) for line in path.read_text().splitlines()]
    decisions = sorted((r for r in records if r["kind"] == "decision"), key=lambda r: int(r["seq"]))
    return [Outcome(task.label, d["action"], d["model_effective"], d["reason"] or "")
            for task, d in zip(tasks, decisions, strict=True)]


def run(client: openai.OpenAI, home: Path, policy: Path | str = POLICY) -> list[Outcome]:
    """Instrument with the team policy (fresh ledger and receipts under `home`), drive every task."""
    key = home / "agentguard.key"
    if not key.exists():
        SigningKey.generate(key)
    instrumentor = AgentGuardInstrumentor()
    instrumentor.instrument(policy=str(policy), signing_key=str(key), ledger=f"sqlite:///{home / 'ledger.db'}",
                            receipts=str(home / "receipts"))
    try:
        drive(client)
    finally:
        instrumentor.uninstrument()
    return outcomes(home / "receipts")


@contextmanager
def _client() -> Iterator[openai.OpenAI]:
    key = os.environ.get("OPENROUTER_API_KEY")
    if key:
        yield openai.OpenAI(base_url=OPENROUTER_BASE_URL, api_key=key, max_retries=0)
        return
    from agentguard_otel.demo.server import DemoServer

    with DemoServer(openrouter=True) as server:
        yield local_openrouter_client(server.base_url)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp, _client() as client:
        rows = run(client, Path(tmp))
    width = max(len(r.label) for r in rows)
    for row in rows:
        print(f"{row.label:<{width}}  {row.action:<9}  {row.model:<30}  {row.reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
