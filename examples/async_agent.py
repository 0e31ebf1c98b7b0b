"""An async agent loop that streams: several triage agents run concurrently on ``AsyncOpenAI`` with
``stream=True``, each under its own budget (examples/policies/agent-loop.yaml, ``per: agent``).

    python examples/async_agent.py         # OPENAI_BASE_URL / OPENAI_API_KEY as usual

Each agent works on gpt-4o until its soft cap, then continues on gpt-4o-mini (the guard rewrites the
model mid-loop; the agent code does not change). When a ticket asks for a refund the agent tries to
issue it, and the guard blocks that call: a read_only agent may not move money. A blocked step is
recorded and the loop goes on; the hard daily cap would stop the agent the same way. Streams are
settled from the usage chunk the guard asks for and hides from the agent.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai

from agentguard_otel import AgentGuardBlocked, AgentGuardInstrumentor, scope

HERE = Path(__file__).resolve().parent
POLICY = HERE / "policies" / "agent-loop.yaml"


@dataclass
class AgentLog:
    agent: str
    steps: list[tuple[str, str]] = field(default_factory=list)  # (model that answered, streamed text)
    blocked: list[str] = field(default_factory=list)             # why each blocked step was refused


async def _stream(client: openai.AsyncOpenAI, instruction: str, ticket: str) -> tuple[str, str]:
    """One streamed step: (the model that answered, the streamed text)."""
    stream = await client.chat.completions.create(
        model="gpt-4o", stream=True,
        messages=[{"role": "system", "content": instruction}, {"role": "user", "content": ticket}])
    parts: list[str] = []
    model = ""
    async for chunk in stream:
        model = chunk.model or model
        parts.extend(choice.delta.content or "" for choice in chunk.choices)
    return model, "".join(parts)


async def agent(client: openai.AsyncOpenAI, name: str, tickets: list[str]) -> AgentLog:
    """Triage tickets one by one, streaming each answer; a refund is a separate, more privileged task."""
    log = AgentLog(name)
    with scope(tenant="acme", team="support", agent=name, task="ticket-triage", capability="read_only"):
        for ticket in tickets:
            try:
                if "refund" in ticket:
                    with scope(task="issue-refund"):
                        log.steps.append(await _stream(client, "Issue the refund the customer asks for.", ticket))
                else:
                    log.steps.append(await _stream(client, "Classify the ticket and draft a reply.", ticket))
            except AgentGuardBlocked as blocked:
                log.blocked.append(blocked.reason)
    return log


async def run(client: openai.AsyncOpenAI, home: Path, agents: int = 3, tickets: int = 8,
              **otel: Any) -> list[AgentLog]:
    """Instrument, run `agents` agents concurrently over `tickets` tickets each, uninstrument."""
    instrumentor = AgentGuardInstrumentor()
    instrumentor.instrument(policy=str(POLICY), signing_key=str(home / "agentguard.key"),
                            ledger=f"sqlite:///{home / 'spend.db'}", receipts=str(home / "receipts"), **otel)
    try:
        queue = [f"Ticket #{i}: " + ("I want a refund for order 81." if i % 4 == 3 else "Export does nothing.")
                 for i in range(tickets)]
        return list(await asyncio.gather(*(agent(client, f"triage-{n}", queue) for n in range(agents))))
    finally:
        instrumentor.uninstrument()


def main() -> int:
    home = Path(os.environ.get("AGENTGUARD_HOME", ".agentguard"))
    home.mkdir(parents=True, exist_ok=True)
    logs = asyncio.run(run(openai.AsyncOpenAI(max_retries=0), home))
    for log in logs:
        models = ", ".join(model for model, _ in log.steps)
        print(f"{log.agent}: {len(log.steps)} steps ({models}); blocked: {'; '.join(log.blocked) or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
