"""Zero-code end to end: ``opentelemetry-instrument python examples/zero_code.py`` configured by
environment variables only, exporting OTLP/HTTP to a local receiver; the receipts verify, both
as written to disk and as exported through the log pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from agentguard_otel.cli import main as agentguard
from agentguard_otel.receipts import SigningKey, load_public_keys, verify_records
from tests.otlp_receiver import OTLPReceiver

ROOT = Path(__file__).resolve().parents[2]


def test_zero_code_exports_spans_metrics_and_verifiable_receipts(tmp_path: Path, server: Any) -> None:
    key = tmp_path / "agentguard.key"
    SigningKey.generate(key)
    with OTLPReceiver() as receiver:
        env = {
            **os.environ,
            "AGENTGUARD_POLICY": str(ROOT / "examples" / "policies" / "team.yaml"),
            "AGENTGUARD_SIGNING_KEY": str(key),
            "AGENTGUARD_LEDGER": f"sqlite:///{tmp_path / 'ledger.db'}",
            "AGENTGUARD_RECEIPTS": str(tmp_path / "receipts"),
            "AGENTGUARD_TENANT": "acme",
            "AGENTGUARD_TEAM": "engineering",
            "OPENAI_BASE_URL": server.base_url,
            "OPENAI_API_KEY": "sk-zero-code-secret",
            "OTEL_SERVICE_NAME": "zero-code-example",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_METRICS_EXPORTER": "otlp",
            "OTEL_LOGS_EXPORTER": "otlp",
            "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "openai_v2",
        }
        bin_dir = Path(sys.executable).parent
        run = subprocess.run([str(bin_dir / "opentelemetry-instrument"), sys.executable,
                              str(ROOT / "examples" / "zero_code.py")],
                             env=env, capture_output=True, text=True, timeout=120, check=False)
        assert run.returncode == 0, run.stderr
    assert "blocked: rule payments requires capability payment_execute" in run.stdout
    assert len(server.requests) == 4  # three calls and one stream; the blocked call never arrived

    spans = [s for s in receiver.spans() if "agentguard.decision.action" in s["attributes"]]
    assert [s["attributes"]["agentguard.decision.action"] for s in spans] == ["allow"] * 4 + ["block"]
    assert all(s["attributes"]["agentguard.tenant"] == "acme" for s in spans)
    assert {"agentguard.cost", "agentguard.decisions", "agentguard.budget.utilization",
            "gen_ai.client.token.usage", "gen_ai.client.operation.duration"} <= receiver.metric_names()

    records = [json.loads(log["body"]["stringValue"]) for log in receiver.logs()
               if log.get("eventName") == "agentguard.receipt"]
    # a decision and a settlement per call, a decision for the blocked one, the checkpoint written at exit
    assert [r["kind"] for r in records].count("checkpoint") == 1
    assert len(records) == 10
    span_hashes = {s["attributes"]["agentguard.receipt.hash"] for s in spans}
    assert span_hashes <= {r["hash"] for r in records}
    keys = load_public_keys([Path(f"{key}.pub")])
    exported = verify_records(records, keys)
    assert exported.ok, exported.first_error
    assert "sk-zero-code-secret" not in json.dumps(records) and "Review hunk" not in json.dumps(records)

    # The head exported through OTel pins the on-disk log: truncation would be caught.
    head = records[-1]
    assert agentguard(["verify", str(tmp_path / "receipts"), "--public-key", f"{key}.pub",
                       "--expect-head", f"{head['chain']}={head['hash']}"]) == 0
