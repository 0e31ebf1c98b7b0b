"""Budget threshold events end to end: the real openai SDK against the local server, a real webhook
receiver on 127.0.0.1, the SQLite and Redis ledgers shared by real processes."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentguard_otel import AgentGuardBlocked, scope
from agentguard_otel.alerts import BudgetEvent, WebhookSender, reached, threshold_label
from agentguard_otel.cli import main as cli
from agentguard_otel.console.usage import shown_url
from agentguard_otel.errors import PolicyError
from agentguard_otel.ledger import open_ledger
from agentguard_otel.ledger.base import window_id, zone
from agentguard_otel.ledger.report import counter_states
from agentguard_otel.policy import load_policy
from agentguard_otel.receipts import SigningKey
from tests.conftest import GuardFactory, Telemetry
from tests.redis_server import shared_server

from .webhook import WebhookReceiver

MESSAGES = [{"role": "user", "content": "Go."}]
ROOT = Path(__file__).resolve().parents[2]


def _chat(server: Any) -> Any:
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-test-secret", max_retries=0)
    return client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)


def _bound_and_cost(guarded: GuardFactory, server: Any) -> tuple[int, int]:
    """(reservation, actual cost) of one call, measured under a policy of its own."""
    probe = guarded({"version": 1, "id": "probe", "rules": [
        {"id": "probe", "caps": [{"limit_usd": 1000, "window": "day"}]}]}, ledger="memory://")
    _chat(server)
    decision, settlement = probe.receipts()[-2:]
    probe.instrumentor.uninstrument()
    return int(decision["estimated_nano"]), int(settlement["actual_nano"])


def _policy(limit_nano: int, webhook: str | None, action: str = "block", **cap: Any) -> dict[str, Any]:
    policy: dict[str, Any] = {"version": 1, "id": "budget", "rules": [{"id": "team", "per": ["team"], "caps": [
        {"limit_usd": str(Decimal(limit_nano) / 10**9), "window": "day", "action": action, **cap}]}]}
    if action == "downgrade":
        policy["rules"][0]["caps"][0]["downgrade_to"] = "gpt-4o-mini"
    if webhook:
        policy["alerts"] = {"webhook": webhook}
    return policy


def _threshold_records(otel: Telemetry) -> list[Any]:
    return [r.log_record for r in otel.logs.get_finished_logs()
            if r.log_record.event_name == "agentguard.budget.threshold"]


def test_a_cap_crossing_80_percent_posts_one_event_and_one_log_record(
        server: Any, guarded: GuardFactory, otel: Telemetry, tmp_path: Path) -> None:
    bound, cost = _bound_and_cost(guarded, server)
    assert bound > 2 * cost > 0
    limit = (2 * cost + bound) * 5 // 4  # the third reservation reaches 80 %, the second does not
    with WebhookReceiver() as hook:
        handle = guarded(_policy(limit, hook.url))
        with scope(team="eng", user="alice"):
            for _ in range(2):
                _chat(server)
            assert hook.events == [] and _threshold_records(otel) == []
            for _ in range(2):
                _chat(server)
        handle.instrumentor.uninstrument()  # delivers what waits
        (event,) = hook.events
    assert event["counter"] == "team#0|team=eng" and event["rule_id"] == "team" and event["window"] == "day"
    assert event["threshold"] == 0.8 and event["limit_usd"] == limit / 1e9
    assert event["spent_usd"] == (2 * cost + bound) / 1e9 and event["utilization"] == pytest.approx(0.8, abs=1e-6)
    assert event["scope"]["team"] == "eng" and event["scope"]["user"] == "alice"
    assert event["window_start"].startswith(event["ts"][:10]) and event["ts"].endswith("Z")
    (record,) = _threshold_records(otel)
    assert json.loads(str(record.body)) == event
    assert record.attributes["agentguard.budget.threshold"] == 0.8
    ledger = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}", existing=True)
    try:
        states = {s.key: state for s, state in counter_states(ledger)}
    finally:
        ledger.close()
    assert states["team#0|team=eng"] == "warned"
    (gauge,) = [p for p in otel.metric_points("agentguard.budget.state")
                if p.attributes["agentguard.counter"] == "team#0|team=eng"]
    assert gauge.value == 1 and gauge.attributes["agentguard.team"] == "eng"


def test_a_tripped_block_cap_is_stopped_and_a_downgrade_cap_degraded(
        server: Any, guarded: GuardFactory, otel: Telemetry, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    bound, _ = _bound_and_cost(guarded, server)
    guarded({"version": 1, "id": "budget", "rules": [
        {"id": "stop", "match": {"team": "eng"}, "caps": [{"limit_usd": str(Decimal(bound) / 10**9), "window": "day"}]},
        {"id": "slow", "match": {"team": "ops"}, "caps": [
            {"limit_usd": str(Decimal(bound) / 10**9), "window": "day", "action": "downgrade",
             "downgrade_to": "gpt-4o-mini", "alert_at": []}]}]})
    with scope(team="eng"):
        _chat(server)  # holds exactly the limit: 100 %, admitted
        with pytest.raises(AgentGuardBlocked):
            _chat(server)
    with scope(team="ops"):
        _chat(server)
        _chat(server)  # downgraded (to the same model: the cap stops being enforced), let through
    assert cli(["spend", "--ledger", f"sqlite:///{tmp_path / 'ledger.db'}", "--json"]) == 0
    rows = {row["counter"]: row["state"] for row in json.loads(capsys.readouterr().out)}
    assert rows == {"stop#0": "stopped", "slow#0": "degraded"}
    assert sorted(json.loads(str(r.body))["threshold"] for r in _threshold_records(otel)) == [0.8, 1.0]


def test_webhook_failures_are_retried_then_logged_and_never_reach_the_call(
        server: Any, guarded: GuardFactory, caplog: pytest.LogCaptureFixture) -> None:
    bound, _ = _bound_and_cost(guarded, server)
    with WebhookReceiver(refuse_first=2) as flaky, WebhookReceiver(refuse_first=99, status=500) as down:
        first = guarded(_policy(bound, flaky.url))
        with scope(team="eng"):
            _chat(server)
        first.instrumentor.uninstrument()
        # one call holds the whole limit: 80 % and 100 %; the first is refused twice, then delivered
        assert flaky.attempts == 4 and [e["threshold"] for e in flaky.events] == [0.8, 1.0]
        with caplog.at_level(logging.WARNING, logger="agentguard_otel.alerts"):
            second = guarded(_policy(bound, down.url))
            with scope(team="ops"):
                reply = _chat(server)
            second.instrumentor.uninstrument()
        assert reply.choices[0].message.content  # the caller got its answer
        assert down.events == [] and down.attempts == 3 * 2  # two thresholds, three attempts each
    undelivered = [r.getMessage() for r in caplog.records if "not delivered" in r.getMessage()]
    assert len(undelivered) == 2 and all("127.0.0.1: HTTP 500" in m for m in undelivered)
    assert not any("s3cret" in r.getMessage() for r in caplog.records)  # the URL's token is never logged


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_processes_sharing_a_ledger_post_each_threshold_once(
        backend: str, server: Any, guarded: GuardFactory, tmp_path: Path) -> None:
    bound, cost = _bound_and_cost(guarded, server)
    ledger = (f"sqlite:///{tmp_path / 'shared.db'}" if backend == "sqlite"
              else shared_server().url(prefix=f"budget-{tmp_path.name}:"))
    key = tmp_path / "worker.key"
    SigningKey.generate(key)
    # A downgrade cap (to the model asked for) lets every call through, so at the last of the twelve
    # reservations at least nine calls have settled, whatever the interleaving: spent + held is past
    # bound + 8 calls' cost, which is 80 % of the limit.
    limit = (bound + 8 * cost) * 5 // 4
    with WebhookReceiver() as hook:
        workers = [subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("worker.py")),
             json.dumps({"policy": _policy(limit, hook.url, "downgrade"), "ledger": ledger, "signing_key": str(key),
                         "receipts": str(tmp_path / f"receipts{i}")}), server.base_url, "4"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(3)]
        for worker in workers:
            _, err = worker.communicate(timeout=120)
            assert worker.returncode == 0, err
        thresholds = sorted(e["threshold"] for e in hook.events)
    assert thresholds.count(0.8) == 1 and thresholds.count(1.0) <= 1
    assert {e["counter"] for e in hook.events} == {"team#0|team=eng"}


def test_bad_alert_settings_fail_at_load_with_the_field(tmp_path: Path) -> None:
    for cap, field in (({"alert_at": [0.8, 0.8]}, "alert_at"), ({"alert_at": [0]}, "alert_at[0]"),
                       ({"alert_at": [11]}, "alert_at[0]")):
        path = tmp_path / "p.json"
        path.write_text(json.dumps({"version": 1, "rules": [
            {"id": "r", "caps": [{"limit_usd": 1, "window": "day", **cap}]}]}))
        with pytest.raises(PolicyError) as caught:
            load_policy(path)
        assert caught.value.field == f"rules[0].caps[0].{field}", caught.value
    path.write_text(json.dumps({"version": 1, "alerts": {"webhook": "file:///etc/passwd"}}))
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert caught.value.field == "alerts.webhook"


@given(st.integers(0, 10**18), st.integers(0, 10**18),
       st.decimals(min_value=Decimal("0.0001"), max_value=10, places=4, allow_nan=False))
def test_a_threshold_is_reached_exactly_when_used_over_limit_reaches_it(used: int, limit: int,
                                                                         threshold: Decimal) -> None:
    ratio = threshold.as_integer_ratio()
    assert (reached([(threshold, *ratio)], used, limit) == [threshold]) == (Decimal(used) >= threshold * Decimal(limit))


def test_a_forked_child_delivers_its_own_events(tmp_path: Path) -> None:
    def event(counter: str) -> BudgetEvent:
        return BudgetEvent(counter=counter, rule_id="r", window="day", window_start=None, threshold=Decimal("0.8"),
                           spent_nano=6, held_nano=2, limit_nano=10, scope={"team": "eng"}, ts=0.0)

    with WebhookReceiver() as hook:
        sender = WebhookSender(hook.url)
        sender.send(event("parent"))
        pid = os.fork()
        if pid == 0:  # the child: the parent's worker thread does not exist here
            try:
                sender.send(event("child"))
                sender.close()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        sender.close()
        assert sorted(e["counter"] for e in hook.events) == ["child", "parent"]
        assert hook.events[0]["utilization"] == 0.8 and hook.events[0]["ts"] == "1970-01-01T00:00:00Z"


def test_a_redirect_is_not_followed_and_the_event_is_reported_undelivered(caplog: pytest.LogCaptureFixture) -> None:
    event = BudgetEvent(counter="c", rule_id="r", window="day", window_start=None, threshold=Decimal("0.8"),
                        spent_nano=0, held_nano=0, limit_nano=0, scope={}, ts=0.0)
    assert event.as_json()["utilization"] is None  # a zero limit: JSON has no infinity
    with WebhookReceiver(refuse_first=99, status=302) as hook, \
            caplog.at_level(logging.WARNING, logger="agentguard_otel.alerts"):
        sender = WebhookSender(hook.url)
        sender.send(event)
        sender.close()
        assert hook.attempts == 1 and hook.events == []
    assert any("HTTP 302" in r.getMessage() for r in caplog.records)


def test_labels_and_window_ids_never_merge_what_differs() -> None:
    assert threshold_label(Decimal("0.80")) == "0.8" and threshold_label(Decimal("1E+1")) == "10"
    assert threshold_label(Decimal("0.5000000000000000000000000000001")) != threshold_label(Decimal("0.5"))
    new_york = zone("America/New_York")
    first, repeated = (datetime(2024, 11, 3, 1, tzinfo=new_york, fold=fold) for fold in (0, 1))
    assert window_id(first, "hour", 10, 0) != window_id(repeated, "hour", 10, 0)  # the DST fall-back hour twice
    utc = datetime(2024, 11, 3, 5, tzinfo=zone("UTC"))
    assert utc.timestamp() == first.timestamp() and window_id(utc, "hour", 10, 0) != window_id(first, "hour", 10, 0)
    assert window_id(utc, "day", 10, 0) != window_id(utc, "day", 20, 0)  # a raised limit is watched afresh
    assert shown_url("redis://user:s3cret@10.0.0.1:6379/0") == "redis://user:***@10.0.0.1:6379/0"
    assert shown_url("sqlite:////var/lib/ledger.db") == "sqlite:////var/lib/ledger.db"


def test_a_limit_raised_mid_window_fires_its_thresholds_again(server: Any, guarded: GuardFactory) -> None:
    bound, cost = _bound_and_cost(guarded, server)
    raised = (cost + bound) * 5 // 4  # the second call, on the first one's spend, reaches 80 % of it
    with WebhookReceiver() as hook:
        for limit in (bound, raised):
            handle = guarded(_policy(limit, hook.url, "downgrade"))
            with scope(team="eng"):
                _chat(server)
            handle.instrumentor.uninstrument()
        assert [(e["threshold"], e["limit_usd"]) for e in hook.events] == [
            (0.8, bound / 1e9), (1.0, bound / 1e9), (0.8, raised / 1e9)]
