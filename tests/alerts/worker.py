"""One guarded process for the cross-process threshold test: CALLS chat calls, then exit (atexit closes
the guard, which delivers the webhook events still waiting)."""

from __future__ import annotations

import json
import sys

import openai

from agentguard_otel import AgentGuardInstrumentor, scope

settings, base_url, calls = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
AgentGuardInstrumentor().instrument(**settings)
client = openai.OpenAI(base_url=base_url, api_key="sk-test", max_retries=0)
with scope(team="eng", user="worker"):
    for _ in range(calls):
        try:
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Go."}])
        except Exception as exc:  # a blocked call is an outcome here, not a failure
            print(type(exc).__name__, flush=True)
