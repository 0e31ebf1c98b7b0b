"""LangChain's ChatOpenAI and ChatAnthropic over the real SDKs to the local servers, guarded:
invoke, batch and stream (sync and async) settle exactly, a spent cap blocks before the server,
one guard span per call, and the scope follows LangChain's thread pool and ``asyncio.to_thread``."""

from __future__ import annotations

import asyncio
import operator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from functools import reduce
from typing import Any

import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_openai import ChatOpenAI

from agentguard_otel import AgentGuardBlocked, scope
from tests.conftest import GuardFactory, Telemetry
from tests.frameworks.conftest import Run
from tests.frameworks.support import (
    CAPPED_TEAM,
    PROMPT,
    TEAM_REASON,
    assert_blocked,
    assert_left_early,
    assert_one_span_per_call,
    assert_provider_error_released,
    assert_settled,
    fail_next_call,
    ours,
    policy,
    read_diff,
    receipts,
    spend_until_blocked,
)


@dataclass
class Backend:
    llm: BaseChatModel
    server: Any
    limit_usd: str  # a few calls of the model, then the daily cap blocks


def chat_openai(server: Any, **options: Any) -> ChatOpenAI:
    return ChatOpenAI(model="gpt-4o-mini", base_url=server.base_url, api_key="sk-test", max_retries=0, **options)


@pytest.fixture(params=["openai", "openai-responses", "anthropic"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param.startswith("openai"):
        srv = request.getfixturevalue("server")
        srv.reset()  # the shared fixture resets it only for tests that name it
        llm = chat_openai(srv, stream_usage=True, use_responses_api=request.param == "openai-responses")
        return Backend(llm, srv, "0.0001")
    srv = request.getfixturevalue("anthropic_server")
    return Backend(ChatAnthropic(model="claude-haiku-4-5", base_url=srv.base_url, api_key="sk-ant-test",
                                 max_retries=0, max_tokens=32), srv, "0.0005")


def usage(message: AIMessage) -> tuple[int, int]:
    meta = message.usage_metadata
    assert meta is not None
    return meta["input_tokens"], meta["output_tokens"]


def joined(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    return reduce(operator.add, chunks)


def test_invoke_and_ainvoke_settle_exactly(backend: Backend, run: Run[Any], guarded: GuardFactory,
                                            otel: Telemetry) -> None:
    handle = guarded(policy(backend.limit_usd))
    replies = [backend.llm.invoke(PROMPT), run(backend.llm.ainvoke(PROMPT))]
    assert all(r.content for r in replies)
    assert_settled(handle, backend.server, [usage(r) for r in replies])
    assert_one_span_per_call(otel, handle)


def test_stream_and_astream_settle_exactly(backend: Backend, run: Run[Any], guarded: GuardFactory,
                                            otel: Telemetry) -> None:
    handle = guarded(policy(backend.limit_usd))

    async def astream() -> list[AIMessageChunk]:
        return [chunk async for chunk in backend.llm.astream(PROMPT)]

    streamed = [joined(list(backend.llm.stream(PROMPT))), joined(run(astream()))]
    assert all(s.content for s in streamed)
    assert [r["stream"] for r in receipts(handle, "decision")] == [True, True]
    assert_settled(handle, backend.server, [usage(s) for s in streamed])
    assert_one_span_per_call(otel, handle)


def test_a_tool_call_answer_settles_exactly(backend: Backend, guarded: GuardFactory, otel: Telemetry) -> None:
    """With tools bound, the model answers with a tool call (plain and streamed): settled exactly."""
    handle = guarded(policy("1"))  # tools put the provider's tool-use prompt in the bound
    llm = backend.llm.bind_tools([read_diff])
    backend.server.call_tool_next("read_diff", '{"path": "app.py"}')
    backend.server.call_tool_next("read_diff", '{"path": "app.py"}')
    replies = [llm.invoke(PROMPT), joined(list(llm.stream(PROMPT)))]
    calls = [[(c["name"], c["args"]) for c in r.tool_calls] for r in replies]
    assert calls == [[("read_diff", {"path": "app.py"})]] * 2
    assert_settled(handle, backend.server, [usage(r) for r in replies])
    assert_one_span_per_call(otel, handle)


def test_a_stream_without_stream_usage_settles_exactly(server: Any, guarded: GuardFactory, otel: Telemetry) -> None:
    """ChatOpenAI does not ask a Chat Completions stream for usage by default: the guard asks for it
    (enforce mode), settles on it and hides that chunk, so LangChain sees the stream it asked for."""
    handle = guarded(policy("0.0001"))
    streamed = joined(list(chat_openai(server).stream(PROMPT)))
    assert streamed.content and streamed.usage_metadata is None
    assert (server.requests[0].body or {})["stream_options"] == {"include_usage": True}
    (settlement,) = receipts(handle, "settlement")
    assert (settlement["outcome"], settlement["cost_source"]) == ("ok", "local")
    assert (settlement["usage"]["input_tokens"], settlement["usage"]["output_tokens"]) == usage(
        chat_openai(server).invoke(PROMPT))  # the same prompt, unstreamed: the usage LangChain sees
    assert_one_span_per_call(otel, handle)


async def finalized() -> None:
    """Await the closing of async generators the loop has finalized. LangChain leaves its inner
    generator, and so the SDK's stream, to the loop's async-generator finalizer, which schedules
    ``aclose()`` as a task when the generator is collected: the stream closes once the loop runs
    again, as an application's does."""
    await asyncio.sleep(0)  # the finalizer's callback creates the task
    await asyncio.gather(*(t for t in asyncio.all_tasks() if type(t.get_coro()).__name__ == "async_generator_athrow"))


def test_a_stream_left_early_settles(backend: Backend, run: Run[Any], guarded: GuardFactory,
                                     otel: Telemetry) -> None:
    """A consumer that stops reading after a few chunks (and closes the generator) leaves no hold;
    each such stream settles at its reservation (the cap leaves room for both)."""
    handle = guarded(policy(str(Decimal(backend.limit_usd) * 10)))
    stream = backend.llm.stream(PROMPT)
    first = [next(stream) for _ in range(3)]
    stream.close()

    async def astream_briefly() -> None:
        chunks = backend.llm.astream(PROMPT)
        _ = [await anext(chunks) for _ in range(3)]
        await chunks.aclose()

    run(astream_briefly())
    run(finalized())
    assert len(first) == 3 and len(backend.server.requests) == 2
    assert_left_early(handle, 2)
    assert_one_span_per_call(otel, handle)


def test_a_spent_cap_blocks_before_the_server(backend: Backend, guarded: GuardFactory, otel: Telemetry) -> None:
    handle = guarded(policy(backend.limit_usd))
    spend_until_blocked(lambda: backend.llm.invoke(PROMPT), backend.server, handle)
    assert_blocked(lambda: list(backend.llm.stream(PROMPT)), backend.server, handle, as_is=True)
    assert_one_span_per_call(otel, handle)


def test_batch_runs_in_the_callers_scope(backend: Backend, run: Run[Any], guarded: GuardFactory,
                                          otel: Telemetry) -> None:
    """``batch`` and ``abatch`` fan out over LangChain's thread pool / tasks: each call is the team's."""
    handle = guarded(policy("1"))  # room for every concurrent reservation
    with scope(team="research", user="ada"):
        replies = backend.llm.batch([PROMPT] * 3) + run(backend.llm.abatch([PROMPT] * 2))
    scopes = [(r["scope"]["team"], r["scope"]["user"]) for r in receipts(handle, "settlement")]
    assert scopes == [("research", "ada")] * 5
    assert_settled(handle, backend.server, [usage(r) for r in replies])
    assert_one_span_per_call(otel, handle)


def test_a_team_cap_applies_in_threads(backend: Backend, run: Run[Any], guarded: GuardFactory,
                                       otel: Telemetry) -> None:
    """Calls of the capped team are blocked wherever LangChain or the caller runs them."""
    handle = guarded(policy(backend.limit_usd))

    async def to_thread() -> Any:
        return await asyncio.to_thread(backend.llm.invoke, PROMPT)

    with scope(team=CAPPED_TEAM):
        outcomes: list[Any] = backend.llm.batch([PROMPT] * 3, return_exceptions=True)
        outcomes += run(backend.llm.abatch([PROMPT] * 2, return_exceptions=True))
        with ThreadPoolExecutor(2) as pool:
            outcomes.append(pool.submit(backend.llm.invoke, PROMPT).exception())
        with pytest.raises(AgentGuardBlocked) as info:
            run(to_thread())
        outcomes.append(info.value)
    assert [(ours(o).reason, ours(o).scope["team"]) for o in outcomes] == [(TEAM_REASON, CAPPED_TEAM)] * 7
    assert backend.server.requests == []
    assert [r["action"] for r in receipts(handle, "decision")] == ["block"] * 7
    assert_one_span_per_call(otel, handle)


def test_a_provider_error_releases_the_hold(backend: Backend, guarded: GuardFactory, otel: Telemetry) -> None:
    handle = guarded(policy(backend.limit_usd))
    fail_next_call(backend.server)
    with pytest.raises(Exception) as info:  # whatever LangChain makes of the provider's 400
        backend.llm.invoke(PROMPT)
    assert_provider_error_released(handle, otel, info.value)
