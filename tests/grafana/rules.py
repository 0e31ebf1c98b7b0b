"""The shipped alert rules as data: their rules, and the burn-rate alert's horizon per window kind."""

from __future__ import annotations

import re
from typing import Any

import yaml

from tests.grafana.dashboards import GRAFANA

RULES = GRAFANA / "alerts.rules.yaml"
# predict_linear(agentguard_budget_utilization{agentguard_cap_window="W"}[RANGE], HORIZON) >= 1
_PROJECTION = re.compile(r'predict_linear\(agentguard_budget_utilization\{agentguard_cap_window="(\w+)"\}'
                         r"\[(\w+)\],\s*(.+?)\)\s*>=\s*1", re.DOTALL)


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def projections() -> dict[str, list[tuple[str, str]]]:
    """Window kind -> [(range, horizon PromQL)] of the burn-rate alert, fast range first."""
    burn = next(rule for rule in rules() if rule.get("alert") == "AgentGuardBudgetBurnRate")
    found: dict[str, list[tuple[str, str]]] = {}
    for window, range_, horizon in _PROJECTION.findall(burn["expr"]):
        found.setdefault(window, []).append((range_, " ".join(horizon.split())))
    return found
