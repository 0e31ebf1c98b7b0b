"""Every bundled collector config is accepted by a real OpenTelemetry Collector (``otelcol validate``).

The CloudWatch config's contrib-only exporters are not in the core build: a copy with them swapped
for ``debug`` is validated instead, and the contrib parts are checked structurally, against the
metric and span attributes the plugin really emits (a dimension set or an indexed attribute that
names an attribute we never send would silently produce nothing)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from agentguard_otel import AgentGuardBlocked, scope
from tests.collector.support import CONFIG_DIR, POLICY
from tests.conftest import GuardFactory, Telemetry

ENV: dict[str, dict[str, str]] = {
    "phoenix.yaml": {"PHOENIX_COLLECTOR_ENDPOINT": "http://127.0.0.1:6006"},
    "loki.yaml": {"LOKI_OTLP_ENDPOINT": "http://127.0.0.1:3100/otlp",
                  "TEMPO_OTLP_ENDPOINT": "http://127.0.0.1:4318",
                  "PROMETHEUS_OTLP_ENDPOINT": "http://127.0.0.1:9090/api/v1/otlp"},
    "cloudwatch.yaml": {"AWS_REGION": "eu-west-1"},
}
CONTRIB_ONLY = frozenset({"awsemf", "awscloudwatchlogs", "awsxray"})
CORE_CONFIGS = ("phoenix.yaml", "loki.yaml")
# CloudWatch's unit names (MetricDatum.Unit), and the OTel units awsemf translates by itself.
CLOUDWATCH_UNITS = frozenset({
    "Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes", "Gigabytes", "Terabytes",
    "Bits", "Kilobits", "Megabits", "Gigabits", "Terabits", "Percent", "Count", "Bytes/Second",
    "Kilobytes/Second", "Megabytes/Second", "Gigabytes/Second", "Terabytes/Second", "Bits/Second",
    "Kilobits/Second", "Megabits/Second", "Gigabits/Second", "Terabits/Second", "Count/Second", "None"})
AWSEMF_TRANSLATED_UNITS = frozenset({"ms", "s", "us", "By", "Bi"})
ENV_REF = re.compile(r"^\$\{env:[A-Z0-9_]+(:-[^}]*)?\}$")


def load(name: str) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((CONFIG_DIR / name).read_text())
    return config


def validate(otelcol: Path, config: Path, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(otelcol), "validate", f"--config=file:{config}"], env=dict(env), capture_output=True,
                          text=True, timeout=60, check=False)


def swap_contrib_for_debug(config: dict[str, Any]) -> dict[str, Any]:
    """The config with every contrib-only exporter replaced by ``debug/<id>``, pipelines rewired to
    match; everything else unchanged."""
    assert "extensions" not in config  # an authenticator (e.g. sigv4auth) would need swapping too
    renamed = {cid: f"debug/{cid.replace('/', '_')}" for cid in config["exporters"]
               if cid.split("/")[0] in CONTRIB_ONLY}
    exporters = {renamed.get(cid, cid): ({} if cid in renamed else body) for cid, body in config["exporters"].items()}
    pipelines = {name: {**pipe, "exporters": [renamed.get(e, e) for e in pipe["exporters"]]}
                 for name, pipe in config["service"]["pipelines"].items()}
    return {**config, "exporters": exporters, "service": {**config["service"], "pipelines": pipelines}}


def test_every_bundled_config_is_covered() -> None:
    assert {p.name for p in CONFIG_DIR.glob("*.yaml")} == set(ENV)


@pytest.mark.parametrize("name", CORE_CONFIGS)
def test_core_config_validates_with_its_environment(otelcol: Path, name: str) -> None:
    run = validate(otelcol, CONFIG_DIR / name, ENV[name])
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("name", CORE_CONFIGS)
def test_backend_endpoints_are_required_from_the_environment(otelcol: Path, name: str) -> None:
    run = validate(otelcol, CONFIG_DIR / name, {})
    assert run.returncode != 0
    for exporter, body in load(name)["exporters"].items():
        if body and "endpoint" in body:
            assert f"exporters::{exporter}: at least one endpoint must be specified" in run.stderr


def test_cloudwatch_config_validates_with_contrib_exporters_swapped_for_debug(otelcol: Path, tmp_path: Path) -> None:
    config = load("cloudwatch.yaml")
    swapped = swap_contrib_for_debug(config)
    assert set(swapped["exporters"]) == {"debug/awsemf", "debug/awscloudwatchlogs", "debug/awsxray"}
    assert {k: v for k, v in swapped.items() if k not in ("exporters", "service")} == \
        {k: v for k, v in config.items() if k not in ("exporters", "service")}
    copy = tmp_path / "cloudwatch-core.yaml"
    copy.write_text(yaml.safe_dump(swapped))
    run = validate(otelcol, copy, ENV["cloudwatch.yaml"])
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("name", sorted(ENV))
def test_pipelines_limit_memory_first_batch_and_leave_data_alone(name: str) -> None:
    config = load(name)
    assert set(config["processors"]) == {"memory_limiter", "batch"}  # nothing rewrites resources or attributes
    assert config["processors"]["memory_limiter"]["limit_percentage"] > 0
    otlp = config["receivers"]["otlp"]["protocols"]
    assert otlp["grpc"]["endpoint"] == "${env:COLLECTOR_OTLP_GRPC_ENDPOINT:-127.0.0.1:4317}"
    assert otlp["http"]["endpoint"] == "${env:COLLECTOR_OTLP_HTTP_ENDPOINT:-127.0.0.1:4318}"
    pipelines = config["service"]["pipelines"]
    assert set(pipelines) == {"traces", "metrics", "logs"}
    used: set[str] = set()
    for pipe in pipelines.values():
        assert pipe["receivers"] == ["otlp"]
        assert pipe["processors"][0] == "memory_limiter"
        if pipe["exporters"] != ["nop"]:
            assert "batch" in pipe["processors"]
        used.update(pipe["exporters"])
    assert used == set(config["exporters"])
    for exporter in config["exporters"]:
        assert exporter.split("/")[0] not in ("otlp", "otlphttp")  # deprecated aliases since v0.144.0
    for key, value in _leaves(config["exporters"]):
        if key in ("endpoint", "region", "Authorization", "X-Scope-OrgID"):
            assert ENV_REF.match(str(value)), f"{name}: {key} must come from ${{env:...}}, got {value!r}"


def _leaves(node: Any, key: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, Mapping):
        return [leaf for k, v in node.items() for leaf in _leaves(v, str(k))]
    if isinstance(node, list):
        return [leaf for item in node for leaf in _leaves(item, key)]
    return [(key, node)]


def _emitted(guarded: GuardFactory, otel: Telemetry, server: Any) -> tuple[dict[str, list[set[str]]],
                                                                               dict[str, str], set[str]]:
    """Attribute keys of every metric data point (by metric), metric units, and span attribute keys of
    an allowed call and the two kinds of blocked call, with every metric scope field set."""
    guarded(POLICY)
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-test-secret", max_retries=0)
    with scope(tenant="acme", team="engineering", agent="reviewer", user="alice", task="code-review"):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Review."}])
    for task in ("payment-approval", "research"):
        with scope(tenant="acme", team="engineering", task=task, capability="read_only"), \
                pytest.raises(AgentGuardBlocked):
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Go."}])
    points: dict[str, list[set[str]]] = {}
    units: dict[str, str] = {}
    data = otel.metrics.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope_metrics in resource.scope_metrics:
            for metric in scope_metrics.metrics:
                units[metric.name] = metric.unit or ""
                points.setdefault(metric.name, []).extend(
                    set(point.attributes or {}) for point in metric.data.data_points)
    span_keys = {key for span in otel.finished() for key in (span.attributes or {})}
    return points, units, span_keys


def test_cloudwatch_contrib_parts_are_wired_to_what_the_plugin_emits(guarded: GuardFactory, otel: Telemetry,
                                                                    server: Any) -> None:
    points, units, span_keys = _emitted(guarded, otel, server)
    assert set(points) == {"agentguard.cost", "agentguard.decisions", "agentguard.budget.utilization",
                           "agentguard.budget.state", "gen_ai.client.token.usage", "gen_ai.client.operation.duration"}
    config = load("cloudwatch.yaml")
    exporters = config["exporters"]
    assert config["service"]["pipelines"]["metrics"]["exporters"] == ["awsemf"]
    assert config["service"]["pipelines"]["logs"]["exporters"] == ["awscloudwatchlogs"]
    assert config["service"]["pipelines"]["traces"]["exporters"] == ["awsxray"]

    emf = exporters["awsemf"]
    assert emf["namespace"] and emf["log_group_name"] and emf["log_stream_name"]
    assert emf["dimension_rollup_option"] == "NoDimensionRollup"
    for name, metric_points in points.items():
        declarations = [d for d in emf["metric_declarations"]
                        if any(re.search(s, name) for s in d["metric_name_selectors"])]
        assert len(declarations) == 1, f"{name} must match exactly one metric declaration"
        for dimension_set in declarations[0]["dimensions"]:
            assert 1 <= len(dimension_set) <= 30
            # EMF applies a dimension set only to data points that carry all of its attributes.
            assert any(set(dimension_set) <= keys for keys in metric_points), \
                f"{name}: no data point carries all of {dimension_set}"
    descriptors = {d["metric_name"]: d for d in emf["metric_descriptors"]}
    for name, unit in units.items():
        if unit not in CLOUDWATCH_UNITS | AWSEMF_TRANSLATED_UNITS:
            assert descriptors[name]["overwrite"] is True, f"{name}: OTel unit {unit!r} needs a CloudWatch unit"
    assert {d["unit"] for d in descriptors.values()} <= CLOUDWATCH_UNITS
    assert set(descriptors) <= set(points)

    logs = exporters["awscloudwatchlogs"]
    assert logs["log_group_name"] and logs["log_stream_name"]
    assert logs["raw_log"] is True  # each CloudWatch event is the receipt line itself

    xray = exporters["awsxray"]
    indexed = xray["indexed_attributes"]
    assert len(indexed) == len(set(indexed)) <= 50  # X-Ray keeps at most 50 annotations per trace
    assert set(indexed) <= span_keys, set(indexed) - span_keys
    assert {"agentguard.decision.action", "agentguard.team", "agentguard.receipt.hash"} <= set(indexed)
