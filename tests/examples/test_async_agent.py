"""examples/async_agent.py against the local server: concurrent AsyncOpenAI streaming agents are
downgraded at their own soft cap and refused a refund they have no capability for."""

from __future__ import annotations

from pathlib import Path

import openai

from agentguard_otel.demo.server import reply_text
from agentguard_otel.receipts import SigningKey, load_public_keys, verify
from tests.conftest import Telemetry
from tests.examples.loader import load_example
from tests.servers.openai_server import LocalOpenAIServer

async_agent = load_example("async_agent.py")
REFUSAL = "rule refunds requires capability payment_initiate, caller has read_only"


async def test_async_streaming_agents(tmp_path: Path, server: LocalOpenAIServer, otel: Telemetry) -> None:
    SigningKey.generate(tmp_path / "agentguard.key")
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-async", max_retries=0)
    logs = await async_agent.run(client, tmp_path, agents=3, tickets=8, tracer_provider=otel.tracer_provider,
                                 meter_provider=otel.meter_provider, logger_provider=otel.logger_provider)
    assert [log.agent for log in logs] == ["triage-0", "triage-1", "triage-2"]
    for log in logs:
        # each agent has its own counter (per: agent): three gpt-4o steps, then the soft cap downgrades
        assert [model for model, _ in log.steps] == ["gpt-4o"] * 3 + ["gpt-4o-mini"] * 3
        assert all(text == reply_text(24) for _, text in log.steps)  # streamed in full, usage chunk hidden
        assert log.blocked == [REFUSAL] * 2
    assert len(server.requests) == 18 and all(r.body and r.body["stream"] for r in server.requests)
    actions: dict[str, int] = {}
    for point in otel.metric_points("agentguard.decisions"):
        action = str(point.attributes["agentguard.decision.action"])
        actions[action] = actions.get(action, 0) + point.value
    assert actions == {"allow": 9, "downgrade": 9, "block": 6}

    by_counter: dict[str, int] = {}
    for span in otel.finished():
        if span.attributes["agentguard.decision.action"] != "block":
            agent = str(span.attributes["agentguard.agent"])
            by_counter[agent] = by_counter.get(agent, 0) + 1
    assert by_counter == {"triage-0": 6, "triage-1": 6, "triage-2": 6}
    utilization = [p for p in otel.metric_points("agentguard.budget.utilization")
                   if p.attributes["agentguard.cap.window"] == "day"]
    assert utilization and all(p.value > 0 for p in utilization)
    report = verify([tmp_path / "receipts"], load_public_keys([tmp_path / "agentguard.key.pub"]))
    assert report.ok, report.first_error
