"""Generate the agentguard Grafana dashboards from code: ``python grafana/generate.py``.

Writes ``grafana/dashboards/agentguard-spend.json`` (Prometheus + Loki) and
``grafana/dashboards/agentguard-spend-cloudwatch.json`` (CloudWatch, EMF metrics from the collector's
``awsemf`` exporter). The JSON is committed so users need nothing but Grafana; tests regenerate it and
fail when the committed files are stale, run every query against real data and round-trip the JSON
through the SDK's model types.

Metric names are what the plugin's metrics become in Prometheus when the process exposes them with
``opentelemetry-exporter-prometheus`` (dots to underscores, the unit as a suffix, ``_total`` on
counters, ``{...}`` annotation units dropped). See grafana/README.md for the mapping and for what
"downgrade savings" means here.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from grafana_foundation_sdk.builders import (
    bargauge,
    cloudwatch,
    common,
    dashboard,
    logs,
    loki,
    prometheus,
    stat,
    table,
    timeseries,
)
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import cloudwatch as cw_model
from grafana_foundation_sdk.models import common as common_model
from grafana_foundation_sdk.models import dashboard as dash_model
from grafana_foundation_sdk.models import prometheus as prom_model
from grafana_foundation_sdk.models.dashboard import DataSourceRef

HERE = Path(__file__).resolve().parent
DASHBOARDS_DIR = HERE / "dashboards"

# -- names as Prometheus sees them (opentelemetry-exporter-prometheus naming) ----------------------
COST = "agentguard_cost_USD_total"                   # agentguard.cost, unit USD, counter
DECISIONS = "agentguard_decisions_total"             # agentguard.decisions, unit {decision}, counter
UTILIZATION = "agentguard_budget_utilization"        # agentguard.budget.utilization, unit 1, gauge
TOKENS = "gen_ai_client_token_usage"                 # gen_ai.client.token.usage, unit {token}, histogram
DURATION = "gen_ai_client_operation_duration_seconds"  # gen_ai.client.operation.duration, unit s, histogram
PROMETHEUS_METRICS = (COST, DECISIONS, UTILIZATION, f"{TOKENS}_bucket", f"{DURATION}_bucket")
# Columns of the budget alerts table: the alert, its state and severity, and the cap counter it is about.
ALERT_COLUMNS = ("alertname", "alertstate", "severity", "agentguard_rule_id", "agentguard_cap_window",
                 "agentguard_counter")

# -- CloudWatch: the namespace and the dimension sets (of those collector-config/cloudwatch.yaml declares
#    in its awsemf metric_declarations) that the CloudWatch dashboard queries. EMF keeps OTel names as is.
CLOUDWATCH_NAMESPACE = "AgentGuard"
CLOUDWATCH_DIMENSIONS: dict[str, tuple[tuple[str, ...], ...]] = {
    "agentguard.cost": (("agentguard.team",), ("agentguard.team", "agentguard.task"),
                        ("gen_ai.provider.name", "gen_ai.request.model")),
    "agentguard.decisions": (("agentguard.decision.action",), ("agentguard.decision.action", "agentguard.team"),
                             ("agentguard.decision.action", "agentguard.rule.id")),
    "agentguard.budget.utilization": (("agentguard.rule.id", "agentguard.cap.window"),),
    "gen_ai.client.token.usage": (("gen_ai.token.type", "gen_ai.request.model"),),
    "gen_ai.client.operation.duration": (("gen_ai.request.model",),),
}

PROM_DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
LOKI_DS = DataSourceRef(type_val="loki", uid="${loki}")
CW_DS = DataSourceRef(type_val="cloudwatch", uid="${cloudwatch}")

# Filters every spend/decision query carries; "All" is ".*", which also matches calls without the label.
SCOPE = 'agentguard_team=~"$team", agentguard_task=~"$task"'
MODEL = 'gen_ai_request_model=~"$model"'

AMBER = "#EAB839"
PER_HOUR = 3600


def _thresholds(*steps: tuple[float | None, str]) -> dashboard.ThresholdsConfig:
    return (dashboard.ThresholdsConfig().mode(dash_model.ThresholdsMode.ABSOLUTE)
            .steps([dash_model.Threshold(value=value, color=color) for value, color in steps]))


def _prom(expr: str, legend: str = "__auto", ref: str = "A", *, instant: bool = False,
          table_format: bool = False) -> prometheus.Dataquery:
    query = prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(PROM_DS)
    query = query.instant() if instant else query.range()
    if table_format:
        query = query.format(prom_model.PromQueryFormat.TABLE)
    return query


def _legend() -> common.VizLegendOptions:
    return (common.VizLegendOptions().display_mode(common_model.LegendDisplayMode.TABLE)
            .placement(common_model.LegendPlacement.RIGHT).show_legend(True).calcs(["sum", "max"]))


def _series(title: str, description: str, queries: Sequence[prometheus.Dataquery], unit: str,
            *, width: int = 12, stacked: bool = False) -> timeseries.Panel:
    panel = (timeseries.Panel().title(title).description(description).datasource(PROM_DS)
             .unit(unit).height(8).span(width).legend(_legend()).fill_opacity(10))
    for query in queries:
        panel = panel.with_target(query)
    if stacked:
        panel = panel.stacking(common.StackingConfig().mode(common_model.StackingMode.NORMAL))
    return panel


def _stat(title: str, description: str, query: prometheus.Dataquery, unit: str) -> stat.Panel:
    return (stat.Panel().title(title).description(description).datasource(PROM_DS).with_target(query)
            .unit(unit).height(5).span(6)
            .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False)))


def _spend_by(label: str, what: str) -> timeseries.Panel:
    expr = f"sum by ({label}) (rate({COST}{{{SCOPE}, {MODEL}}}[$__rate_interval])) * {PER_HOUR}"
    return _series(f"Spend by {what}", f"Settled cost per hour (agentguard.cost), by {what}.",
                   [_prom(expr, f"{{{{{label}}}}}")], "currencyUSD", width=8, stacked=True)


def downgrade_savings_expr() -> str:
    """Net spend avoided by downgrades over the dashboard range, estimated from the emitted metrics.

    gross = sum over requested model M of downgrades(M) * avg_cost(M): what the downgraded calls would
    have cost at M's average settled cost per call. spent = sum over model E of T(E) * avg_cost(E),
    where T(E) = calls settled on E minus calls admitted *as requested* on E (allow/shadow decisions),
    i.e. the calls that were downgraded onto E. savings = gross - spent.
    """
    return f"({_gross_avoided_expr()}) - ({_downgrade_spent_expr()})"


def _avg_cost_per_call() -> str:
    return (f"(sum by (gen_ai_request_model) (increase({COST}[$__range]))"
            f" / sum by (gen_ai_request_model) (increase({DURATION}_count[$__range])))")


def _gross_avoided_expr() -> str:
    downgrades = (f'sum by (gen_ai_request_model) (increase({DECISIONS}'
                  f'{{agentguard_decision_action="downgrade"}}[$__range]))')
    return f"sum({downgrades} * on (gen_ai_request_model) {_avg_cost_per_call()})"


def _downgrade_spent_expr() -> str:
    settled = f"sum by (gen_ai_request_model) (increase({DURATION}_count[$__range]))"
    as_requested = (f'sum by (gen_ai_request_model) (increase({DECISIONS}'
                    f'{{agentguard_decision_action=~"allow|shadow"}}[$__range]))')
    onto = f"clamp_min({settled} - ({as_requested} or {settled} * 0), 0)"
    return f"sum({onto} * on (gen_ai_request_model) {_avg_cost_per_call()})"


def budget_alerts_expr() -> str:
    """The budget alerts of grafana/alerts.rules.yaml that are pending or firing, one row per cap counter
    and alert (Prometheus keeps them as the ALERTS series while they are active)."""
    return (f"max by ({', '.join(ALERT_COLUMNS)}) "
            f'(ALERTS{{alertname=~"AgentGuard.*", alertstate=~"pending|firing"}})')


def _alerts_table() -> table.Panel:
    hidden = {"Time": True, "Value": True}
    return (table.Panel().title("Budget alerts").datasource(PROM_DS)
            .description("Alerts of grafana/alerts.rules.yaml pending or firing now, per cap counter: warning at "
                         "80 % for 5m, exhausted at 100 % for 1m, burn rate (projected to run out before the "
                         "window ends). Empty when Prometheus does not load the rules or nothing is close.")
            .with_target(_prom(budget_alerts_expr(), instant=True, table_format=True))
            .with_transformation(dash_model.DataTransformerConfig(
                id_val="organize", options={"excludeByName": hidden, "indexByName": {
                    name: index for index, name in enumerate(ALERT_COLUMNS)}}))
            .no_value("no budget alert pending or firing")
            .show_header(True).height(6).span(24))


def _prometheus_variables() -> list[cogbuilder.Builder[dash_model.VariableModel]]:
    def label_variable(name: str, label: str, query: str, title: str) -> dashboard.QueryVariable:
        return (dashboard.QueryVariable(name).label(title).datasource(PROM_DS)
                .query(f"label_values({query}, {label})")
                .refresh(dash_model.VariableRefresh.ON_TIME_RANGE_CHANGED)
                .multi(True).include_all(True).all_value(".*")
                .current(dash_model.VariableOption(selected=True, text="All", value="$__all")))

    return [
        dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus"),
        dashboard.DatasourceVariable("loki").label("Loki").type("loki"),
        label_variable("team", "agentguard_team", COST, "Team"),
        label_variable("task", "agentguard_task", f'{COST}{{agentguard_team=~"$team"}}', "Task"),
        label_variable("model", "gen_ai_request_model", COST, "Model"),
        (dashboard.QueryVariable("service").label("Service (logs)").datasource(LOKI_DS)
         .query("label_values(service_name)").refresh(dash_model.VariableRefresh.ON_TIME_RANGE_CHANGED)
         .multi(True).include_all(True).all_value(".+")
         .current(dash_model.VariableOption(selected=True, text="All", value="$__all"))),
    ]


def _trace_link() -> dashboard.DashboardLink:
    """Receipt log line -> its trace (the span that carries agentguard.receipt.hash) in Explore."""
    explore = ('/explore?left={"datasource":"tempo","queries":[{"refId":"A","queryType":"traceql",'
               '"query":"${__data.fields.trace_id}"}]}')
    return dashboard.DashboardLink("Open trace").url(explore).target_blank(True)


def _receipt_panels() -> list[cogbuilder.Builder[dash_model.Panel]]:
    receipts = '{service_name=~"$service"} | json | kind != ""'
    blocked = '{service_name=~"$service"} | json | kind = "decision" | action = "block"'
    per_kind = f'sum by (kind) (count_over_time({receipts} [$__auto]))'
    log_panel = (logs.Panel().title("Receipts").datasource(LOKI_DS)
                 .description("Every signed decision and settlement receipt (the log record body is the receipt "
                              "line, verifiable with `agentguard verify`). trace_id links to the call's span.")
                 .with_target(loki.Dataquery().expr(receipts).ref_id("A").datasource(LOKI_DS))
                 .show_time(True).enable_log_details(True).wrap_log_message(True)
                 .sort_order(common_model.LogsSortOrder.DESCENDING)
                 .data_links([_trace_link()]).height(10).span(24))
    blocked_panel = (logs.Panel().title("Blocked decisions").datasource(LOKI_DS)
                     .description("Decision receipts whose action is block: who, which rule, why.")
                     .with_target(loki.Dataquery().expr(blocked).ref_id("A").datasource(LOKI_DS))
                     .show_time(True).enable_log_details(True).data_links([_trace_link()]).height(8).span(12))
    rate_panel = (timeseries.Panel().title("Receipts by kind").datasource(LOKI_DS).unit("short")
                  .description("Receipt log records per interval, by kind.")
                  .with_target(loki.Dataquery().expr(per_kind).legend_format("{{kind}}").ref_id("A")
                               .datasource(LOKI_DS))
                  .legend(_legend()).fill_opacity(10).height(8).span(12))
    return [log_panel, blocked_panel, rate_panel]


def spend_dashboard() -> dash_model.Dashboard:
    """The Prometheus + Loki dashboard."""
    blocked = f'{DECISIONS}{{agentguard_decision_action="block", {SCOPE}}}'
    utilization = f"max by (agentguard_rule_id, agentguard_cap_window, agentguard_counter) ({UTILIZATION})"
    cap_legend = "{{agentguard_rule_id}} / {{agentguard_cap_window}} / {{agentguard_counter}}"
    builder = (
        dashboard.Dashboard("agentguard spend").uid("agentguard-spend").tags(["agentguard", "llm", "spend"])
        .description("LLM spend governed by agentguard-otel: spend, budgets, decisions, downgrades, tokens, "
                     "latency and the signed receipts.")
        .time("now-24h", "now").refresh("1m").timezone("browser").editable()
        .tooltip(dash_model.DashboardCursorSync.CROSSHAIR)
        .variables(_prometheus_variables())
        .with_row(dashboard.Row("Spend"))
        .with_panel(_stat("Spend in range", "Sum of settled costs over the selected time range.",
                          _prom(f"sum(increase({COST}{{{SCOPE}, {MODEL}}}[$__range]))", instant=True),
                          "currencyUSD"))
        .with_panel(_stat("Guarded calls in range", "Calls that reached a decision (any action).",
                          _prom(f"sum(increase({DECISIONS}{{{SCOPE}}}[$__range]))", instant=True), "short"))
        .with_panel(_stat("Blocked calls in range", "Calls stopped before the provider was contacted.",
                          _prom(f"sum(increase({blocked}[$__range]))", instant=True), "short"))
        .with_panel(_stat("Hottest cap", "Highest current budget utilization of any cap counter.",
                          _prom(f"max({UTILIZATION})", instant=True), "percentunit")
                    .thresholds(_thresholds((None, "green"), (0.8, AMBER), (1.0, "red"))))
        .with_panel(_spend_by("agentguard_team", "team"))
        .with_panel(_spend_by("gen_ai_request_model", "model"))
        .with_panel(_spend_by("agentguard_task", "task"))
        .with_row(dashboard.Row("Budgets"))
        .with_panel(bargauge.Panel().title("Budget utilization per cap").datasource(PROM_DS)
                    .description("Spent + held / limit of each cap counter in its current window "
                                 "(rule / window / counter). Amber from 80 %, red at 100 %.")
                    .with_target(_prom(utilization, cap_legend, instant=True))
                    .unit("percentunit").min(0).max(1.2)
                    .thresholds(_thresholds((None, "green"), (0.8, AMBER), (1.0, "red")))
                    .display_mode(common_model.BarGaugeDisplayMode.GRADIENT)
                    .orientation(common_model.VizOrientation.HORIZONTAL)
                    .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
                    .height(9).span(12))
        .with_panel(_series("Budget utilization over time", "The same counters over time.",
                            [_prom(utilization, cap_legend)], "percentunit")
                    .thresholds(_thresholds((None, "green"), (0.8, AMBER), (1.0, "red")))
                    .thresholds_style(common.GraphThresholdsStyleConfig()
                                      .mode(common_model.GraphTresholdsStyleMode.LINE))
                    .height(9))
        .with_panel(_alerts_table())
        .with_row(dashboard.Row("Decisions"))
        .with_panel(_series("Decisions by action", "Guard decisions per minute: allow, downgrade, block, shadow.",
                            [_prom(f"sum by (agentguard_decision_action) (rate({DECISIONS}{{{SCOPE}}}"
                                   f"[$__rate_interval])) * 60", "{{agentguard_decision_action}}")],
                            "short", stacked=True))
        .with_panel(table.Panel().title("Top blocked scopes").datasource(PROM_DS)
                    .description("Team / task / rule with the most blocked calls in the selected range.")
                    .with_target(_prom(f"topk(10, sum by (agentguard_team, agentguard_task, agentguard_rule_id) "
                                       f"(increase({blocked}[$__range])))", instant=True, table_format=True))
                    .show_header(True).height(8).span(12))
        .with_row(dashboard.Row("Downgrades"))
        .with_panel(_stat("Downgraded calls in range", "Calls whose model was rewritten to a cheaper one.",
                          _prom(f'sum(increase({DECISIONS}{{agentguard_decision_action="downgrade", {SCOPE}}}'
                                f'[$__range]))', instant=True), "short"))
        .with_panel(_stat("Estimated downgrade savings",
                          "Avoided spend: downgraded calls priced at the requested model's average settled cost "
                          "per call, minus what those calls cost on the cheaper model (see grafana/README.md).",
                          _prom(downgrade_savings_expr(), instant=True), "currencyUSD"))
        .with_panel(table.Panel().title("Downgrades by rule and requested model").datasource(PROM_DS)
                    .description("Which caps are downgrading which models.")
                    .with_target(_prom(f'sum by (agentguard_rule_id, gen_ai_request_model) (increase({DECISIONS}'
                                       f'{{agentguard_decision_action="downgrade", {SCOPE}}}[$__range]))',
                                       instant=True, table_format=True))
                    .show_header(True).height(5).span(12))
        .with_row(dashboard.Row("Tokens and latency"))
        .with_panel(_series("Tokens per call (p50 / p95)", "gen_ai.client.token.usage by token type.", [
            _prom(f"histogram_quantile({q}, sum by (le, gen_ai_token_type) "
                  f"(rate({TOKENS}_bucket{{{MODEL}}}[$__rate_interval])))",
                  f"p{round(q * 100)} {{{{gen_ai_token_type}}}}", ref)
            for q, ref in ((0.5, "A"), (0.95, "B"))], "short", width=8))
        .with_panel(_series("Token throughput", "Tokens per second by model and token type.",
                            [_prom(f"sum by (gen_ai_request_model, gen_ai_token_type) "
                                   f"(rate({TOKENS}_sum{{{MODEL}}}[$__rate_interval]))",
                                   "{{gen_ai_request_model}} {{gen_ai_token_type}}")], "short", width=8))
        .with_panel(_series("Latency by model (p50 / p95 / p99)", "gen_ai.client.operation.duration.", [
            _prom(f"histogram_quantile({q}, sum by (le, gen_ai_request_model) "
                  f"(rate({DURATION}_bucket{{{MODEL}}}[$__rate_interval])))",
                  f"p{round(q * 100)} {{{{gen_ai_request_model}}}}", ref)
            for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))], "s", width=8))
        .with_row(dashboard.Row("Receipts"))
    )
    for panel in _receipt_panels():
        builder = builder.with_panel(panel)
    return builder.build()


# -- CloudWatch ---------------------------------------------------------------------------------------

def cloudwatch_search(metric: str, dimensions: Sequence[str], statistic: str,
                      extra: str = "", period: str = "$__period_auto") -> str:
    """A CloudWatch SEARCH() over one declared dimension set of one EMF metric."""
    schema = ",".join([CLOUDWATCH_NAMESPACE, *(f'"{d}"' for d in dimensions)])
    terms = f'MetricName="{metric}"' + (f" {extra}" if extra else "")
    return f"SEARCH('{{{schema}}} {terms}', '{statistic}', {period})"


def _cw_query(expression: str, label: str, ref: str = "A") -> cloudwatch.CloudWatchMetricsQuery:
    return (cloudwatch.CloudWatchMetricsQuery().query_mode(cw_model.CloudWatchQueryMode.METRICS)
            .metric_query_type(cw_model.MetricQueryType.SEARCH)
            .metric_editor_mode(cw_model.MetricEditorMode.CODE)
            .region("$region").namespace(CLOUDWATCH_NAMESPACE).expression(expression).label(label)
            .id(ref.lower()).ref_id(ref).datasource(CW_DS))


def _cw_stat(metric: str, dimensions: dict[str, str], statistic: str, ref: str = "A") -> (
        cloudwatch.CloudWatchMetricsQuery):
    """A builder-mode MetricStat query (what the CloudWatch query editor produces)."""
    return (cloudwatch.CloudWatchMetricsQuery().query_mode(cw_model.CloudWatchQueryMode.METRICS)
            .metric_query_type(cw_model.MetricQueryType.SEARCH)
            .metric_editor_mode(cw_model.MetricEditorMode.BUILDER)
            .region("$region").namespace(CLOUDWATCH_NAMESPACE).metric_name(metric)
            .dimensions(dict(dimensions)).match_exact(True).statistic(statistic).period("$__period_auto")
            .id(ref.lower()).ref_id(ref).datasource(CW_DS))


def _cw_panel(title: str, description: str, queries: Sequence[cloudwatch.CloudWatchMetricsQuery], unit: str,
              *, width: int = 12, stacked: bool = False) -> timeseries.Panel:
    panel = (timeseries.Panel().title(title).description(description).datasource(CW_DS).unit(unit)
             .height(8).span(width).legend(_legend()).fill_opacity(10))
    for query in queries:
        panel = panel.with_target(query)
    if stacked:
        panel = panel.stacking(common.StackingConfig().mode(common_model.StackingMode.NORMAL))
    return panel


def cloudwatch_dashboard() -> dash_model.Dashboard:
    """The same spend view over CloudWatch EMF metrics (namespace AgentGuard).

    awsemf sends explicit-bucket histograms as statistic sets (count, sum, min, max), so token and
    latency panels use Average and Maximum, not percentiles.
    """
    cost, decisions, util = "agentguard.cost", "agentguard.decisions", "agentguard.budget.utilization"
    tokens, duration = "gen_ai.client.token.usage", "gen_ai.client.operation.duration"
    dims = CLOUDWATCH_DIMENSIONS
    builder = (
        dashboard.Dashboard("agentguard spend (CloudWatch)").uid("agentguard-spend-cloudwatch")
        .tags(["agentguard", "llm", "spend", "cloudwatch"])
        .description(f"agentguard-otel metrics exported by the collector's awsemf exporter to the "
                     f"{CLOUDWATCH_NAMESPACE} namespace (collector-config/cloudwatch.yaml).")
        .time("now-24h", "now").refresh("5m").timezone("browser").editable()
        .variables([
            dashboard.DatasourceVariable("cloudwatch").label("CloudWatch").type("cloudwatch"),
            dashboard.CustomVariable("region").label("Region").values("default,us-east-1,us-west-2,eu-west-1")
            .current(dash_model.VariableOption(selected=True, text="default", value="default")),
        ])
        .with_row(dashboard.Row("Spend"))
        .with_panel(_cw_panel("Spend by team", "Settled cost (agentguard.cost) summed per period, by team.",
                              [_cw_query(cloudwatch_search(cost, dims[cost][0], "Sum"),
                                         "${PROP('Dim.agentguard.team')}")], "currencyUSD", width=8, stacked=True))
        .with_panel(_cw_panel("Spend by task", "Settled cost summed per period, by team and task.",
                              [_cw_query(cloudwatch_search(cost, dims[cost][1], "Sum"),
                                         "${PROP('Dim.agentguard.team')} / ${PROP('Dim.agentguard.task')}")],
                              "currencyUSD", width=8, stacked=True))
        .with_panel(_cw_panel("Spend by model", "Settled cost summed per period, by provider and model.",
                              [_cw_query(cloudwatch_search(cost, dims[cost][2], "Sum"),
                                         "${PROP('Dim.gen_ai.request.model')}")], "currencyUSD", width=8,
                              stacked=True))
        .with_row(dashboard.Row("Budgets and decisions"))
        .with_panel(_cw_panel("Budget utilization per cap", "Maximum utilization of each rule's caps per period; "
                              "amber from 80 %, red at 100 %.",
                              [_cw_query(cloudwatch_search(util, dims[util][0], "Maximum"),
                                         "${PROP('Dim.agentguard.rule.id')} / ${PROP('Dim.agentguard.cap.window')}")],
                              "percentunit")
                    .thresholds(_thresholds((None, "green"), (0.8, AMBER), (1.0, "red")))
                    .thresholds_style(common.GraphThresholdsStyleConfig()
                                      .mode(common_model.GraphTresholdsStyleMode.LINE)))
        .with_panel(_cw_panel("Decisions by action", "Guard decisions per period by action.",
                              [_cw_query(cloudwatch_search(decisions, dims[decisions][0], "Sum"),
                                         "${PROP('Dim.agentguard.decision.action')}")], "short", stacked=True))
        .with_panel(_cw_panel("Blocked calls by team", "Blocked decisions per period, by team.",
                              [_cw_query(cloudwatch_search(decisions, dims[decisions][1], "Sum",
                                                           '"agentguard.decision.action"="block"'),
                                         "${PROP('Dim.agentguard.team')}")], "short", width=8))
        .with_panel(_cw_panel("Blocked and downgraded calls by rule", "Which rules block and downgrade.",
                              [_cw_query(cloudwatch_search(decisions, dims[decisions][2], "Sum",
                                                           '"agentguard.decision.action"=("block" OR "downgrade")'),
                                         "${PROP('Dim.agentguard.rule.id')} "
                                         "${PROP('Dim.agentguard.decision.action')}")],
                              "short", width=8))
        .with_panel(_cw_panel("Downgraded calls", "Downgrade decisions per period.",
                              [_cw_stat(decisions, {"agentguard.decision.action": "downgrade"}, "Sum")], "short",
                              width=8))
        .with_row(dashboard.Row("Tokens and latency"))
        .with_panel(_cw_panel("Tokens per call (average)", "gen_ai.client.token.usage by model and token type.",
                              [_cw_query(cloudwatch_search(tokens, dims[tokens][0], "Average"),
                                         "${PROP('Dim.gen_ai.request.model')} ${PROP('Dim.gen_ai.token.type')}")],
                              "short"))
        .with_panel(_cw_panel("Latency by model (average / max)", "gen_ai.client.operation.duration.", [
            _cw_query(cloudwatch_search(duration, dims[duration][0], stat_name),
                      f"{stat_name} ${{PROP('Dim.gen_ai.request.model')}}", ref)
            for stat_name, ref in (("Average", "A"), ("Maximum", "B"))], "s"))
    )
    return builder.build()


DASHBOARDS = {
    "agentguard-spend.json": spend_dashboard,
    "agentguard-spend-cloudwatch.json": cloudwatch_dashboard,
}


def render(model: dash_model.Dashboard) -> str:
    """Stable JSON text of a dashboard (what is committed)."""
    return json.dumps(model, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    out = Path(argv[0]) if argv else DASHBOARDS_DIR
    out.mkdir(parents=True, exist_ok=True)
    for name, build in DASHBOARDS.items():
        (out / name).write_text(render(build()), encoding="utf-8")
        print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
