"""What every framework test asserts, in one place: the policy they run under, exact settlement of
what the server answered, streams left early, provider errors, one guard span per call, and
spending until the cap blocks."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from agentguard_otel import AgentGuardBlocked
from agentguard_otel.ledger import CounterState
from agentguard_otel.pricing import TokenUsage
from tests.conftest import Guarded, Telemetry

CAP_REASON = "framework test cap"
TEAM_REASON = "team capped"
CAPPED_TEAM = "capped"
MAX_OUTPUT_TOKENS = 32  # injected on every call: above the servers' 24-word reply, so replies finish
DIFF = "+ print('hello')"  # what the tools the tests give a model return
PROMPT = "Review this diff, please."  # what every framework test asks its model
PROVIDER_ERROR = f"injected failure: the prompt was {PROMPT!r}"


def read_diff(path: str) -> str:
    """The diff of one file."""
    return f"{path}: {DIFF}"


def policy(limit_usd: str) -> dict[str, Any]:
    """One daily cap for everyone (``limit_usd``: a few calls' reservations of the test's model),
    and a per-call cap no call fits under for team ``capped``."""
    return {"version": 1, "id": "frameworks", "mode": "enforce", "default_max_output_tokens": MAX_OUTPUT_TOKENS,
            "rules": [
                {"id": "all", "caps": [{"limit_usd": limit_usd, "window": "day", "action": "block",
                                        "reason": CAP_REASON}]},
                {"id": "capped-team", "match": {"team": CAPPED_TEAM},
                 "caps": [{"limit_usd": "0.000000001", "window": "call", "action": "block", "reason": TEAM_REASON}]},
            ]}


def receipts(handle: Guarded, kind: str) -> list[dict[str, Any]]:
    return [r for r in handle.receipts() if r["kind"] == kind]


def daily_counter(handle: Guarded) -> CounterState:
    """The counter of the daily cap everyone shares."""
    (state,) = handle.guard.ledger.states("all#")
    return state


def assert_settled(handle: Guarded, server: Any, usages: Iterable[tuple[int, int]]) -> list[dict[str, Any]]:
    """Each request the server saw settled ``ok`` at the exact cost of the usage the framework
    reported to the caller (``(input_tokens, output_tokens)`` per call, in order); the ledger's
    spend is their sum and nothing stays held."""
    settled = receipts(handle, "settlement")
    assert [(s["usage"]["input_tokens"], s["usage"]["output_tokens"]) for s in settled] == list(usages)
    assert len(server.requests) == len(settled)
    providers = {r["call_id"]: r["provider"] for r in receipts(handle, "decision")}
    for s in settled:
        assert (s["outcome"], s["cost_source"], s["degraded"]) == ("ok", "local", False)
        price = handle.guard.prices.lookup(providers[s["call_id"]], s["model_effective"])
        assert price is not None
        assert 0 < s["actual_nano"] == handle.guard.prices.actual_cost_nano(price, TokenUsage(**s["usage"]))
        assert s["actual_nano"] <= s["estimated_nano"]
    daily = daily_counter(handle)
    assert (daily.spent_nano, daily.held_nano) == (sum(s["actual_nano"] for s in settled), 0)
    return settled


def assert_left_early(handle: Guarded, calls: int, outcomes: Iterable[str] = ("abandoned",)) -> None:
    """``calls`` streams left early each settled once, as one of ``outcomes`` (``abandoned``: at its
    reservation, since what was delivered does not bound the bill; ``ok``: the framework read the
    stream to its end anyway, at no more than its reservation), and the ledger holds nothing."""
    settled = receipts(handle, "settlement")
    assert len(settled) == calls
    assert {s["outcome"] for s in settled} <= set(outcomes)
    assert all(0 < s["actual_nano"] <= s["estimated_nano"] for s in settled)
    assert all(s["actual_nano"] == s["estimated_nano"] for s in settled if s["outcome"] == "abandoned")
    daily = daily_counter(handle)
    assert (daily.spent_nano, daily.held_nano) == (sum(s["actual_nano"] for s in settled), 0)


def fail_next_call(server: Any) -> None:
    """The next request gets a 400 (not retried) whose message quotes the prompt."""
    server.fail_next(400, message=PROVIDER_ERROR)


def assert_provider_error_released(handle: Guarded, otel: Telemetry, error: BaseException) -> None:
    """After :func:`fail_next_call`: the provider's error reached the caller (none of ours in it),
    the call settled ``error`` with its status and released its hold, and the error's text is in
    no receipt, span or log record."""
    chain = causes(error)
    assert not any(isinstance(e, AgentGuardBlocked) for e in chain)
    assert 400 in {getattr(e, "status_code", None) for e in chain}
    (settled,) = receipts(handle, "settlement")
    assert (settled["outcome"], settled["http_status"], settled["actual_nano"]) == ("error", 400, 0)
    daily = daily_counter(handle)
    assert (daily.spent_nano, daily.held_nano) == (0, 0)
    spans = [f"{dict(s.attributes or {})} {s.status.description}" for s in otel.finished()]
    logs = [f"{r.log_record.body} {dict(r.log_record.attributes or {})}" for r in otel.logs.get_finished_logs()]
    recorded = [json.dumps(handle.receipts()), *spans, *logs]
    assert not [r for r in recorded if "injected failure" in r or "Review this diff" in r]


def guard_spans(otel: Telemetry) -> list[Any]:
    """The finished spans of the guard (not a framework's own instrumentation)."""
    return [s for s in otel.finished() if s.instrumentation_scope.name == "agentguard_otel.telemetry"]


def assert_one_span_per_call(otel: Telemetry, handle: Guarded) -> None:
    """One guard span per decision (an LLM call), each ended, none left over."""
    spans = guard_spans(otel)
    decisions = receipts(handle, "decision")
    assert sorted(s.attributes["agentguard.receipt.hash"] for s in spans) == sorted(d["hash"] for d in decisions)


def causes(error: BaseException) -> list[BaseException]:
    """``error`` and what it was raised from or while handling, outermost first."""
    chain: list[BaseException] = []
    seen: BaseException | None = error
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    return chain


def ours(error: BaseException) -> AgentGuardBlocked:
    """The AgentGuardBlocked a framework raised, as is or as the cause of its own error."""
    blocked = [e for e in causes(error) if isinstance(e, AgentGuardBlocked)]
    assert blocked, f"not the guard's: {error!r}"
    return blocked[0]


def assert_blocked(call: Callable[[], Any], server: Any, handle: Guarded, reason: str = CAP_REASON, *,
                   as_is: bool = False) -> AgentGuardBlocked:
    """``call`` raises the guard's block (wrapped by the framework, unless ``as_is``), signed in a
    block decision, and sends nothing to the server."""
    seen = len(server.requests)
    try:
        call()
    except Exception as error:  # whatever the framework wrapped ours in
        assert isinstance(error, AgentGuardBlocked) or not as_is, f"wrapped by the framework: {error!r}"
        blocked = ours(error)
    else:
        raise AssertionError("the call was not blocked")
    assert blocked.reason == reason
    assert len(server.requests) == seen
    decision = receipts(handle, "decision")[-1]
    assert (decision["action"], decision["hash"]) == ("block", blocked.receipt_hash)
    return blocked


def _next_fits(handle: Guarded) -> bool:
    """Whether a call reserving what the last one did still fits under the daily cap."""
    daily = daily_counter(handle)
    return daily.spent_nano + receipts(handle, "decision")[-1]["estimated_nano"] <= daily.limit_nano


def spend_until_blocked(call: Callable[[], Any], server: Any, handle: Guarded) -> AgentGuardBlocked:
    """Make ``call`` while its reservation fits under the daily cap (at least once); the next one
    is blocked before the server, for the cap's reason."""
    call()
    while _next_fits(handle):
        call()
    blocked = assert_blocked(call, server, handle)
    assert blocked.rule_id == "all"
    assert not _next_fits(handle)
    return blocked
