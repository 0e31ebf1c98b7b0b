"""The committed dashboards as data: load them, list their queries, substitute Grafana variables."""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "grafana"


def load_generator() -> ModuleType:
    """grafana/generate.py is a script, not a package: import it by path."""
    spec = importlib.util.spec_from_file_location("agentguard_grafana_generate", GRAFANA / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def committed() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text(encoding="utf-8"))
            for path in sorted((GRAFANA / "dashboards").glob("*.json"))}


@dataclass(frozen=True)
class Query:
    dashboard: str
    panel: str
    ref: str
    kind: str          # datasource type: prometheus | loki | cloudwatch
    target: dict[str, Any]

    @property
    def expr(self) -> str:
        return str(self.target.get("expr") or self.target.get("expression") or "")

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel} / {self.ref}"


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels") or [])


def queries(kind: str | None = None) -> list[Query]:
    found = []
    for name, dashboard in committed().items():
        for panel in _panels(dashboard.get("panels") or []):
            for target in panel.get("targets") or []:
                ds_type = (target.get("datasource") or panel.get("datasource") or {}).get("type", "")
                if kind is None or ds_type == kind:
                    found.append(Query(name, panel.get("title", "?"), target.get("refId", "?"), ds_type, target))
    return found


def variables(kind: str) -> list[dict[str, Any]]:
    """Query variables whose datasource is of type `kind`."""
    return [v for dashboard in committed().values() for v in dashboard.get("templating", {}).get("list", [])
            if v.get("type") == "query" and (v.get("datasource") or {}).get("type") == kind]


# Grafana's built-in interval variables, as Grafana would expand them for a short dashboard range.
BUILTINS = {"__rate_interval": "1m", "__range": "5m", "__interval": "15s", "__auto": "1m"}


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Expand $name and ${name} the way Grafana does; every variable must have a value."""
    table = {**BUILTINS, **values}

    def expand(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in table:
            raise KeyError(f"no value for Grafana variable ${name} in {expr!r}")
        return table[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", expand, expr)


LABEL_VALUES = re.compile(r"^label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)$")


def label_values_as_promql(query: str) -> str:
    """Grafana's label_values(selector, label) as the PromQL that yields the same label values."""
    match = LABEL_VALUES.match(query.strip())
    assert match, f"not a label_values() query: {query!r}"
    selector = match.group("selector") or "{__name__=~\".+\"}"
    return f"group by ({match.group('label')}) ({selector})"
