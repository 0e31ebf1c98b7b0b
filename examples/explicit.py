"""Explicit instrumentation: wire the OpenTelemetry SDK yourself, then guard every LLM call.

    python examples/explicit.py            # OPENAI_BASE_URL / OPENAI_API_KEY as usual

Traces and receipt logs go over OTLP/HTTP to ``OTEL_EXPORTER_OTLP_ENDPOINT`` (default
http://localhost:4318: the collector configs in collector-config/), and metrics are served for
Prometheus on http://127.0.0.1:9464/metrics, which is what the dashboards in grafana/ query.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import openai

from agentguard_otel import AgentGuardBlocked, AgentGuardInstrumentor, scope

HERE = Path(__file__).resolve().parent
POLICY = HERE / "policies" / "team.yaml"


def review(client: openai.OpenAI, hunks: list[str]) -> list[str]:
    """The application code: nothing agentguard-specific but the scope it runs in."""
    notes = []
    with scope(tenant="acme", team="engineering", user="alice", task="code-review"):
        for hunk in hunks:
            reply = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"Review this hunk:\n{hunk}"}])
            notes.append(reply.choices[0].message.content or "")
    return notes


def approve_payment(client: openai.OpenAI) -> str:
    """An agent holding only read_only asks for a payment approval: the policy blocks it before the
    provider is contacted, and the exception carries the signed decision."""
    with scope(tenant="acme", team="finance", agent="ap-bot", task="payment-approval", capability="read_only"):
        try:
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Approve 4711."}])
        except AgentGuardBlocked as blocked:
            return f"blocked by {blocked.rule_id}: {blocked.reason} (receipt {blocked.receipt_hash})"
    return "approved"


def run(client: openai.OpenAI, home: Path, **otel: Any) -> tuple[list[str], str]:
    """Instrument (policy, key, ledger and receipts under `home`; OTel providers passed through), run
    the app, uninstrument. ``otel`` takes tracer_provider, meter_provider and logger_provider."""
    instrumentor = AgentGuardInstrumentor()
    instrumentor.instrument(policy=str(POLICY), signing_key=str(home / "agentguard.key"),
                            ledger=f"sqlite:///{home / 'spend.db'}", receipts=str(home / "receipts"), **otel)
    try:
        return review(client, ["- retries = 3\n+ retries = 30", "+ timeout = None"]), approve_payment(client)
    finally:
        instrumentor.uninstrument()


def main() -> int:
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from prometheus_client import start_http_server

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "agentguard-explicit")})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
    meter_provider = MeterProvider(resource=resource, metric_readers=[PrometheusMetricReader()])
    start_http_server(9464, addr="127.0.0.1")
    home = Path(os.environ.get("AGENTGUARD_HOME", ".agentguard"))
    home.mkdir(parents=True, exist_ok=True)
    try:
        notes, payment = run(openai.OpenAI(max_retries=0), home, tracer_provider=tracer_provider,
                             meter_provider=meter_provider, logger_provider=logger_provider)
    finally:
        tracer_provider.shutdown()
        logger_provider.shutdown()
    print(f"{len(notes)} review notes; payment: {payment}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
