"""Every PromQL query of every dashboard returns data from a real Prometheus scraping the plugin.

The plugin runs in this process against the local OpenAI-wire server, under a policy that produces
allow, downgrade and block decisions, with its metrics exposed by ``opentelemetry-exporter-prometheus``
on 127.0.0.1 (the exporter a user enables with ``OTEL_METRICS_EXPORTER=prometheus``). Debian's
``prometheus`` scrapes it every second; each dashboard expression, with Grafana's variables expanded,
goes through ``promtool query instant`` and must return at least one real (non-NaN) sample.

The same Prometheus loads grafana/alerts.rules.yaml and evaluates it every second: the workload takes
one cap counter to 90 % (rising) and one past 100 %, and the budget alerts must go pending with exactly
the labels of the utilization series they are about (``for:`` durations are promtool's to test, in
test_alert_rules.py).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry, start_http_server

from agentguard_otel import AgentGuardBlocked, AgentGuardInstrumentor, scope
from agentguard_otel.ledger.base import window_slot
from agentguard_otel.receipts import SigningKey
from tests.grafana.dashboards import (
    GRAFANA,
    Query,
    label_values_as_promql,
    load_generator,
    queries,
    substitute,
    variables,
)
from tests.grafana.rules import projections
from tests.servers.openai_server import LocalOpenAIServer

POLICY: dict[str, Any] = {
    "version": 1,
    "id": "grafana-proof",
    "mode": "enforce",
    "rules": [
        {"id": "code-review", "match": {"team": "engineering", "task": "code-review"}, "per": "user",
         "max_output_tokens": 64,
         "caps": [
             {"limit_usd": "0.0013", "window": "day", "action": "downgrade", "downgrade_to": "gpt-4o-mini",
              "reason": "daily gpt-4o review budget used"},
             {"limit_usd": "0.0012", "window": "call", "action": "block", "reason": "prompt too large"},
         ]},
        {"id": "payments", "match": {"task": "payment-approval"}, "require_capability": "payment_execute"},
        # Two summaries (one a phase) that settle at 0.00001155 USD each: the day cap ends at 90 %, the
        # month cap at 115.5 % (shadow caps never stop a call).
        {"id": "summaries", "match": {"task": "summarize"}, "max_output_tokens": 16,
         "caps": [{"limit_usd": "0.00002567", "window": "day", "action": "shadow"},
                  {"limit_usd": "0.00002", "window": "month", "action": "shadow"}]},
    ],
}
# The budget alerts the workload leaves pending: (alert, counter).
EXPECTED_ALERTS = {
    ("AgentGuardBudgetWarning", "summaries#0"), ("AgentGuardBudgetBurnRate", "summaries#0"),
    ("AgentGuardBudgetWarning", "summaries#1"), ("AgentGuardBudgetExhausted", "summaries#1"),
}
SEVERITY = {"AgentGuardBudgetWarning": "warning", "AgentGuardBudgetExhausted": "critical",
            "AgentGuardBudgetBurnRate": "warning"}
# Concrete values for the dashboard's template variables (the "All" choice is tested too).
CONCRETE = {"team": "engineering", "task": "code-review", "model": "gpt-4o"}
ALL = {"team": ".*", "task": ".*", "model": ".*"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Prometheus:
    url: str
    decisions: list[str]

    def query(self, expr: str, at: int | None = None) -> list[dict[str, Any]]:
        """The HTTP API (the dashboard's queries go through promtool), at ``at`` or now."""
        when = "" if at is None else f"&time={at}"
        with urllib.request.urlopen(f"{self.url}/api/v1/query?query={urllib.parse.quote(expr)}{when}",
                                    timeout=5) as r:
            result: list[dict[str, Any]] = json.load(r)["data"]["result"]
        return result

    def api(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}", timeout=5) as r:
            return json.load(r)["data"]

    def budget_alerts(self) -> set[tuple[str, str]]:
        return {(a["labels"]["alertname"], a["labels"]["agentguard_counter"]) for a in self.api("alerts")["alerts"]
                if a["labels"]["alertname"].startswith("AgentGuard")}

    def promtool(self, expr: str) -> list[str]:
        run = subprocess.run(["promtool", "query", "instant", self.url, expr],
                             capture_output=True, text=True, timeout=30, check=False)
        assert run.returncode == 0, f"promtool failed for {expr!r}: {run.stderr}"
        return [line for line in run.stdout.splitlines() if "=>" in line]


def _wait_for(predicate: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _call(client: openai.OpenAI, model: str, decisions: list[str], prompt: str) -> None:
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}])
    except AgentGuardBlocked:
        decisions.append("block")
        return
    decisions.append("ok")


def _workload(client: openai.OpenAI, user: str, decisions: list[str]) -> None:
    """Per user: allow, allow, downgrade (daily cap), downgrade, block (a whole file pasted: call cap)."""
    with scope(tenant="acme", team="engineering", user=user, task="code-review"):
        for i in range(4):
            _call(client, "gpt-4o", decisions, f"Review hunk {i} of the payment service diff.")
        _call(client, "gpt-4o", decisions, "Review this file: " + "x = 1\n" * 400)
    with scope(tenant="acme", team="engineering", agent="summarizer", task="summarize"):
        _call(client, "gpt-4o-mini", decisions, "Summarise the review so far.")
    with scope(tenant="acme", team="finance", user="bob", task="payment-approval", capability="read_only"):
        _call(client, "gpt-4o", decisions, "Approve invoice 4711.")


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    assert binary, "Debian's prometheus is required: apt-get install -y prometheus"
    home = tmp_path_factory.mktemp("grafana-proof")
    registry = CollectorRegistry()
    meter_provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)],
                                   resource=Resource.create({"service.name": "agentguard-grafana-proof"}))
    metrics_port = _free_port()
    metrics_server, metrics_thread = start_http_server(metrics_port, addr="127.0.0.1", registry=registry)
    prom_port = _free_port()
    config = home / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: ['{GRAFANA / 'alerts.rules.yaml'}']\n"
        "scrape_configs:\n"
        "  - job_name: agentguard\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n", encoding="utf-8")
    prom = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={home / 'data'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=subprocess.DEVNULL, stderr=(home / "prometheus.log").open("wb"))
    key = home / "agentguard.key"
    SigningKey.generate(key)
    instrumentor = AgentGuardInstrumentor()
    try:
        handle = Prometheus(f"http://127.0.0.1:{prom_port}", [])
        _wait_for(lambda: urllib.request.urlopen(f"{handle.url}/-/ready", timeout=2).status == 200,
                  "prometheus to be ready")
        with LocalOpenAIServer() as server:
            instrumentor.instrument(policy=POLICY, signing_key=str(key), ledger=f"sqlite:///{home / 'ledger.db'}",
                                    receipts=str(home / "receipts"), meter_provider=meter_provider,
                                    tracer_provider=TracerProvider(), logger_provider=LoggerProvider())
            client = openai.OpenAI(base_url=server.base_url, api_key="sk-grafana-proof", max_retries=0)
            # Two phases with scrapes in between, so every counter moves inside the query window.
            for user in ("alice", "carol"):
                _workload(client, user, handle.decisions)
                expected = len(handle.decisions)
                _wait_for(lambda expected=expected: [float(s["value"][1]) for s in handle.query(
                    "sum(agentguard_decisions_total)")] == [expected], f"{expected} decisions scraped")
            time.sleep(2.5)  # two more scrapes: the last values are in every rate window
            _wait_for(lambda: handle.budget_alerts() == EXPECTED_ALERTS, f"the alerts {sorted(EXPECTED_ALERTS)}")
        yield handle
    finally:
        instrumentor.uninstrument()
        prom.terminate()
        prom.wait(timeout=20)
        metrics_server.shutdown()
        metrics_thread.join(timeout=5)
        meter_provider.shutdown()


def _ids(query: Query) -> str:
    return str(query)


PROM_QUERIES = queries("prometheus")


def test_dashboards_have_prometheus_queries() -> None:
    assert len(PROM_QUERIES) >= 15
    assert {q.dashboard for q in PROM_QUERIES} == {"agentguard-spend.json"}


def test_workload_produced_every_decision(prometheus: Prometheus) -> None:
    totals = {s["metric"]["agentguard_decision_action"]: float(s["value"][1])
              for s in prometheus.query("sum by (agentguard_decision_action) (agentguard_decisions_total)")}
    # per user: 2 allowed reviews, 2 downgraded, 1 blocked; plus a summary (shadow: the hold of its estimate
    # passes the month cap) and a payment (block)
    assert totals == {"allow": 4.0, "shadow": 2.0, "downgrade": 4.0, "block": 4.0}
    blocked = prometheus.query(
        'sum by (agentguard_rule_id) (agentguard_decisions_total{agentguard_decision_action="block"})')
    assert {s["metric"]["agentguard_rule_id"]: float(s["value"][1]) for s in blocked} == {
        "code-review": 2.0, "payments": 2.0}


def test_metric_names_are_the_ones_the_plugin_emits(prometheus: Prometheus) -> None:
    generator = load_generator()
    emitted = {s["metric"]["__name__"] for s in prometheus.query('group by (__name__) ({job="agentguard"})')}
    assert set(generator.PROMETHEUS_METRICS) <= emitted
    used = {name for q in PROM_QUERIES for name in emitted if name in q.expr}
    # every metric family the plugin emits appears in some panel
    assert {n.removesuffix("_bucket") for n in generator.PROMETHEUS_METRICS} <= {
        u.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count") for u in used}


@pytest.mark.parametrize("values", [CONCRETE, ALL], ids=["concrete", "all"])
@pytest.mark.parametrize("query", PROM_QUERIES, ids=_ids)
def test_every_promql_query_returns_data(prometheus: Prometheus, query: Query, values: dict[str, str]) -> None:
    expr = substitute(query.expr, values)
    samples = prometheus.promtool(expr)
    assert samples, f"{query}: no data for {expr}"
    assert any(not line.split("=>", 1)[1].strip().startswith("NaN") for line in samples), (
        f"{query}: only NaN for {expr}: {samples}")


@pytest.mark.parametrize("variable", variables("prometheus"), ids=lambda v: v["name"])
def test_every_variable_query_finds_values(prometheus: Prometheus, variable: dict[str, Any]) -> None:
    expr = substitute(label_values_as_promql(variable["query"]), ALL)
    assert prometheus.promtool(expr), f"variable ${variable['name']}: no values for {expr}"


def test_spend_and_savings_values_are_consistent(prometheus: Prometheus) -> None:
    generator = load_generator()
    spend = prometheus.query("sum(agentguard_cost_USD_total)")
    assert float(spend[0]["value"][1]) > 0
    savings = prometheus.query(substitute(generator.downgrade_savings_expr(), ALL))
    # gpt-4o costs more per call than gpt-4o-mini, so downgrading saved money
    assert float(savings[0]["value"][1]) > 0


def test_alert_rules_load_and_evaluate_cleanly(prometheus: Prometheus) -> None:
    groups = prometheus.api("rules")["groups"]
    assert [g["name"] for g in groups] == ["agentguard-budget"]
    rules = groups[0]["rules"]
    assert [r.get("name") for r in rules] == ["agentguard:budget_utilization:current_window", "AgentGuardBudgetWarning",
                                              "AgentGuardBudgetExhausted", "AgentGuardBudgetBurnRate"]
    assert all(r["health"] == "ok" and not r.get("lastError") for r in rules), rules


def test_budget_alerts_go_pending_with_the_series_labels(prometheus: Prometheus) -> None:
    series = {s["metric"]["agentguard_counter"]: s for s in prometheus.query("agentguard_budget_utilization")}
    assert {c: round(float(s["value"][1]), 4) for c, s in series.items() if c.startswith("summaries")} == {
        "summaries#0": 0.8999, "summaries#1": 1.155}
    alerts = [a for a in prometheus.api("alerts")["alerts"] if a["labels"]["alertname"].startswith("AgentGuard")]
    assert {(a["labels"]["alertname"], a["labels"]["agentguard_counter"]) for a in alerts} == EXPECTED_ALERTS
    for alert in alerts:
        name, counter = alert["labels"]["alertname"], alert["labels"]["agentguard_counter"]
        own = {k: v for k, v in series[counter]["metric"].items() if k != "__name__"}
        assert alert["labels"] == {**own, "alertname": name, "severity": SEVERITY[name]}
        assert alert["state"] == "pending"  # every `for:` is longer than this test
        assert float(alert["value"]) == float(series[counter]["value"][1])
        assert f"rule summaries: {own['agentguard_cap_window']} cap" in alert["annotations"]["summary"]
    # the dashboard's alerts table reads the same alerts from the ALERTS series
    rows = prometheus.query(load_generator().budget_alerts_expr())
    assert {(r["metric"]["alertname"], r["metric"]["alertstate"], r["metric"]["agentguard_counter"]) for r in rows} == {
        (name, "pending", counter) for name, counter in EXPECTED_ALERTS}


# Instants from 2000 to 2099 (UTC), many of them on or next to a midnight, where windows turn over.
DAY = 86_400
INSTANTS = st.one_of(st.integers(10_957 * DAY, 47_481 * DAY),
                     st.builds(lambda day, offset: day * DAY + offset, st.integers(10_957, 47_481),
                               st.sampled_from([-1, 0, 1, 3_599, 3_600])))


@settings(max_examples=60, deadline=None)
@example(1_709_164_800)  # 2024-02-29 00:00, a leap day
@example(1_704_067_199)  # 2023-12-31 23:59:59, a Sunday: the last second of a week, a month and a year
@given(now=INSTANTS)
def test_burn_rate_horizon_ends_where_the_guards_next_window_starts(prometheus: Prometheus, now: int) -> None:
    """The seconds-left expression of each window kind, evaluated by Prometheus at ``now``, reaches
    exactly the start of the ledger's next window (a UTC policy)."""
    for window, ((_, left_expr), _) in projections().items():
        left = float(prometheus.query(f"vector({left_expr})", at=now)[0]["value"][1])
        assert left == int(left) > 0, (window, left)
        end = now + int(left)
        assert window_slot(window, "UTC", False, end).start == end, (window, now, left)
        assert window_slot(window, "UTC", False, end - 1).start == window_slot(window, "UTC", False, now).start


def test_the_exhausted_alert_fires_once_its_minute_has_passed(prometheus: Prometheus) -> None:
    """The shipped rule, unchanged, on the real Prometheus: pending until its ``for: 1m`` has passed,
    then firing, with the series' labels (the warning's 5 minutes are left to promtool's tests)."""
    def exhausted() -> list[dict[str, Any]]:
        alerts = prometheus.api("alerts")["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == "AgentGuardBudgetExhausted"]

    _wait_for(lambda: [a["state"] for a in exhausted()] == ["firing"], "AgentGuardBudgetExhausted firing", timeout=90)
    (alert,) = exhausted()
    assert alert["labels"]["agentguard_counter"] == "summaries#1" and alert["labels"]["severity"] == "critical"
    rows = prometheus.query(load_generator().budget_alerts_expr())
    assert ("AgentGuardBudgetExhausted", "firing", "summaries#1") in {
        (r["metric"]["alertname"], r["metric"]["alertstate"], r["metric"]["agentguard_counter"]) for r in rows}
