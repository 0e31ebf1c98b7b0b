"""The budget gauges are observed at collection from the latest reading of each counter."""

from __future__ import annotations

import os
import signal
import time

import pytest
from opentelemetry.metrics import CallbackOptions

from agentguard_otel import telemetry
from agentguard_otel.telemetry import BudgetReading, BudgetSeries, Telemetry
from tests.conftest import Telemetry as Otel


def _gauges(otel: Otel, name: str) -> dict[str, tuple[float, dict[str, object]]]:
    return {str(p.attributes["agentguard.counter"]): (p.value, dict(p.attributes)) for p in otel.metric_points(name)}


def test_a_guard_built_again_on_the_same_meter_reports_through_the_first_gauge(otel: Otel) -> None:
    # A meter hands the second Telemetry the instruments it already has, with the first one's
    # callbacks: both must write to the series those callbacks read.
    first = Telemetry(meter_provider=otel.meter_provider)
    second = Telemetry(meter_provider=otel.meter_provider)
    assert second.budget is first.budget
    first.on_adjustment([BudgetReading("c1", "team", "day", 5, 10)])
    second.on_adjustment([BudgetReading("c1", "team", "day", 7, 10, state="warned"),
                          BudgetReading("c2", "team", "month", 30, 10, state="stopped",
                                        scope_labels=(("team", "eng"),))])
    utilization = _gauges(otel, "agentguard.budget.utilization")
    assert {k: v for k, (v, _) in utilization.items()} == {"c1": pytest.approx(0.7), "c2": pytest.approx(3.0)}
    assert utilization["c2"][1] == {"agentguard.counter": "c2", "agentguard.rule.id": "team",
                                    "agentguard.cap.window": "month", "agentguard.team": "eng"}
    states = _gauges(otel, "agentguard.budget.state")
    assert {k: v for k, (v, _) in states.items()} == {"c1": 1, "c2": 3}


def test_separate_meter_providers_keep_separate_series(otel: Otel) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    other_reader = InMemoryMetricReader()
    other = Telemetry(meter_provider=MeterProvider(metric_readers=[other_reader]))
    mine = Telemetry(meter_provider=otel.meter_provider)
    other.on_adjustment([BudgetReading("theirs", "r", "day", 1, 10)])
    mine.on_adjustment([BudgetReading("mine", "r", "day", 2, 10)])
    assert set(_gauges(otel, "agentguard.budget.utilization")) == {"mine"}


def test_the_series_forgets_the_counter_updated_longest_ago(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(BudgetSeries, "LIMIT", 3)
    series = BudgetSeries()
    for name in ("a", "b", "c"):
        series.update([BudgetReading(name, "r", "day", 1, 10)])
    series.update([BudgetReading("a", "r", "day", 4, 10), BudgetReading("d", "r", "day", 2, 10)])
    observed = {str((o.attributes or {})["agentguard.counter"]): o.value for o in series.utilization(CallbackOptions())}
    assert observed == {"c": pytest.approx(0.1), "a": pytest.approx(0.4), "d": pytest.approx(0.2)}


@pytest.mark.parametrize("held", ["series", "registry"])
def test_a_forked_child_is_not_hung_by_a_lock_a_parent_thread_held(held: str, otel: Otel) -> None:
    series = BudgetSeries()
    lock = series._lock if held == "series" else telemetry._SERIES_LOCK
    with lock:  # another thread of the parent, mid-update or mid-build, at the moment of the fork
        pid = os.fork()
        if pid == 0:  # the child: must not hang on the inherited lock, and never returns to pytest
            code = 1
            try:
                series.update([BudgetReading("c1", "r", "day", 3, 10)])
                Telemetry(meter_provider=otel.meter_provider)
                code = 0 if [o.value for o in series.utilization(CallbackOptions())] == [pytest.approx(0.3)] else 1
            finally:
                os._exit(code)
    deadline = time.monotonic() + 20
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the child hung on a lock the parent held at the fork")
    assert os.waitstatus_to_exitcode(done[1]) == 0
