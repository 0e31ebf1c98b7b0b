"""The application the collector tests run under ``opentelemetry-instrument``: no agentguard setup in
code (the guard comes from ``AGENTGUARD_*`` variables): two allowed calls, then one call blocked for
a missing capability and one blocked by a per-call cap."""

from __future__ import annotations

import openai

from agentguard_otel import AgentGuardBlocked, scope

PROMPT = "Review hunk {step} of the confidential merger memo."


def main() -> int:
    client = openai.OpenAI(max_retries=0)
    with scope(user="alice", task="code-review"):
        for step in range(2):
            client.chat.completions.create(model="gpt-4o-mini",
                                           messages=[{"role": "user", "content": PROMPT.format(step=step)}])
    for task in ("payment-approval", "research"):
        with scope(user="alice", task=task, capability="read_only"):
            try:
                client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Go on."}])
            except AgentGuardBlocked as blocked:
                print(f"blocked: {blocked.reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
