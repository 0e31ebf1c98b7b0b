"""The bundled configs run end to end in a real OpenTelemetry Collector: the plugin (zero-code, under
``opentelemetry-instrument``) -> collector -> backends.

- loki.yaml: local OTLP receivers stand in for Loki (``/otlp``), Tempo and Prometheus
  (``/api/v1/otlp``); each signal reaches its own backend with its credentials, the receipts arrive
  byte for byte as log records linked to their spans, and they verify from what was exported.
- phoenix.yaml: a real Arize Phoenix stores the spans (sent to the collector over gRPC), read back
  through Phoenix's REST API."""

from __future__ import annotations

import base64
import json
import urllib.error
from pathlib import Path
from typing import Any

from agentguard_otel.cli import main as agentguard
from agentguard_otel.receipts import load_public_keys, verify_records
from tests.collector.support import (
    CONFIG_DIR,
    PROVIDER_KEY,
    Collector,
    Phoenix,
    disk_receipts,
    run_app,
    wait_until,
)
from tests.otlp_receiver import OTLPReceiver

METRICS = {"agentguard.cost", "agentguard.decisions", "agentguard.budget.utilization",
           "gen_ai.client.token.usage", "gen_ai.client.operation.duration"}
ACTIONS = ["allow", "allow", "block", "block"]
# Two allowed calls (decision + settlement), two blocked ones (decision), the checkpoint written at exit.
RECEIPTS = 2 * 2 + 2 + 1
PROMPT_TEXT = "confidential merger memo"


def _guard_spans(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in spans if "agentguard.decision.action" in s["attributes"]]


def _resources(receiver: OTLPReceiver, signal: str, key: str) -> list[dict[str, Any]]:
    return [{a["key"]: next(iter(a["value"].values())) for a in r.get("resource", {}).get("attributes", [])}
            for req in receiver.received[signal] for r in req.get(key, [])]


def test_loki_pipeline_delivers_verifiable_receipts_spans_and_metrics(otelcol: Path, tmp_path: Path,
                                                                      server: Any) -> None:
    loki_auth = "Basic " + base64.b64encode(b"123456:glc_loki_token").decode()
    with OTLPReceiver() as loki, OTLPReceiver() as tempo, OTLPReceiver() as prometheus:
        env = {"LOKI_OTLP_ENDPOINT": f"{loki.endpoint}/otlp", "LOKI_AUTHORIZATION": loki_auth,
               "LOKI_TENANT_ID": "acme-audit",
               "TEMPO_OTLP_ENDPOINT": tempo.endpoint,
               "PROMETHEUS_OTLP_ENDPOINT": f"{prometheus.endpoint}/api/v1/otlp"}
        with Collector(otelcol, CONFIG_DIR / "loki.yaml", env, tmp_path) as collector:
            run, key = run_app(tmp_path, server, f"http://127.0.0.1:{collector.http_port}", "http/protobuf")
            wait_until(lambda: len(loki.logs()) >= RECEIPTS and len(_guard_spans(tempo.spans())) >= len(ACTIONS)
                       and prometheus.metric_names() >= METRICS, 30, "every signal to reach its backend")
            assert collector.stop() == 0
        log = collector.log
    assert "blocked: rule payments requires capability payment_execute" in run.stdout
    assert len(server.requests) == 2  # blocked calls never reached the provider
    assert "deprecated" not in log and "\terror\t" not in log and "\twarn\t" not in log, log

    # Each signal went to its own backend, at the path that backend serves, with its credentials.
    assert {path for path, _ in loki.requests} == {"/otlp/v1/logs"}
    assert {path for path, _ in tempo.requests} == {"/v1/traces"}
    assert {path for path, _ in prometheus.requests} == {"/api/v1/otlp/v1/metrics"}
    assert all(h["authorization"] == loki_auth and h["x-scope-orgid"] == "acme-audit" for _, h in loki.requests)
    assert all(not h.get("authorization") for _, h in tempo.requests + prometheus.requests)

    # Resource attributes pass through untouched.
    for resource in (_resources(loki, "/v1/logs", "resourceLogs") + _resources(tempo, "/v1/traces", "resourceSpans")
                     + _resources(prometheus, "/v1/metrics", "resourceMetrics")):
        assert resource["service.name"] == "collector-e2e"
        assert resource["telemetry.sdk.language"] == "python"

    # The receipts in "Loki" are exactly the receipts on disk, and they verify from there alone.
    logs = loki.logs()
    assert all(record.get("eventName") == "agentguard.receipt" for record in logs)
    receipts = [json.loads(record["body"]["stringValue"]) for record in logs]
    assert len(receipts) == RECEIPTS
    assert sorted(receipts, key=lambda r: r["seq"]) == [json.loads(line) for line in disk_receipts(tmp_path)]
    report = verify_records(receipts, load_public_keys([Path(f"{key}.pub")]))
    assert report.ok, report.first_error
    assert report.receipts == RECEIPTS
    # Byte for byte: the exported bodies, written out as a log file, pass `agentguard verify` as is.
    exported = sorted((record["body"]["stringValue"] for record in logs), key=lambda line: json.loads(line)["seq"])
    assert exported == list(disk_receipts(tmp_path))
    exported_log = tmp_path / "exported.ndjson"
    exported_log.write_text("".join(line + "\n" for line in exported))
    assert agentguard(["verify", str(exported_log), "--public-key", f"{key}.pub"]) == 0

    # Spans in "Tempo": one per call, linked to their decision receipts (and those log records to them).
    spans = sorted(_guard_spans(tempo.spans()), key=lambda s: int(s["startTimeUnixNano"]))
    assert [s["attributes"]["agentguard.decision.action"] for s in spans] == ACTIONS
    assert {s["name"] for s in spans} == {"chat gpt-4o-mini"}
    assert all(s["attributes"]["agentguard.tenant"] == "acme" and s["attributes"]["agentguard.team"] == "engineering"
               for s in spans)
    by_hash = {record["attributes"]["agentguard.receipt.hash"]: record for record in logs}
    for span in spans:
        record = by_hash[span["attributes"]["agentguard.receipt.hash"]]
        assert (record["traceId"], record["spanId"]) == (span["traceId"], span["spanId"])
    assert spans[3]["attributes"]["agentguard.cap.window"] == "call"

    # "Prometheus" got every metric; no prompt text and no provider key left the process.
    assert prometheus.metric_names() >= METRICS
    exported = json.dumps([loki.received, tempo.received, prometheus.received])
    assert PROMPT_TEXT not in exported and PROVIDER_KEY not in exported


def _phoenix_spans(phoenix: Phoenix, project: str) -> list[dict[str, Any]]:
    try:
        data: list[dict[str, Any]] = phoenix.get(f"/v1/projects/{project}/spans?limit=100")["data"]
    except urllib.error.HTTPError as error:
        if error.code == 404:  # the project exists once its first span is stored
            return []
        raise
    return [s for s in data if "agentguard.decision.action" in s["attributes"]]


def test_phoenix_pipeline_stores_guard_spans_in_real_phoenix(otelcol: Path, phoenix_command: Path, tmp_path: Path,
                                                             server: Any) -> None:
    project = "agentguard-e2e"
    (tmp_path / "phoenix").mkdir()
    with Phoenix(phoenix_command, tmp_path / "phoenix") as phoenix:
        env = {"PHOENIX_COLLECTOR_ENDPOINT": phoenix.url}
        with Collector(otelcol, CONFIG_DIR / "phoenix.yaml", env, tmp_path) as collector:
            run_app(tmp_path, server, f"http://127.0.0.1:{collector.grpc_port}", "grpc",
                    {"OTEL_RESOURCE_ATTRIBUTES": f"openinference.project.name={project}"})
            wait_until(lambda: len(_phoenix_spans(phoenix, project)) >= len(ACTIONS), 60,
                       "Phoenix to store the spans", interval=1)
            assert collector.stop() == 0
        log = collector.log
        spans = sorted(_phoenix_spans(phoenix, project), key=lambda s: str(s["start_time"]))
    assert "deprecated" not in log and "\terror\t" not in log and "\twarn\t" not in log, log

    assert [s["attributes"]["agentguard.decision.action"] for s in spans] == ACTIONS
    assert {s["name"] for s in spans} == {"chat gpt-4o-mini"}
    assert [s["status_code"] for s in spans] == ["UNSET", "UNSET", "ERROR", "ERROR"]
    disk_hashes = {json.loads(line)["hash"] for line in disk_receipts(tmp_path)}
    for span in spans:
        attributes = span["attributes"]
        assert attributes["agentguard.tenant"] == "acme" and attributes["agentguard.user"] == "alice"
        assert attributes["agentguard.policy.id"] == "collector-e2e"
        assert attributes["agentguard.receipt.hash"] in disk_hashes
        assert attributes["gen_ai.provider.name"] == "openai"
    for allowed in spans[:2]:
        assert allowed["attributes"]["gen_ai.usage.input_tokens"] > 0
        assert allowed["attributes"]["agentguard.cost.actual_usd"] > 0
        assert allowed["attributes"]["agentguard.settlement.receipt.hash"] in disk_hashes
    assert spans[2]["attributes"]["error.type"] == "agentguard.blocked"
    assert spans[3]["attributes"]["agentguard.rule.id"] == "research"
    assert PROMPT_TEXT not in json.dumps(spans) and PROVIDER_KEY not in json.dumps(spans)
