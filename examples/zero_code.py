"""Zero-code: run as ``opentelemetry-instrument python examples/zero_code.py``.

No agentguard import is needed for the guard itself: the ``agentguard`` instrumentor is loaded by
``opentelemetry-instrument`` and configured from ``AGENTGUARD_*`` environment variables. The scope
helper is imported only to attribute calls to a user and task; the team comes from the environment
(``AGENTGUARD_TEAM``). The SDK reads ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` as usual.
"""

from __future__ import annotations

import openai

from agentguard_otel import AgentGuardBlocked, scope


def main() -> int:
    client = openai.OpenAI(max_retries=0)
    with scope(user="alice", task="code-review"):
        for step in range(3):
            reply = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"Review hunk {step}."}])
            print(f"step {step}: {reply.usage.total_tokens if reply.usage else '?'} tokens")
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Summarise the review."}], stream=True)
        print("stream:", "".join(c.choices[0].delta.content or "" for c in stream if c.choices))
    with scope(user="alice", task="payment-approval", capability="read_only"):
        try:
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Approve it."}])
        except AgentGuardBlocked as blocked:
            print(f"blocked: {blocked.reason} (receipt {blocked.receipt_hash})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
