"""The README's path to the dashboards: ``OTEL_METRICS_EXPORTER=prometheus opentelemetry-instrument``
serves the plugin's metrics under exactly the names the dashboards query."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from agentguard_otel.receipts import SigningKey
from tests.grafana.dashboards import ROOT, load_generator
from tests.grafana.test_prometheus_queries import _free_port
from tests.servers.openai_server import LocalOpenAIServer

APP = """
import urllib.request
import openai
from agentguard_otel import scope

client = openai.OpenAI(max_retries=0)
with scope(user="alice", task="code-review"):
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Review it."}])
print(urllib.request.urlopen("http://127.0.0.1:%d/metrics", timeout=10).read().decode())
"""


def test_prometheus_exporter_via_opentelemetry_instrument(tmp_path: Path, server: LocalOpenAIServer) -> None:
    SigningKey.generate(tmp_path / "agentguard.key")
    port = _free_port()
    app = tmp_path / "app.py"
    app.write_text(APP % port, encoding="utf-8")
    env = {
        **os.environ,
        "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "sk-prometheus",
        "OTEL_METRICS_EXPORTER": "prometheus", "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
        "OTEL_EXPORTER_PROMETHEUS_PORT": str(port), "OTEL_TRACES_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none",
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "openai_v2",
        "AGENTGUARD_POLICY": str(ROOT / "examples" / "policies" / "team.yaml"),
        "AGENTGUARD_SIGNING_KEY": str(tmp_path / "agentguard.key"), "AGENTGUARD_LEDGER": "memory://",
        "AGENTGUARD_RECEIPTS": str(tmp_path / "receipts"), "AGENTGUARD_TEAM": "engineering",
    }
    run = subprocess.run([str(Path(sys.executable).parent / "opentelemetry-instrument"), sys.executable, str(app)],
                         env=env, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    series = {line.split("{", 1)[0] for line in run.stdout.splitlines() if line and not line.startswith("#")}
    assert set(load_generator().PROMETHEUS_METRICS) <= series
    decisions = [line for line in run.stdout.splitlines() if line.startswith("agentguard_decisions_total{")]
    assert len(decisions) == 1 and decisions[0].endswith(" 1.0")
    for label in ('agentguard_decision_action="allow"', 'agentguard_team="engineering"',
                  'agentguard_task="code-review"', 'gen_ai_request_model="gpt-4o-mini"'):
        assert label in decisions[0]
