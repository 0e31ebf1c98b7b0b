"""The committed dashboards: generated from code, valid SDK models, LogQL that Grafana's grammar parses,
and a CloudWatch variant that only asks for what the collector's awsemf exporter produces."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import cloudwatch as cw_model
from grafana_foundation_sdk.models import loki as loki_model
from grafana_foundation_sdk.models import prometheus as prom_model
from grafana_foundation_sdk.models.dashboard import Dashboard, Panel

from tests.grafana.dashboards import GRAFANA, ROOT, committed, load_generator, queries, substitute

LOGQL_DIR = Path(__file__).resolve().parent / "logql"
generator = load_generator()


def test_committed_json_is_what_the_generator_writes(tmp_path: Path) -> None:
    assert generator.main([str(tmp_path)]) == 0
    fresh = {p.name: p.read_text(encoding="utf-8") for p in tmp_path.glob("*.json")}
    on_disk = {p.name: p.read_text(encoding="utf-8") for p in (GRAFANA / "dashboards").glob("*.json")}
    assert fresh == on_disk, "grafana/dashboards is stale: run python grafana/generate.py"


@pytest.mark.parametrize("name", sorted(committed()))
def test_dashboard_round_trips_through_the_sdk(name: str) -> None:
    register_default_plugins()
    raw = committed()[name]
    model = Dashboard.from_json(raw)
    assert json.loads(json.dumps(model, cls=JSONEncoder)) == raw
    panels = [p for p in model.panels or [] if isinstance(p, Panel)]
    targets = [t for p in panels for t in p.targets or []]
    # every query decoded into its typed model, not the SDK's UnknownDataquery bag
    assert targets and all(isinstance(t, prom_model.Dataquery | loki_model.Dataquery |
                                      cw_model.CloudWatchMetricsQuery) for t in targets)


def test_dashboards_have_unique_uids_and_panel_titles() -> None:
    dashboards = committed()
    assert sorted(d["uid"] for d in dashboards.values()) == ["agentguard-spend", "agentguard-spend-cloudwatch"]
    for dashboard in dashboards.values():
        titles = [p["title"] for p in dashboard["panels"] if p["type"] != "row"]
        assert len(titles) == len(set(titles))


def test_budget_panels_have_amber_and_red_thresholds() -> None:
    panels = [p for d in committed().values() for p in d["panels"] if "utilization" in p["title"].lower()
              or p["title"] == "Hottest cap"]
    assert len(panels) == 4
    for panel in panels:
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert [(s["value"], s["color"]) for s in steps] == [(None, "green"), (0.8, "#EAB839"), (1.0, "red")]


def _logql_parse(expressions: list[str]) -> list[dict[str, Any]]:
    node = shutil.which("node")
    assert node, "node is required for the LogQL check"
    assert (LOGQL_DIR / "node_modules" / "@grafana" / "lezer-logql").is_dir(), (
        "run `npm ci` in tests/grafana/logql first")
    run = subprocess.run([node, str(LOGQL_DIR / "parse.mjs")], input=json.dumps(expressions), cwd=LOGQL_DIR,
                         capture_output=True, text=True, timeout=60, check=True)
    result: list[dict[str, Any]] = json.loads(run.stdout)
    return result


LOKI_VALUES = {"service": ".+"}


def test_every_logql_expression_parses() -> None:
    logql = queries("loki")
    assert len(logql) == 3
    expressions = [substitute(q.expr, LOKI_VALUES) for q in logql]
    for query, result in zip(logql, _logql_parse(expressions), strict=True):
        assert result["errors"] == [], f"{query}: LogQL syntax error in {result['expr']}: {result['errors']}"
        assert result["top"] == "Expr"


def test_the_logql_check_catches_syntax_errors() -> None:
    """The parser check is not vacuous: broken LogQL is reported."""
    results = _logql_parse(['{service_name=~".+" | json', 'sum by (kind) (count_over_time({a="b"} | json))'])
    assert all(r["errors"] for r in results)


def test_receipt_queries_select_receipts_and_link_to_traces() -> None:
    spend = committed()["agentguard-spend.json"]
    receipts = next(p for p in spend["panels"] if p["title"] == "Receipts" and p["type"] == "logs")
    assert receipts["targets"][0]["expr"] == '{service_name=~"$service"} | json | kind != ""'
    links = receipts["fieldConfig"]["defaults"]["links"]
    assert "${__data.fields.trace_id}" in links[0]["url"]
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "agentguard.yaml").read_text())
    loki = next(d for d in datasources["datasources"] if d["type"] == "loki")
    derived = loki["jsonData"]["derivedFields"][0]
    assert (derived["matcherType"], derived["matcherRegex"], derived["datasourceUid"]) == ("label", "trace_id", "tempo")
    assert any(d["uid"] == "tempo" and d["type"] == "tempo" for d in datasources["datasources"])


# -- CloudWatch ----------------------------------------------------------------------------------------

SEARCH = re.compile(r"^SEARCH\('\{(?P<schema>[^}]*)\} MetricName=\"(?P<metric>[^\"]+)\"(?P<rest>[^']*)', "
                    r"'(?P<stat>[^']+)', (?P<period>[^)]+)\)$")
EMF_METRICS = {"agentguard.cost", "agentguard.decisions", "agentguard.budget.utilization",
               "gen_ai.client.token.usage", "gen_ai.client.operation.duration"}


def _cw_queries() -> list[dict[str, Any]]:
    return [q.target for q in queries("cloudwatch")]


def test_cloudwatch_queries_use_the_emf_namespace_metrics_and_declared_dimensions() -> None:
    targets = _cw_queries()
    assert len(targets) >= 8
    seen = set()
    for target in targets:
        assert target["namespace"] == generator.CLOUDWATCH_NAMESPACE == "AgentGuard"
        assert target["region"] == "$region" and target["queryMode"] == "Metrics"
        if target["metricEditorMode"] == 1:  # code: a SEARCH expression
            match = SEARCH.match(target["expression"])
            assert match, target["expression"]
            namespace, *dimensions = [part.strip('"') for part in match["schema"].split(",")]
            metric = match["metric"]
            assert namespace == "AgentGuard"
            assert tuple(dimensions) in generator.CLOUDWATCH_DIMENSIONS[metric], (metric, dimensions)
            assert target["label"], "a SEARCH over many series needs a label template"
            for name in re.findall(r'"([^"]+)"=', match["rest"]):
                assert name in dimensions
            # awsemf sends histograms as statistic sets: no percentiles
            assert match["stat"] in {"Sum", "Maximum", "Minimum", "Average", "SampleCount"}
        else:  # builder: metric name + exact dimension set
            metric = target["metricName"]
            assert target["matchExact"] is True
            assert tuple(sorted(target["dimensions"])) in {
                tuple(sorted(d)) for d in generator.CLOUDWATCH_DIMENSIONS[metric]}
        seen.add(metric)
    assert seen == EMF_METRICS


def test_cloudwatch_dimension_sets_use_attributes_the_plugin_emits() -> None:
    """EMF dimension names are the OTel attribute keys, unchanged; each must be one telemetry.py sets."""
    source = (ROOT / "src" / "agentguard_otel" / "telemetry.py").read_text(encoding="utf-8")
    scope_fields = ("team", "task", "tenant", "agent", "capability")
    for metric, sets in generator.CLOUDWATCH_DIMENSIONS.items():
        assert f'"{metric}"' in source
        for dimension in {d for s in sets for d in s}:
            field = dimension.removeprefix("agentguard.")
            assert f'"{dimension}"' in source or field in scope_fields, dimension


def test_cloudwatch_collector_config_declares_the_same_namespace_and_dimensions() -> None:
    config = yaml.safe_load((ROOT / "collector-config" / "cloudwatch.yaml").read_text(encoding="utf-8"))
    emf = next(v for k, v in config["exporters"].items() if k.split("/")[0] == "awsemf")
    # "${env:CLOUDWATCH_NAMESPACE:-AgentGuard}": the default is the namespace the dashboard queries
    namespace = re.fullmatch(r"\$\{env:\w+:-(?P<default>[^}]+)\}|(?P<plain>[^$]+)", emf["namespace"])
    assert namespace and (namespace["default"] or namespace["plain"]) == generator.CLOUDWATCH_NAMESPACE
    assert emf["dimension_rollup_option"] == "NoDimensionRollup"
    declared: dict[str, set[frozenset[str]]] = {}
    for declaration in emf["metric_declarations"]:
        for selector in declaration["metric_name_selectors"]:
            metric = selector.removeprefix("^").removesuffix("$").replace("\\.", ".")
            declared.setdefault(metric, set()).update(frozenset(d) for d in declaration["dimensions"])
    for metric, sets in generator.CLOUDWATCH_DIMENSIONS.items():
        missing = {frozenset(s) for s in sets} - declared.get(metric, set())
        assert not missing, f"{metric}: dimension sets not declared in cloudwatch.yaml: {missing}"
