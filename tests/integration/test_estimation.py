"""Estimation modes through the guard. ``strict`` reserves a proven bound (no overshoot, ever);
``expected`` may overshoot, by at most what the README states: 3/4 x input bytes x the model's top
input rate. Usage is drawn over everything a real tokenizer could report (input tokens up to the
UTF-8 bytes plus overheads, output up to the clamp)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agentguard_otel import AgentGuardInstrumentor
from agentguard_otel.call import LLMRequest, ResponseInfo
from agentguard_otel.money import ceil_div
from agentguard_otel.pricing import FIXED_OVERHEAD, PER_ITEM_OVERHEAD, TokenUsage
from agentguard_otel.receipts import SigningKey, load_public_keys, verify

MAX_OUTPUT = 512


def _run(tmp_path: Path, estimation: str) -> tuple[list[int], list[int], Any]:
    SigningKey.generate(tmp_path / "k")
    instrumentor = AgentGuardInstrumentor()
    instrumentor.instrument(
        policy={"version": 1, "id": "est", "estimation": estimation, "rules": [
            {"id": "all", "max_output_tokens": MAX_OUTPUT,
             "caps": [{"limit_usd": 1_000_000, "window": "day", "action": "block"}]}]},
        signing_key=str(tmp_path / "k"), ledger="memory://", receipts=str(tmp_path / "r"))
    guard = instrumentor.guard
    assert guard is not None
    price = guard.prices.lookup("openai", "gpt-4o")
    assert price is not None
    overshoots: list[int] = []
    bounds: list[int] = []

    @settings(max_examples=150, deadline=None)
    @given(input_bytes=st.integers(0, 200_000), items=st.integers(1, 40), data=st.data())
    def call(input_bytes: int, items: int, data: st.DataObject) -> None:
        request = LLMRequest(provider="openai", price_provider="openai", operation="chat", model="gpt-4o",
                             stream=False, input_bytes=input_bytes, input_items=items, input_images=0,
                             max_output_tokens=None)
        most_input = input_bytes + PER_ITEM_OVERHEAD * items + FIXED_OVERHEAD
        usage = TokenUsage(input_tokens=data.draw(st.integers(0, most_input)),
                           output_tokens=data.draw(st.integers(0, MAX_OUTPUT)))
        guarded = guard.begin(request)
        guarded.finish(ResponseInfo(usage=usage, response_model="gpt-4o"))
        actual = guard.prices.actual_cost_nano(price, usage)
        overshoots.append(max(0, actual - guarded.decision.estimated_nano))
        bounds.append(ceil_div(3 * input_bytes * price.max_input, 4 * 1_000_000) + 1)

    try:
        call()
    finally:
        instrumentor.uninstrument()
    return overshoots, bounds, guard


def _settlements(tmp_path: Path) -> list[dict[str, Any]]:
    return [r for path in (tmp_path / "r").glob("*.ndjson") for line in path.read_text().splitlines()
            if (r := json.loads(line))["kind"] == "settlement"]


def test_strict_estimation_never_overshoots(tmp_path: Path) -> None:
    overshoots, _, _ = _run(tmp_path, "strict")
    assert set(overshoots) == {0}
    assert {r["overshoot_nano"] for r in _settlements(tmp_path)} == {0}


def test_expected_overshoot_is_reported_and_within_the_stated_bound(tmp_path: Path) -> None:
    overshoots, bounds, _ = _run(tmp_path, "expected")
    assert all(o <= b for o, b in zip(overshoots, bounds, strict=True))
    assert any(o > 0 for o in overshoots), "expected estimation must be able to overshoot"
    settled = _settlements(tmp_path)
    assert sorted(r["overshoot_nano"] for r in settled) == sorted(overshoots)
    report = verify([tmp_path / "r"], load_public_keys([tmp_path / "k.pub"]))
    assert report.ok, report.first_error
