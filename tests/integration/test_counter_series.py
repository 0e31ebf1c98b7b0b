"""``agentguard.cost`` and ``agentguard.decisions`` are observable counters whose totals the guard
keeps itself: exact integer sums per attribute set, nothing lost past the cardinality limit."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.metrics import CallbackOptions

from agentguard_otel.money import nano_to_usd
from agentguard_otel.telemetry import COST_ATTRS, CounterSeries, Telemetry
from tests.conftest import Telemetry as Otel


def _observed(series: CounterSeries) -> dict[frozenset[tuple[str, object]], float]:
    return {frozenset((o.attributes or {}).items()): o.value for o in series.observe(CallbackOptions())}


def test_money_is_summed_in_nano_usd_and_reported_in_usd_once() -> None:
    series = CounterSeries(("agentguard.team",), nano_to_usd)
    for _ in range(10):
        series.add(("eng",), 100_000_000)  # 0.1 USD: ten float additions of 0.1 give 0.9999999999999999
    assert _observed(series) == {frozenset({("agentguard.team", "eng")}): 1.0}


def test_an_absent_value_leaves_its_attribute_out() -> None:
    series = CounterSeries(("agentguard.team", "agentguard.rule.id"))
    series.add(("eng", None), 2)
    series.add((None, "r1"), 3)
    assert _observed(series) == {frozenset({("agentguard.team", "eng")}): 2,
                                 frozenset({("agentguard.rule.id", "r1")}): 3}


def test_sets_past_the_limit_add_to_the_overflow_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CounterSeries, "LIMIT", 2)
    series = CounterSeries(("k",))
    for value, amount in (("a", 1), ("b", 2), ("c", 4), ("a", 8), ("d", 16)):
        series.add((value,), amount)
    assert _observed(series) == {frozenset({("k", "a")}): 9, frozenset({("k", "b")}): 2,
                                 frozenset({("otel.metric.overflow", True)}): 20}


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c", None]), st.sampled_from(["x", None]),
                          st.integers(min_value=0, max_value=10**15)), max_size=60),
       st.integers(min_value=0, max_value=4))
def test_every_amount_is_reported_once(adds: list[tuple[str | None, str | None, int]], limit: int) -> None:
    series = CounterSeries(("k", "m"))
    series.LIMIT = limit  # type: ignore[misc]
    expected: Counter[tuple[str | None, str | None]] = Counter()
    for k, m, amount in adds:
        series.add((k, m), amount)
        expected[(k, m)] += amount
    observed = series.observe(CallbackOptions())
    assert sum(int(o.value) for o in observed) == sum(expected.values())
    kept = [o for o in observed if o.attributes != CounterSeries.OVERFLOW]
    assert len(kept) <= limit
    for o in kept:
        attrs = o.attributes or {}
        assert o.value == expected[(attrs.get("k"), attrs.get("m"))]  # type: ignore[arg-type]


def test_a_guard_built_again_on_the_same_meter_reports_through_the_first_counters(otel: Otel) -> None:
    first = Telemetry(meter_provider=otel.meter_provider)
    second = Telemetry(meter_provider=otel.meter_provider)
    assert second.cost is first.cost and second.decisions is first.decisions
    values = tuple("eng" if name == "agentguard.team" else None for name in COST_ATTRS)
    first.cost.add(values, 1_500_000_000)
    second.cost.add(values, 2_500_000_000)
    (point,) = otel.metric_points("agentguard.cost")
    assert point.value == 4.0 and dict(point.attributes) == {"agentguard.team": "eng"}


def test_separate_meter_providers_keep_separate_counters(otel: Otel) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    other = Telemetry(meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]))
    mine = Telemetry(meter_provider=otel.meter_provider)
    assert other.decisions is not mine.decisions
    other.decisions.add(("theirs",) + (None,) * (len(other.decisions.names) - 1), 1)
    assert otel.metric_points("agentguard.decisions") == []


_BEFORE_AND_AFTER_THE_GLOBAL_PROVIDER = """
import json
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from agentguard_otel.telemetry import COST_ATTRS, BudgetReading, Telemetry

early, second = Telemetry(), Telemetry()          # proxy instruments: no provider is set yet
reader = InMemoryMetricReader()
provider = MeterProvider(metric_readers=[reader])
metrics.set_meter_provider(provider)
late, explicit = Telemetry(), Telemetry(meter_provider=provider)
values = (None,) * len(COST_ATTRS)
for n, telemetry in enumerate((early, second, late, explicit)):
    telemetry.cost.add(values, 10**9 * 2**n)
    telemetry.on_adjustment([BudgetReading(f"c{n}", "r", "day", n, 10)])
points = {m.name: [(p.value, dict(p.attributes)) for p in m.data.data_points]
          for rm in reader.get_metrics_data().resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
print(json.dumps(points))
"""


def test_every_guard_on_the_global_meter_provider_is_reported_set_before_or_after() -> None:
    # Run alone: the global meter provider can be set once per process.
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _BEFORE_AND_AFTER_THE_GLOBAL_PROVIDER], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    points = json.loads(out)
    assert points["agentguard.cost"] == [[15.0, {}]]
    assert sorted(attrs["agentguard.counter"] for _, attrs in points["agentguard.budget.utilization"]) == [
        "c0", "c1", "c2", "c3"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_forked_child_adds_while_a_parent_thread_held_the_lock() -> None:
    series = CounterSeries(("k",))
    series.add(("a",), 1)
    with series._lock:  # another thread of the parent, mid-add, at the moment of the fork
        pid = os.fork()
        if pid == 0:  # the child: must not hang on the inherited lock
            series.add(("a",), 2)
            os._exit(0 if _observed(series) == {frozenset({("k", "a")}): 3} else 1)
    deadline = time.monotonic() + 20
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the child hung on the lock the parent held at the fork")
    assert os.waitstatus_to_exitcode(done[1]) == 0
