"""LiteLLM under the guard, against the local servers with the providers' host names resolved to
127.0.0.1: its ``openai/`` route goes through the OpenAI SDK (the SDK's choke point), its
``anthropic/`` and ``bedrock/`` routes send their own httpx requests (SigV4-signed for Bedrock;
async over LiteLLM's aiohttp-backed transport), guarded by the transport tripwire through the
adapter of their wire format. Every call settles at exactly the usage LiteLLM reports, one guard
span each, a spent cap blocks before the server, and ``batch_completion`` keeps the caller's scope."""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest

from agentguard_otel import AgentGuardBlocked, scope
from tests.conftest import GuardFactory, Telemetry
from tests.frameworks.conftest import Run
from tests.frameworks.support import (
    CAPPED_TEAM,
    MAX_OUTPUT_TOKENS,
    TEAM_REASON,
    assert_blocked,
    assert_one_span_per_call,
    assert_settled,
    ours,
    policy,
    receipts,
    spend_until_blocked,
)
from tests.integration.known_hosts import ANTHROPIC_HOST, BEDROCK_HOST, OPENAI_HOST, at, resolve_locally
from tests.servers.bedrock_server import LocalBedrockServer

MESSAGES = [{"role": "user", "content": "Review this diff, please."}]
AWS = {"aws_access_key_id": "AKIDEXAMPLE", "aws_secret_access_key": "fake-secret", "aws_region_name": "us-east-1"}


@pytest.fixture
def litellm(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """LiteLLM with its bundled model-cost map (no fetch at import) and nothing but the local names
    resolvable, so no request of it can leave the machine."""
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    resolve_locally(monkeypatch, offline=True)
    module = importlib.import_module("litellm")
    monkeypatch.setattr(module, "suppress_debug_info", True)
    yield module


@pytest.fixture(scope="module")
def _bedrock_server() -> Iterator[LocalBedrockServer]:
    with LocalBedrockServer() as srv:
        yield srv


@dataclass
class Route:
    model: str
    server: Any
    options: dict[str, Any]  # where LiteLLM sends it, and its credentials
    limit_usd: str  # a few calls' reservations, then the daily cap blocks


@pytest.fixture(params=["openai", "anthropic", "bedrock", "bedrock invoke"])
def route(request: pytest.FixtureRequest, _bedrock_server: LocalBedrockServer) -> Route:
    if request.param == "openai":
        srv = request.getfixturevalue("server")
        srv.reset()
        return Route("openai/gpt-4o-mini", srv, {"api_base": at(OPENAI_HOST, srv), "api_key": "sk-test"}, "0.0001")
    if request.param == "anthropic":
        srv = request.getfixturevalue("anthropic_server")
        return Route("anthropic/claude-haiku-4-5", srv, {"api_base": at(ANTHROPIC_HOST, srv), "api_key": "sk-ant"},
                     "0.001")
    _bedrock_server.reset()
    if request.param == "bedrock invoke":  # the model's own InvokeModel body (Anthropic Messages on Bedrock)
        return Route("bedrock/invoke/us.anthropic.claude-3-5-haiku-20241022-v1:0", _bedrock_server,
                     {"aws_bedrock_runtime_endpoint": at(BEDROCK_HOST, _bedrock_server), **AWS}, "0.0005")
    return Route("bedrock/amazon.nova-lite-v1:0", _bedrock_server,
                 {"aws_bedrock_runtime_endpoint": at(BEDROCK_HOST, _bedrock_server), **AWS}, "0.00003")


def usage(response: Any) -> tuple[int, int]:
    return response.usage.prompt_tokens, response.usage.completion_tokens


def arguments(route: Route, **extra: Any) -> dict[str, Any]:
    return {"model": route.model, "messages": MESSAGES, "max_tokens": MAX_OUTPUT_TOKENS, "num_retries": 0,
            **route.options, **extra}


def streamed_usage(chunks: list[Any]) -> tuple[int, int]:
    """The usage LiteLLM reports in the last chunk of a stream asked to include it."""
    (last,) = [c for c in chunks if getattr(c, "usage", None) is not None][-1:]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return usage(last)


def test_completion_and_acompletion_settle_exactly(litellm: ModuleType, route: Route, run: Run[Any],
                                                   guarded: GuardFactory, otel: Telemetry) -> None:
    handle = guarded(policy(route.limit_usd))
    replies = [litellm.completion(**arguments(route)), run(litellm.acompletion(**arguments(route)))]
    assert all(r.choices[0].message.content for r in replies)
    assert [r["action"] for r in receipts(handle, "decision")] == ["allow", "allow"]
    assert_settled(handle, route.server, [usage(r) for r in replies])
    assert_one_span_per_call(otel, handle)


def test_streams_settle_exactly(litellm: ModuleType, route: Route, run: Run[Any], guarded: GuardFactory,
                                otel: Telemetry) -> None:
    handle = guarded(policy(route.limit_usd))
    options = arguments(route, stream=True, stream_options={"include_usage": True})

    async def astream() -> list[Any]:
        stream: AsyncIterator[Any] = await litellm.acompletion(**options)
        return [chunk async for chunk in stream]

    streamed = [list(litellm.completion(**options)), run(astream())]
    assert [r["stream"] for r in receipts(handle, "decision")] == [True, True]
    assert_settled(handle, route.server, [streamed_usage(s) for s in streamed])
    assert_one_span_per_call(otel, handle)


def test_a_spent_cap_blocks_before_the_server(litellm: ModuleType, route: Route, run: Run[Any],
                                              guarded: GuardFactory, otel: Telemetry) -> None:
    handle = guarded(policy(route.limit_usd))
    spend_until_blocked(lambda: litellm.completion(**arguments(route)), route.server, handle)
    assert_blocked(lambda: run(litellm.acompletion(**arguments(route))), route.server, handle)
    assert_blocked(lambda: list(litellm.completion(**arguments(route, stream=True))), route.server, handle)
    assert_one_span_per_call(otel, handle)


def test_batch_completion_keeps_the_callers_scope(litellm: ModuleType, route: Route, guarded: GuardFactory,
                                                  otel: Telemetry) -> None:
    handle = guarded(policy("1"))  # room for every concurrent reservation
    args = arguments(route)
    del args["messages"]
    with scope(team="research", user="ada"):
        replies = litellm.batch_completion(messages=[MESSAGES] * 3, **args)
    assert [(r["scope"]["team"], r["scope"]["user"]) for r in receipts(handle, "settlement")] == [
        ("research", "ada")] * 3
    settled = {s["usage"]["input_tokens"] for s in receipts(handle, "settlement")}
    assert {usage(r)[0] for r in replies} == settled
    assert len(route.server.requests) == 3
    assert_one_span_per_call(otel, handle)


def test_a_team_cap_applies_to_every_call_of_a_batch(litellm: ModuleType, route: Route, guarded: GuardFactory,
                                                     otel: Telemetry) -> None:
    handle = guarded(policy(route.limit_usd))
    args = arguments(route)
    del args["messages"]
    with scope(team=CAPPED_TEAM):
        outcomes = litellm.batch_completion(messages=[MESSAGES] * 3, **args)
    assert [(ours(o).reason, ours(o).scope["team"]) for o in outcomes] == [(TEAM_REASON, CAPPED_TEAM)] * 3
    assert route.server.requests == []
    assert [r["action"] for r in receipts(handle, "decision")] == ["block"] * 3
    assert_one_span_per_call(otel, handle)


def test_a_signed_bedrock_call_the_guard_must_change_is_refused(litellm: ModuleType, guarded: GuardFactory,
                                                                _bedrock_server: LocalBedrockServer) -> None:
    """Without ``max_tokens`` the policy injects a limit; LiteLLM signed the body, so it cannot be changed."""
    _bedrock_server.reset()
    handle = guarded(policy("1"))
    with pytest.raises(Exception) as raised:  # LiteLLM wraps the guard's error in its own
        litellm.completion(model="bedrock/amazon.nova-lite-v1:0", messages=MESSAGES, num_retries=0,
                           aws_bedrock_runtime_endpoint=at(BEDROCK_HOST, _bedrock_server), **AWS)
    blocked = ours(raised.value)
    assert isinstance(blocked, AgentGuardBlocked)
    assert "signed (AWS SigV4), so its body cannot carry the guard's changes" in blocked.reason
    assert _bedrock_server.requests == []
    (settlement,) = receipts(handle, "settlement")
    assert (settlement["outcome"], settlement["actual_nano"]) == ("unsent", 0)


def test_an_async_call_over_litellms_aiohttp_transport_is_guarded_once(
        litellm: ModuleType, anthropic_server: Any, run: Run[Any], guarded: GuardFactory, otel: Telemetry) -> None:
    """The httpx request is guarded at ``AsyncClient.send``; the aiohttp request carrying it is the
    lifecycle's own, so the aiohttp watch lets it by: one decision, one span."""
    from litellm.llms.custom_httpx.http_handler import get_async_httpx_client

    async def call() -> tuple[str, Any]:
        client = get_async_httpx_client(llm_provider=litellm.LlmProviders.ANTHROPIC)
        reply = await litellm.acompletion(model="anthropic/claude-haiku-4-5", messages=MESSAGES, api_key="sk-ant",
                                          api_base=at(ANTHROPIC_HOST, anthropic_server), max_tokens=MAX_OUTPUT_TOKENS)
        return type(client.client._transport).__name__, reply

    handle = guarded(policy("1"))
    transport, reply = run(call())
    assert transport == "LiteLLMAiohttpTransport"
    assert_settled(handle, anthropic_server, [usage(reply)])
    assert_one_span_per_call(otel, handle)
