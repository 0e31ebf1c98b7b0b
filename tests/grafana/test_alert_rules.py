"""The shipped alert rules: promtool accepts them, their unit tests pass, and the tests cover every
alert and every window kind a cap counter can have.

`promtool check rules` and `promtool test rules` come from Debian's ``prometheus`` package, which
.ci/run installs; the unit tests themselves (grafana/alerts*.test.yaml) are promtool's format, so an
operator can run them without Python. Evaluating the rules on a real Prometheus fed by the guard is
in test_prometheus_queries.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import typing
from pathlib import Path
from typing import Any

import yaml

from agentguard_otel.policy.model import Window
from tests.grafana.dashboards import GRAFANA
from tests.grafana.rules import RULES, projections, rules

UNIT_TESTS = (GRAFANA / "alerts.test.yaml", GRAFANA / "alerts-long-windows.test.yaml")
ALERTS = {"AgentGuardBudgetWarning", "AgentGuardBudgetExhausted", "AgentGuardBudgetBurnRate"}
# Windows with a ledger counter, hence a utilization series (a per-call cap has neither).
COUNTER_WINDOWS = set(typing.get_args(Window)) - {"call"}
# PromQL aggregation operators: applied to the utilization they would drop the series' labels.
AGGREGATION = re.compile(r"\b(sum|min|max|avg|group|stddev|stdvar|count|count_values|quantile|topk|bottomk)\s*"
                         r"(\(|by\b|without\b)")


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is required (Debian package prometheus): apt-get install -y prometheus"
    return subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


def test_promtool_accepts_the_rules() -> None:
    run = _promtool("check", "rules", str(RULES), cwd=GRAFANA)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS: 4 rules found" in run.stdout


def test_promtool_unit_tests_pass() -> None:
    run = _promtool("test", "rules", *(p.name for p in UNIT_TESTS), cwd=GRAFANA)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("SUCCESS") == len(UNIT_TESTS), run.stdout


def test_alerts_add_only_severity_and_aggregate_nothing() -> None:
    every = rules()
    alerts = {rule["alert"]: rule for rule in every if "alert" in rule}
    assert set(alerts) == ALERTS
    assert {name: rule["labels"] for name, rule in alerts.items()} == {
        "AgentGuardBudgetWarning": {"severity": "warning"},
        "AgentGuardBudgetExhausted": {"severity": "critical"},
        "AgentGuardBudgetBurnRate": {"severity": "warning"},
    }
    assert {name: rule["for"] for name, rule in alerts.items()} == {
        "AgentGuardBudgetWarning": "5m", "AgentGuardBudgetExhausted": "1m", "AgentGuardBudgetBurnRate": "2m"}
    for rule in every:
        assert not AGGREGATION.search(rule["expr"]), f"{rule.get('alert') or rule.get('record')} aggregates"
        assert "labels" not in rule or "alert" in rule, "a recording rule must not relabel the series"
    for name, rule in alerts.items():
        text = " ".join(rule["annotations"].values())
        for label in ("agentguard_rule_id", "agentguard_cap_window", "agentguard_counter"):
            assert f"$labels.{label}" in text, f"{name} annotations do not name {label}"
        assert "$value" in text


def _fired(tests: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(alertname, window) of every alert some unit test expects to fire."""
    return {(check["alertname"], alert["exp_labels"]["agentguard_cap_window"])
            for test in tests for check in test.get("alert_rule_test", []) for alert in check["exp_alerts"]}


def test_unit_tests_cover_every_alert_and_window_kind() -> None:
    tests = [test for path in UNIT_TESTS for test in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]]
    fired = _fired(tests)
    assert {alert for alert, _ in fired} == ALERTS
    assert {window for _, window in fired} == COUNTER_WINDOWS
    # staleness: each window kind has a test where an alert resolves after the window rolled over
    assert {window for alert, window in fired if alert != "AgentGuardBudgetBurnRate"} == COUNTER_WINDOWS
    # burn rate: every window kind but minute (documented in the rules: too short for a projection)
    assert {window for alert, window in fired if alert == "AgentGuardBudgetBurnRate"} == COUNTER_WINDOWS - {"minute"}
    rules_text = RULES.read_text(encoding="utf-8")
    for window in COUNTER_WINDOWS:
        assert f'agentguard_cap_window="{window}"' in rules_text


def test_burn_rate_projects_a_fast_and_a_slow_range_to_one_horizon_per_window() -> None:
    found = projections()
    assert set(found) == COUNTER_WINDOWS - {"minute"}
    seconds = {"m": 60, "h": 3600, "d": 86400}
    for window, ((fast, fast_left), (slow, slow_left)) in found.items():
        assert fast_left == slow_left, window
        assert int(fast[:-1]) * seconds[fast[-1]] < int(slow[:-1]) * seconds[slow[-1]], window
