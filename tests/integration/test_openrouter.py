"""OpenRouter through the real ``openai`` SDK: a client pointed at ``https://openrouter.ai/api/v1``
whose connections are routed to the local server in OpenRouter mode (only name resolution is
redirected; the SDK, HTTP and the wire format are real)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import openai
import pytest

from agentguard_otel import AgentGuardBlocked
from agentguard_otel.demo.routing import local_openrouter_client
from tests.conftest import GuardFactory, Telemetry
from tests.servers.openai_server import LocalOpenAIServer

PRICES = {"openai/gpt-4o-mini": ("0.15", "0.60"), "openai/gpt-4o": ("2.50", "10.00")}
MESSAGES = [{"role": "user", "content": "Collect the chargeback evidence."}]
POLICY: dict[str, Any] = {"version": 1, "id": "router", "rules": [
    {"id": "all", "caps": [{"limit_usd": 10, "window": "day", "action": "block"}]}]}


@pytest.fixture(scope="module")
def router() -> Iterator[LocalOpenAIServer]:
    with LocalOpenAIServer(openrouter=True, prices_usd_per_mtok=PRICES) as srv:
        yield srv


@pytest.fixture
def client(router: LocalOpenAIServer) -> openai.OpenAI:
    router.reset()
    return local_openrouter_client(router.base_url, api_key="sk-or-test")


def test_openrouter_is_named_and_its_reported_cost_is_the_actual(client: openai.OpenAI, guarded: GuardFactory,
                                                                  otel: Telemetry) -> None:
    handle = guarded(POLICY)
    response = client.chat.completions.create(model="openai/gpt-4o-mini", messages=MESSAGES)
    decision, settlement = handle.receipts()
    assert (decision["provider"], decision["price_source"]) == ("openrouter", "genai-prices")
    assert settlement["cost_source"] == "provider"
    assert settlement["actual_nano"] == int(Decimal(repr(response.usage.cost)) * 10**9)  # type: ignore[union-attr]
    span = otel.finished()[-1]
    assert span.attributes["gen_ai.provider.name"] == "openrouter"
    assert span.attributes["server.address"] == "openrouter.ai"
    assert span.attributes["agentguard.cost.source"] == "provider"


def test_fallback_list_reserves_for_the_most_expensive_candidate(client: openai.OpenAI,
                                                                 guarded: GuardFactory) -> None:
    handle = guarded(POLICY)
    client.chat.completions.create(model="openai/gpt-4o-mini", messages=MESSAGES)
    client.chat.completions.create(model="openai/gpt-4o", messages=MESSAGES)
    client.chat.completions.create(model="openai/gpt-4o-mini", messages=MESSAGES,
                                   extra_body={"models": ["openai/gpt-4o-mini", "openai/gpt-4o"]})
    small, big, listed = [r["estimated_nano"] for r in handle.receipts() if r["kind"] == "decision"]
    assert small < big
    assert listed == big


def test_the_model_that_answered_is_settled_and_the_fallback_recorded(client: openai.OpenAI, router: Any,
                                                                      guarded: GuardFactory) -> None:
    handle = guarded({**POLICY, "unknown_model": "allow"})
    response = client.chat.completions.create(
        model="unavailable/gpt-5", messages=MESSAGES,
        extra_body={"models": ["unavailable/gpt-5", "openai/gpt-4o-mini"], "provider": {"sort": "price"}})
    assert response.model == "openai/gpt-4o-mini"
    assert router.requests[0].body["provider"] == {"sort": "price"}
    decision, settlement = handle.receipts()
    assert decision["unknown_model"] is True  # the listed unknown model is reserved at the fallback rate
    assert (settlement["fallback"], settlement["response_model"]) == (True, "openai/gpt-4o-mini")
    assert settlement["actual_nano"] == int(Decimal(repr(response.usage.cost)) * 10**9)  # type: ignore[union-attr]


def test_every_candidate_must_be_allowed(client: openai.OpenAI, router: Any, guarded: GuardFactory) -> None:
    guarded({"version": 1, "id": "router", "rules": [
        {"id": "cheap", "models": {"allow": ["openai/gpt-4o-mini"]}}]})
    with pytest.raises(AgentGuardBlocked, match="model openai/gpt-4o is not allowed"):
        client.chat.completions.create(model="openai/gpt-4o-mini", messages=MESSAGES,
                                       extra_body={"models": ["openai/gpt-4o-mini", "openai/gpt-4o"]})
    assert router.requests == []


def test_downgrade_drops_the_fallback_list(client: openai.OpenAI, router: Any, guarded: GuardFactory) -> None:
    handle = guarded({"version": 1, "id": "router", "rules": [{"id": "risk", "caps": [
        {"limit_usd": "0.000001", "window": "day", "action": "downgrade", "downgrade_to": "openai/gpt-4o-mini"}]}]})
    client.chat.completions.create(model="openai/gpt-4o", messages=MESSAGES,
                                   extra_body={"models": ["openai/gpt-4o", "anthropic/claude-sonnet-4.5"]})
    body = router.requests[0].body
    assert body["model"] == "openai/gpt-4o-mini" and "models" not in body  # the target is the only model
    decision, settlement = handle.receipts()
    assert decision["action"] == "downgrade" and settlement["fallback"] is False


def test_credit_preflight_blocks_below_the_minimum_and_asks_once_per_interval(
        client: openai.OpenAI, router: Any, guarded: GuardFactory) -> None:
    guarded({**POLICY, "credit_check": {"min_remaining_usd": "5", "interval_seconds": 3600}})
    router.set_credit_remaining("4.25")
    with pytest.raises(AgentGuardBlocked, match=r"\$4.25 credit left, below the policy's minimum of \$5.00"):
        client.chat.completions.create(model="openai/gpt-4o-mini", messages=MESSAGES)
    router.set_credit_remaining("100")  # not asked again within the interval: still blocked
    with pytest.raises(AgentGuardBlocked):
        client.chat.completions.create(model="openai/gpt-4o-mini", messages=MESSAGES)
    asked = [r for r in router.requests if r.method == "GET"]
    assert [r.path for r in asked] == ["/api/v1/key"]
    assert all(r.method == "GET" for r in router.requests)  # no completion reached the router


def test_credit_preflight_allows_above_the_minimum_and_unlimited_keys(
        client: openai.OpenAI, router: Any, guarded: GuardFactory) -> None:
    guarded({**POLICY, "credit_check": {"min_remaining_usd": "5", "interval_seconds": 1}})
    router.set_credit_remaining("12.5")
    client.chat.completions.create(model="openai/gpt-4o-mini", messages=MESSAGES)
    router.set_credit_remaining(None)
    import time
    time.sleep(1.1)
    client.chat.completions.create(model="openai/gpt-4o-mini", messages=MESSAGES)
    assert [r.method for r in router.requests] == ["GET", "POST", "GET", "POST"]
