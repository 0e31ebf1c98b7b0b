"""pydantic-ai agents on OpenAI Chat Completions, OpenAI Responses and Anthropic models, through the
real SDKs to the local servers, guarded: ``run_sync``, ``run`` and ``run_stream`` settle at the
exact cost (the one pydantic-ai itself computes), a spent cap blocks the next run before the
server, one guard span per model request, and the scope follows runs handed to threads."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from pydantic_ai import Agent, ModelHTTPError
from pydantic_ai.capabilities import Instrumentation
from pydantic_ai.messages import ModelMessage, ModelResponse, ToolReturnPart
from pydantic_ai.models import Model
from pydantic_ai.models.anthropic import AnthropicModel
from pydantic_ai.models.instrumented import InstrumentationSettings
from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel
from pydantic_ai.providers.anthropic import AnthropicProvider
from pydantic_ai.providers.openai import OpenAIProvider
from pydantic_ai.usage import RunUsage

from agentguard_otel import scope
from tests.conftest import GuardFactory, Telemetry
from tests.frameworks.conftest import Run
from tests.frameworks.support import (
    CAPPED_TEAM,
    DIFF,
    MAX_OUTPUT_TOKENS,
    PROMPT,
    TEAM_REASON,
    assert_blocked,
    assert_left_early,
    assert_one_span_per_call,
    assert_provider_error_released,
    assert_settled,
    fail_next_call,
    guard_spans,
    ours,
    policy,
    read_diff,
    receipts,
    spend_until_blocked,
)
from tests.servers.openai_server import LocalOpenAIServer

NANO_PER_USD = Decimal(10**9)
# Leaving run_stream early: the model's stream is abandoned, or was already read to its end (the
# run reads it in a task of its own, ahead of the caller): settled either way, nothing held.
LEFT_EARLY = ("abandoned", "ok")

MODELS: dict[str, tuple[str, Callable[[str], Model], str]] = {
    "chat": ("server", lambda url: OpenAIChatModel("gpt-4o-mini", provider=OpenAIProvider(url, "sk-test")),
             "0.0001"),
    "responses": ("server", lambda url: OpenAIResponsesModel("gpt-4o-mini", provider=OpenAIProvider(url, "sk-test")),
                  "0.0001"),
    "anthropic": ("anthropic_server",
                  lambda url: AnthropicModel("claude-haiku-4-5", provider=AnthropicProvider(api_key="k", base_url=url)),
                  "0.001"),
}


@dataclass
class Backend:
    agent: Agent[None, str]
    server: Any
    limit_usd: str  # a few runs of the model, then the daily cap blocks


@pytest.fixture(params=list(MODELS))
def backend(request: pytest.FixtureRequest) -> Backend:
    fixture, model, limit = MODELS[request.param]
    srv = request.getfixturevalue(fixture)
    srv.reset()  # the shared fixture resets the OpenAI server only for tests that name it
    # The caller's own output limit (pydantic-ai asks Anthropic for 64000 tokens unless told).
    agent = Agent(model(srv.base_url), model_settings={"max_tokens": MAX_OUTPUT_TOKENS})
    return Backend(agent, srv, limit)


def tokens(usage: RunUsage) -> tuple[int, int]:
    assert usage.requests == 1
    return usage.input_tokens, usage.output_tokens


def assert_costs_match(handle: Any, usages: list[RunUsage]) -> None:
    """What the guard settled is what pydantic-ai priced the run at (its own genai-prices lookup)."""
    settled = [s["actual_nano"] for s in receipts(handle, "settlement")]
    assert [Decimal(s) for s in settled] == [u.cost * NANO_PER_USD for u in usages]


def test_run_sync_and_run_settle_exactly(backend: Backend, run: Run[Any], guarded: GuardFactory,
                                         otel: Telemetry) -> None:
    handle = guarded(policy(backend.limit_usd))
    results = [backend.agent.run_sync(PROMPT), run(backend.agent.run(PROMPT))]
    assert all(r.output for r in results)
    assert_settled(handle, backend.server, [tokens(r.usage) for r in results])
    assert_costs_match(handle, [r.usage for r in results])
    assert_one_span_per_call(otel, handle)


def test_run_stream_settles_exactly(backend: Backend, run: Run[Any], guarded: GuardFactory, otel: Telemetry) -> None:
    handle = guarded(policy(backend.limit_usd))

    async def streamed() -> tuple[str, RunUsage]:
        async with backend.agent.run_stream(PROMPT) as result:
            return await result.get_output(), result.usage

    output, usage = run(streamed())
    assert output
    assert [r["stream"] for r in receipts(handle, "decision")] == [True]
    assert_settled(handle, backend.server, [tokens(usage)])
    assert_costs_match(handle, [usage])
    assert_one_span_per_call(otel, handle)


@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run_stream"])
def test_a_tool_call_run_is_two_guarded_requests(backend: Backend, streamed: bool, run: Run[Any],
                                                 guarded: GuardFactory, otel: Telemetry) -> None:
    """The model calls the agent's tool, pydantic-ai runs it and sends its result back: both model
    requests are decided, sent and settled exactly."""
    handle = guarded(policy("1"))

    backend.agent.tool_plain(read_diff)
    backend.server.call_tool_next("read_diff", '{"path": "app.py"}')

    async def streamed_run() -> tuple[str, list[ModelMessage]]:
        async with backend.agent.run_stream(PROMPT) as result:
            return await result.get_output(), result.all_messages()

    async def plain_run() -> tuple[str, list[ModelMessage]]:
        result = await backend.agent.run(PROMPT)
        return result.output, result.all_messages()

    output, messages = run(streamed_run() if streamed else plain_run())
    assert output
    returns = [p for m in messages for p in m.parts if isinstance(p, ToolReturnPart)]
    assert [r.content for r in returns] == [f"app.py: {DIFF}"]
    responses = [m for m in messages if isinstance(m, ModelResponse)]
    assert [r["stream"] for r in receipts(handle, "decision")] == [streamed] * 2
    assert_settled(handle, backend.server, [(r.usage.input_tokens, r.usage.output_tokens) for r in responses])
    assert_one_span_per_call(otel, handle)


def test_a_stream_left_early_settles(backend: Backend, run: Run[Any], guarded: GuardFactory,
                                     otel: Telemetry) -> None:
    """Leaving ``run_stream`` after the first text delta leaves no hold."""
    handle = guarded(policy(backend.limit_usd))

    async def briefly() -> str:
        async with backend.agent.run_stream(PROMPT) as result:
            async for delta in result.stream_text(delta=True):
                return delta
        raise AssertionError("no text streamed")

    assert run(briefly())
    assert len(backend.server.requests) == 1
    assert_left_early(handle, 1, LEFT_EARLY)
    assert_one_span_per_call(otel, handle)


def test_beside_pydantic_ais_own_instrumentation(server: LocalOpenAIServer, guarded: GuardFactory,
                                                 otel: Telemetry) -> None:
    """With pydantic-ai's OTel instrumentation on, the guard's span is the child of pydantic-ai's
    model-request span, and pydantic-ai's spans keep their own parents (the guard's is never current)."""
    handle = guarded(policy("1"))
    settings = InstrumentationSettings(tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider)
    agent = Agent(MODELS["chat"][1](server.base_url), model_settings={"max_tokens": MAX_OUTPUT_TOKENS},
                  capabilities=[Instrumentation(settings)])
    assert agent.run_sync(PROMPT).output
    (guard,) = guard_spans(otel)
    request, run = (s for s in otel.finished() if s is not guard)
    assert guard.parent.span_id == request.context.span_id
    assert (request.parent.span_id, run.parent) == (run.context.span_id, None)
    assert guard.context.trace_id == request.context.trace_id == run.context.trace_id
    assert_one_span_per_call(otel, handle)


def test_a_spent_cap_blocks_before_the_server(backend: Backend, run: Run[Any], guarded: GuardFactory,
                                              otel: Telemetry) -> None:
    handle = guarded(policy(backend.limit_usd))
    spend_until_blocked(lambda: backend.agent.run_sync(PROMPT), backend.server, handle)
    assert_blocked(lambda: run(backend.agent.run(PROMPT)), backend.server, handle, as_is=True)
    assert_one_span_per_call(otel, handle)


def test_runs_in_threads_keep_the_scope(backend: Backend, run: Run[Any], guarded: GuardFactory,
                                        otel: Telemetry) -> None:
    """A run handed to ``asyncio.to_thread`` or an executor is the caller's: the team is on its
    receipts, and the capped team's runs are blocked there too."""
    handle = guarded(policy("1"))

    async def in_thread() -> Any:
        return await asyncio.to_thread(backend.agent.run_sync, PROMPT)

    with scope(team="research"), ThreadPoolExecutor(1) as pool:
        results = [run(in_thread()), pool.submit(backend.agent.run_sync, PROMPT).result()]
    assert [r["scope"]["team"] for r in receipts(handle, "settlement")] == ["research"] * 2
    assert_settled(handle, backend.server, [tokens(r.usage) for r in results])
    with scope(team=CAPPED_TEAM), ThreadPoolExecutor(1) as pool:
        blocked = [ours(pool.submit(backend.agent.run_sync, PROMPT).exception() or AssertionError("not blocked"))]
        blocked.append(assert_blocked(lambda: run(in_thread()), backend.server, handle, TEAM_REASON))
    assert [(b.reason, b.scope["team"]) for b in blocked] == [(TEAM_REASON, CAPPED_TEAM)] * 2
    assert len(backend.server.requests) == 2
    assert_one_span_per_call(otel, handle)


def test_a_provider_error_releases_the_hold(backend: Backend, guarded: GuardFactory, otel: Telemetry) -> None:
    handle = guarded(policy(backend.limit_usd))
    fail_next_call(backend.server)
    with pytest.raises(ModelHTTPError) as info:
        backend.agent.run_sync(PROMPT)
    assert_provider_error_released(handle, otel, info.value)
