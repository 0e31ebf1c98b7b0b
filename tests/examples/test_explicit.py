"""examples/explicit.py against the local server: reviews pass, the payment approval is blocked
before the provider is contacted, and spans, metrics and receipts say so."""

from __future__ import annotations

from pathlib import Path

import openai

from agentguard_otel.demo.server import reply_text
from agentguard_otel.receipts import SigningKey, load_public_keys, verify
from tests.conftest import Telemetry
from tests.examples.loader import load_example
from tests.servers.openai_server import LocalOpenAIServer

explicit = load_example("explicit.py")


def test_explicit_example(tmp_path: Path, server: LocalOpenAIServer, otel: Telemetry) -> None:
    SigningKey.generate(tmp_path / "agentguard.key")
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-explicit", max_retries=0)
    notes, payment = explicit.run(client, tmp_path, tracer_provider=otel.tracer_provider,
                                  meter_provider=otel.meter_provider, logger_provider=otel.logger_provider)
    assert notes == [reply_text(24)] * 2
    assert payment.startswith("blocked by payments: rule payments requires capability payment_execute, "
                              "caller has read_only (receipt ")
    assert len(server.requests) == 2  # the blocked call never reached the provider
    spans = otel.finished()
    assert [s.attributes["agentguard.decision.action"] for s in spans] == ["allow", "allow", "block"]
    assert spans[-1].attributes["error.type"] == "agentguard.blocked"
    assert {p.attributes["agentguard.decision.action"]: p.value
            for p in otel.metric_points("agentguard.decisions")} == {"allow": 2, "block": 1}
    assert sum(p.value for p in otel.metric_points("agentguard.cost")) > 0
    receipts = [r for r in otel.logs.get_finished_logs() if r.log_record.event_name == "agentguard.receipt"]
    assert len(receipts) == 6  # decision + settlement per review, a decision for the block, the final checkpoint
    report = verify([tmp_path / "receipts"], load_public_keys([tmp_path / "agentguard.key.pub"]))
    assert report.ok, report.first_error
