"""Every span attribute, metric and log record agentguard emits, in one place.

GenAI attribute and metric names follow the OpenTelemetry semantic conventions v1.41.0
(``SEMCONV_VERSION``), the last release that carried the GenAI conventions before they moved to
their own repository. Receipts are exported as log records whose body is the receipt's exact JSON
line, so a backend such as Loki holds a verifiable copy of the audit trail.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry import trace
from opentelemetry._logs import LogRecord, SeverityNumber, get_logger
from opentelemetry.metrics import CallbackOptions, Observation, get_meter

# Bound here, at import: an application (or its tests) replacing these module functions changes
# nothing of what the guard does (the global provider itself is still followed, see Telemetry.tracer).
from opentelemetry.trace import (
    SpanKind,
    Status,
    StatusCode,
    get_current_span,
    get_tracer_provider,
    set_span_in_context,
)

from agentguard_otel.alerts import BudgetEvent
from agentguard_otel.call import Decision, LLMRequest, ResponseInfo
from agentguard_otel.ledger.base import STATES
from agentguard_otel.money import nano_to_usd
from agentguard_otel.receipts.format import Sealed
from agentguard_otel.scope import BAGGAGE_PREFIX, Scope
from agentguard_otel.version import __version__

if TYPE_CHECKING:
    from opentelemetry._logs import LoggerProvider
    from opentelemetry.context import Context
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import Span, TracerProvider

logger = logging.getLogger(__name__)
_F = TypeVar("_F", bound=Callable[..., Any])

SEMCONV_VERSION = "1.41.0"
SCHEMA_URL = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"
BLOCKED_ERROR_TYPE = "agentguard.blocked"

# Bucket boundaries the GenAI semantic conventions advise for these two histograms.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)

# Scope fields on metrics: everything but ``user``, whose cardinality is unbounded (spans carry it).
METRIC_SCOPE_FIELDS = ("tenant", "team", "agent", "task", "capability")


@dataclass(frozen=True)
class BudgetReading:
    """How full one cap's counter is after a reservation or settlement."""

    counter: str
    rule_id: str
    window: str
    used_nano: int
    limit_nano: int
    state: str = "active"  # see ledger.base.STATES
    scope_labels: tuple[tuple[str, str], ...] = ()  # the scope fields the counter is kept per

    @property
    def utilization(self) -> float:
        return self.used_nano / self.limit_nano if self.limit_nano > 0 else 1.0

    @property
    def labels(self) -> dict[str, str]:
        return {"agentguard.counter": self.counter, "agentguard.rule.id": self.rule_id,
                "agentguard.cap.window": self.window,
                **{BAGGAGE_PREFIX + name: value for name, value in self.scope_labels}}


class BudgetSeries:
    """The latest reading of each cap counter, which the budget gauges observe when metrics are
    collected: a call writes one dict entry per counter instead of recording two gauge points, and
    the cost of the labels is paid once per export, not per call. Holds at most ``LIMIT`` counters
    (the SDK's own cardinality limit), forgetting the one updated longest ago."""

    LIMIT = 2000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: dict[str, BudgetReading] = {}
        _LOCKED_SERIES.add(self)

    def update(self, readings: Sequence[BudgetReading]) -> None:
        with self._lock:
            latest = self._latest
            for reading in readings:
                latest.pop(reading.counter, None)
                latest[reading.counter] = reading
            while len(latest) > self.LIMIT:
                del latest[next(iter(latest))]

    def _readings(self) -> list[BudgetReading]:
        with self._lock:
            return list(self._latest.values())

    def utilization(self, _options: CallbackOptions) -> list[Observation]:
        return [Observation(r.utilization, r.labels) for r in self._readings()]

    def states(self, _options: CallbackOptions) -> list[Observation]:
        return [Observation(STATES.index(r.state), r.labels) for r in self._readings()]


# A meter returns the instrument it already has for a name, with the callbacks it was first given:
# every Telemetry on one meter (a guard built again after uninstrument()) shares that gauge's series.
_SERIES: weakref.WeakKeyDictionary[Any, BudgetSeries] = weakref.WeakKeyDictionary()
_SERIES_LOCK = threading.Lock()
_LOCKED_SERIES: weakref.WeakSet[BudgetSeries] = weakref.WeakSet()


def _new_locks_in_child() -> None:
    """In a forked child, fresh locks: one that another thread of the parent held at the fork would
    stay held there for good, and the child's next guarded call (or guard) would hang in telemetry."""
    global _SERIES_LOCK
    _SERIES_LOCK = threading.Lock()
    for series in list(_LOCKED_SERIES):
        series._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_locks_in_child)


def contained(method: _F) -> _F:
    """Errors of the OTel API or SDK are logged, never raised into a guarded call (as the OTel
    instrumentations contain theirs): telemetry must not decide whether a call happens."""
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except Exception:
            logger.exception("agentguard: telemetry failed in %s", method.__name__)
            return None
    return wrapper  # type: ignore[return-value]


@dataclass(frozen=True)
class Settled:
    """One call as it ended: what telemetry reports at settlement."""

    request: LLMRequest
    scope: Scope
    decision: Decision
    info: ResponseInfo
    actual_nano: int
    cost_source: str
    receipt: Mapping[str, Any] | None
    budget: Sequence[BudgetReading]
    duration_s: float
    error_type: str | None  # the exception's type only: provider error text never leaves the process
    http_status: int | None
    provider_model_mismatch: bool = False  # a dearer model than any asked for answered (strict cannot prove it)


class CallSpan:
    """The CLIENT span of one guarded call; ended exactly once. It is never made current: the
    SDK's own spans and other instrumentations' keep the parent they would have without the guard."""

    __slots__ = ("_context", "_ended", "_ids", "span")

    def __init__(self, span: Span) -> None:
        self.span = span
        self._ended = False
        self._ids: dict[str, str | None] | None = None
        self._context: Context | None = None

    @property
    def context(self) -> Context:
        """A context holding the span, for the call's log records (built once, for both receipts)."""
        if self._context is None:
            self._context = set_span_in_context(self.span)
        return self._context

    @property
    def ids(self) -> dict[str, str | None]:
        """``trace_id`` and ``span_id`` (lowercase hex, as W3C trace context writes them) for the
        call's receipts: the link from a trace to its signed record. Without a span of ours (tracing
        off), the trace the caller is in, if any, and no span id."""
        if self._ids is None:
            self._ids = {"trace_id": None, "span_id": None}
            try:
                context = self.span.get_span_context()
                if context.is_valid:
                    self._ids = {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}
                else:
                    outer = get_current_span().get_span_context()
                    if outer.is_valid:
                        self._ids["trace_id"] = f"{outer.trace_id:032x}"
            except Exception:  # a broken tracer leaves the receipt unlinked, never the call unguarded
                logger.exception("agentguard: telemetry failed reading the span's ids")
        return self._ids

    @contained
    def fail(self, error_type: str, description: str) -> None:
        """Mark the span failed; ``description`` is ours (a block reason, or an error's type and
        status), never an exception's message, which may quote the prompt."""
        self.span.set_attribute("error.type", error_type)
        self.span.set_status(Status(StatusCode.ERROR, description))
        self.end()

    @contained
    def end(self) -> None:
        if not self._ended:
            self._ended = True
            self.span.end()


def _receipt_attrs(prefix: str, receipt: Mapping[str, Any] | None) -> dict[str, Any]:
    if not receipt:
        return {}
    return {
        f"{prefix}.hash": receipt["hash"],
        f"{prefix}.seq": receipt["seq"],
        f"{prefix}.chain": receipt["chain"],
        f"{prefix}.sig": receipt["sig"],
        f"{prefix}.key_id": receipt["key_id"],
    }


class Telemetry:
    """Spans, metrics and log records for guarded calls."""

    def __init__(self, tracer_provider: TracerProvider | None = None, meter_provider: MeterProvider | None = None,
                 logger_provider: LoggerProvider | None = None) -> None:
        self._tracer_provider = tracer_provider
        self._tracer_source: object = None
        self._tracer = trace.get_tracer(__name__, __version__, tracer_provider, schema_url=SCHEMA_URL)
        meter = get_meter(__name__, __version__, meter_provider, schema_url=SCHEMA_URL)
        self.logger = get_logger(__name__, __version__, logger_provider, schema_url=SCHEMA_URL)
        self.token_usage = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}", description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS)
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
        self.cost = meter.create_counter(
            "agentguard.cost", unit="USD", description="Actual cost of guarded calls, as settled.")
        self.decisions = meter.create_counter(
            "agentguard.decisions", unit="{decision}", description="Guard decisions by action.")
        series = BudgetSeries()
        with _SERIES_LOCK:
            utilization = meter.create_observable_gauge(
                "agentguard.budget.utilization", callbacks=[series.utilization], unit="1",
                description="Share of a cap's limit spent or held in its current window (0..1, may exceed 1).")
            self.budget = _SERIES.setdefault(utilization, series)
            meter.create_observable_gauge(
                "agentguard.budget.state", callbacks=[self.budget.states], unit="1",
                description="A cap counter's state in its current window: 0 active, 1 warned (an alert_at "
                            "threshold reached), 2 degraded (a downgrade cap tripped), 3 stopped (a block cap "
                            "tripped).")

    @property
    def tracer(self) -> trace.Tracer:
        """The tracer of the given provider, or of the global one as it is now (a global provider
        set or replaced after instrument() is followed, as the OTel API's own tracers do)."""
        if self._tracer_provider is not None:
            return self._tracer
        current = get_tracer_provider()
        if current is not self._tracer_source:
            self._tracer_source = current
            self._tracer = current.get_tracer(__name__, __version__, schema_url=SCHEMA_URL)
        return self._tracer

    # -- spans ------------------------------------------------------------------------------

    def start_call(self, request: LLMRequest, scope: Scope) -> CallSpan:
        """The call's span; a non-recording one when the client's tracing is off or no tracer
        provider is set (then the OTel API is not called at all)."""
        try:
            if not request.traced or (self._tracer_provider is None
                                      and isinstance(get_tracer_provider(), trace.ProxyTracerProvider)):
                return CallSpan(trace.INVALID_SPAN)
            return self._start_call(request, scope)
        except Exception:
            logger.exception("agentguard: telemetry failed starting a span")
            return CallSpan(trace.INVALID_SPAN)

    def _start_call(self, request: LLMRequest, scope: Scope) -> CallSpan:
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": request.operation,
            "gen_ai.provider.name": request.provider,
            "gen_ai.request.model": request.model,
            "agentguard.model.requested": request.model,
        }
        if request.server_address:
            attributes["server.address"] = request.server_address
        if request.server_port:
            attributes["server.port"] = request.server_port
        if request.max_output_tokens is not None:
            attributes["gen_ai.request.max_tokens"] = request.max_output_tokens
        for name, value in scope.as_dict().items():
            if value is not None:
                attributes[BAGGAGE_PREFIX + name] = value
        span = self.tracer.start_span(f"{request.operation} {request.model}", kind=SpanKind.CLIENT,
                                      attributes=attributes)
        return CallSpan(span)

    @contained
    def on_decision(self, call: CallSpan, request: LLMRequest, scope: Scope, decision: Decision,
                    receipt: Mapping[str, Any] | None) -> None:
        span = call.span
        if decision.model_effective != request.model:
            span.update_name(f"{request.operation} {decision.model_effective}")
            span.set_attribute("gen_ai.request.model", decision.model_effective)
        attributes: dict[str, Any] = {
            "agentguard.decision.action": decision.action,
            "agentguard.decision.reason": decision.reason,
            "agentguard.policy.id": self._policy_id(receipt),
            "agentguard.model.effective": decision.model_effective,
            "agentguard.cost.estimated_usd": nano_to_usd(decision.estimated_nano),
            **_receipt_attrs("agentguard.receipt", receipt),
        }
        if decision.changes.max_output_tokens is not None:
            attributes["gen_ai.request.max_tokens"] = decision.changes.max_output_tokens
        if decision.rule_id is not None:
            attributes["agentguard.rule.id"] = decision.rule_id
        if decision.cap is not None:
            attributes["agentguard.cap.window"] = decision.cap.cap.window
        if decision.would is not None:
            attributes["agentguard.decision.would"] = decision.would
        if decision.degraded:
            attributes["agentguard.degraded"] = True
        span.set_attributes(attributes)
        labels = self._scope_labels(scope)
        labels.update({"agentguard.decision.action": decision.action, "gen_ai.provider.name": request.provider,
                       "gen_ai.request.model": request.model})
        if decision.rule_id is not None:
            labels["agentguard.rule.id"] = decision.rule_id
        self.decisions.add(1, labels)

    @contained
    def on_settlement(self, call: CallSpan, settled: Settled) -> None:
        request, decision, info = settled.request, settled.decision, settled.info
        span = call.span
        attributes: dict[str, Any] = {
            "agentguard.cost.actual_usd": nano_to_usd(settled.actual_nano),
            "agentguard.cost.source": settled.cost_source,
            **_receipt_attrs("agentguard.settlement.receipt", settled.receipt),
        }
        if settled.http_status is not None:
            attributes["http.response.status_code"] = settled.http_status
        if settled.provider_model_mismatch:
            attributes["agentguard.provider_model_mismatch"] = True
        if info.response_model:
            attributes["gen_ai.response.model"] = info.response_model
        if info.response_id:
            attributes["gen_ai.response.id"] = info.response_id
        if info.finish_reasons:
            attributes["gen_ai.response.finish_reasons"] = list(info.finish_reasons)
        usage = info.usage
        if usage is not None:
            attributes["gen_ai.usage.input_tokens"] = usage.input_tokens
            attributes["gen_ai.usage.output_tokens"] = usage.output_tokens
            if usage.cache_read_tokens:
                attributes["gen_ai.usage.cache_read.input_tokens"] = usage.cache_read_tokens
            cache_write = usage.cache_write_tokens + usage.cache_write_1h_tokens
            if cache_write:
                attributes["gen_ai.usage.cache_creation.input_tokens"] = cache_write
            if usage.reasoning_tokens:
                attributes["gen_ai.usage.reasoning.output_tokens"] = usage.reasoning_tokens
        span.set_attributes(attributes)

        metric_attrs: dict[str, Any] = {
            "gen_ai.operation.name": request.operation,
            "gen_ai.provider.name": request.provider,
            "gen_ai.request.model": decision.model_effective,
        }
        if info.response_model:
            metric_attrs["gen_ai.response.model"] = info.response_model
        if request.server_address:
            metric_attrs["server.address"] = request.server_address
        if usage is not None:
            self.token_usage.record(usage.input_tokens, {**metric_attrs, "gen_ai.token.type": "input"})
            if request.produces_output:
                self.token_usage.record(usage.output_tokens, {**metric_attrs, "gen_ai.token.type": "output"})
        duration_attrs = dict(metric_attrs)
        if settled.error_type is not None:
            duration_attrs["error.type"] = settled.error_type
        self.duration.record(settled.duration_s, duration_attrs)
        cost_attrs = {**self._scope_labels(settled.scope), **metric_attrs,
                      "agentguard.cost.source": settled.cost_source}
        if settled.provider_model_mismatch:
            cost_attrs["agentguard.provider_model_mismatch"] = True
        self.cost.add(nano_to_usd(settled.actual_nano), cost_attrs)
        self.budget.update(settled.budget)
        if settled.error_type is not None:
            status = f" (HTTP {settled.http_status})" if settled.http_status is not None else ""
            call.fail(settled.error_type, f"{settled.error_type}{status}")
        else:
            call.end()

    @contained
    def on_adjustment(self, budget: Sequence[BudgetReading]) -> None:
        """A deferred call's settlement was corrected (its receipt is logged like any other): the
        budget gauges move; ``agentguard.cost`` counted the reservation and, a counter, stays."""
        self.budget.update(budget)

    # -- logs -------------------------------------------------------------------------------

    @contained
    def emit_receipt(self, receipt: Sealed, call: CallSpan | None = None) -> None:
        """One log record per receipt; the body is the receipt line itself, byte for byte."""
        self.logger.emit(LogRecord(
            timestamp=time.time_ns(),
            context=call.context if call is not None else None,
            severity_number=SeverityNumber.INFO,
            severity_text="INFO",
            event_name="agentguard.receipt",
            body=receipt.line.decode("utf-8")[:-1],
            attributes={
                "agentguard.receipt.kind": receipt["kind"],
                "agentguard.receipt.hash": receipt["hash"],
                "agentguard.receipt.seq": receipt["seq"],
                "agentguard.receipt.chain": receipt["chain"],
            },
        ))

    # -- helpers ----------------------------------------------------------------------------

    @contained
    def emit_budget_event(self, event: BudgetEvent) -> None:
        """A threshold reached: one log record (event ``agentguard.budget.threshold``), its body the
        event as the webhook receives it."""
        body = event.as_json()
        self.logger.emit(LogRecord(
            timestamp=time.time_ns(),
            severity_number=SeverityNumber.WARN,
            severity_text="WARN",
            event_name="agentguard.budget.threshold",
            body=json.dumps(body, sort_keys=True),
            attributes={
                "agentguard.counter": event.counter,
                "agentguard.rule.id": event.rule_id,
                "agentguard.cap.window": event.window,
                "agentguard.budget.threshold": body["threshold"],
                **({} if body["utilization"] is None else {"agentguard.budget.utilization": body["utilization"]}),
            },
        ))

    @staticmethod
    def _scope_labels(scope: Scope) -> dict[str, Any]:
        return {BAGGAGE_PREFIX + name: value for name in METRIC_SCOPE_FIELDS
                if (value := scope.get(name)) is not None}

    @staticmethod
    def _policy_id(receipt: Mapping[str, Any] | None) -> str:
        policy = receipt.get("policy") if receipt else None
        return str(policy.get("id")) if isinstance(policy, Mapping) else ""
