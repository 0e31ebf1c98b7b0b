"""The OpenAI Agents SDK on the Responses API and on Chat Completions, through the real ``openai``
SDK to the local server, guarded (its own tracing export switched off, so it sends nothing
anywhere): ``Runner.run_sync``, ``Runner.run`` and ``Runner.run_streamed`` settle every model call
exactly, a run where the model calls a function tool is two guarded calls, a spent cap blocks the
next run before the server, one guard span per model call, and the scope follows runs handed to
threads."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    RunConfig,
    Runner,
    add_trace_processor,
    function_tool,
)
from agents.result import RunResultBase
from agents.tracing import TracingProcessor

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
    ours,
    policy,
    read_diff,
    receipts,
    spend_until_blocked,
)
from tests.servers.openai_server import LocalOpenAIServer

LIMIT_USD = "0.0001"  # a few runs of gpt-4o-mini, then the daily cap blocks
NO_TRACING = RunConfig(tracing_disabled=True)  # the SDK's switch: no trace export to OpenAI's servers
# cancel() stops the run's task: its stream is abandoned, or was already read to its end (the SDK
# reads the model's stream in a task of its own, ahead of the caller): settled either way.
LEFT_EARLY = ("abandoned", "ok")


READ_DIFF = function_tool(read_diff)


PATHS = {"responses": "/v1/responses", "chat": "/v1/chat/completions"}


class SdkTracing(TracingProcessor):
    """Records what the SDK's tracing hands its processors (its exporter to OpenAI among them)."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def on_trace_start(self, trace: Any) -> None:
        self.seen.append("trace")

    def on_trace_end(self, trace: Any) -> None:
        self.seen.append("trace end")

    def on_span_start(self, span: Any) -> None:
        self.seen.append("span")

    def on_span_end(self, span: Any) -> None:
        self.seen.append("span end")

    def shutdown(self) -> None:
        """Nothing held."""

    def force_flush(self) -> None:
        """Nothing queued."""


@pytest.fixture(scope="module")
def sdk_tracing() -> SdkTracing:
    """Registered beside the SDK's own processors for the module (the SDK has no way to remove one)."""
    recorder = SdkTracing()
    add_trace_processor(recorder)
    return recorder


def reviewer(server: LocalOpenAIServer, api: str = "responses") -> Agent[Any]:
    """A reviewer agent on a client of its own: an async client belongs to the event loop it first
    ran in, and ``Runner.run_sync`` in another thread runs a loop of its own. On Chat Completions
    it asks for stream usage (the SDK does not by default), so the run reports every call's."""
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
    model = (OpenAIResponsesModel(model="gpt-4o-mini", openai_client=client) if api == "responses" else
             OpenAIChatCompletionsModel(model="gpt-4o-mini", openai_client=client))
    return Agent(name="reviewer", instructions="Review the diff.", tools=[READ_DIFF], model=model,
                 model_settings=ModelSettings(max_tokens=MAX_OUTPUT_TOKENS, include_usage=api == "chat" or None))


@pytest.fixture(params=list(PATHS))
def api(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def agent(server: LocalOpenAIServer, api: str) -> Agent[Any]:
    return reviewer(server, api)


def tools_offered(body: dict[str, Any]) -> list[str]:
    return [t.get("name") or t["function"]["name"] for t in body["tools"]]


def tool_results(body: dict[str, Any]) -> list[str]:
    """What the request sends back of the tool's run (a Responses input item, a chat ``tool`` message)."""
    return [i["output"] for i in body.get("input", []) if i.get("type") == "function_call_output"] + [
        m["content"] for m in body.get("messages", []) if m.get("role") == "tool"]


def per_call(result: RunResultBase) -> list[tuple[int, int]]:
    """(input, output) tokens of each model call of the run, as the SDK accounted them."""
    return [(u.input_tokens, u.output_tokens) for u in result.context_wrapper.usage.request_usage_entries]


def test_run_sync_and_run_settle_exactly(agent: Agent[Any], api: str, server: LocalOpenAIServer, run: Run[Any],
                                         guarded: GuardFactory, otel: Telemetry, sdk_tracing: SdkTracing) -> None:
    handle = guarded(policy(LIMIT_USD))
    results = [Runner.run_sync(agent, PROMPT, run_config=NO_TRACING),
               run(Runner.run(agent, PROMPT, run_config=NO_TRACING))]
    assert all(r.final_output for r in results)
    assert [r.path for r in server.requests] == [PATHS[api]] * 2
    assert sdk_tracing.seen == []  # the switch: nothing traced, so nothing to export
    assert_settled(handle, server, [c for r in results for c in per_call(r)])
    assert_one_span_per_call(otel, handle)


def test_run_streamed_settles_exactly(agent: Agent[Any], server: LocalOpenAIServer, run: Run[Any],
                                      guarded: GuardFactory, otel: Telemetry) -> None:
    handle = guarded(policy(LIMIT_USD))

    async def streamed() -> RunResultBase:
        result = Runner.run_streamed(agent, PROMPT, run_config=NO_TRACING)
        deltas = [e async for e in result.stream_events() if e.type == "raw_response_event"
                  and e.data.type == "response.output_text.delta"]
        assert deltas
        return result

    result = run(streamed())
    assert result.final_output
    assert [r["stream"] for r in receipts(handle, "decision")] == [True]
    assert_settled(handle, server, per_call(result))
    assert_one_span_per_call(otel, handle)


@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run_streamed"])
def test_a_tool_call_run_is_two_guarded_calls(streamed: bool, agent: Agent[Any], server: LocalOpenAIServer,
                                              run: Run[Any], guarded: GuardFactory, otel: Telemetry) -> None:
    """The model calls the function tool, the SDK runs it and sends its output back: both model
    calls are decided, sent and settled, in the order the server saw them."""
    handle = guarded(policy("1"))
    server.call_tool_next("read_diff", '{"path": "app.py"}')

    async def drained() -> RunResultBase:
        result = Runner.run_streamed(agent, PROMPT, run_config=NO_TRACING)
        _ = [e async for e in result.stream_events()]
        return result

    result = run(drained() if streamed else Runner.run(agent, PROMPT, run_config=NO_TRACING))
    assert result.final_output
    first, second = (r.body or {} for r in server.requests)
    assert (tools_offered(first), tool_results(first), tool_results(second)) == (["read_diff"], [], [f"app.py: {DIFF}"])
    assert [r["stream"] for r in receipts(handle, "decision")] == [streamed] * 2
    settled = assert_settled(handle, server, per_call(result))
    assert settled[1]["usage"]["input_tokens"] > settled[0]["usage"]["input_tokens"]  # the tool turn is input
    assert_one_span_per_call(otel, handle)


def test_a_cancelled_streamed_run_settles(agent: Agent[Any], server: LocalOpenAIServer, run: Run[Any],
                                          guarded: GuardFactory, otel: Telemetry) -> None:
    """``cancel()`` at the first text delta stops the run and its stream: the call leaves no hold."""
    handle = guarded(policy(LIMIT_USD))

    async def cancelled() -> None:
        result = Runner.run_streamed(agent, PROMPT, run_config=NO_TRACING)
        async for event in result.stream_events():
            if event.type == "raw_response_event" and event.data.type == "response.output_text.delta":
                result.cancel()

    run(cancelled())
    assert len(server.requests) == 1
    assert_left_early(handle, 1, LEFT_EARLY)
    assert_one_span_per_call(otel, handle)


def test_a_spent_cap_blocks_before_the_server(agent: Agent[Any], server: LocalOpenAIServer, run: Run[Any],
                                              guarded: GuardFactory, otel: Telemetry) -> None:
    handle = guarded(policy(LIMIT_USD))
    spend_until_blocked(lambda: Runner.run_sync(agent, PROMPT, run_config=NO_TRACING), server, handle)

    async def streamed() -> None:
        result = Runner.run_streamed(agent, PROMPT, run_config=NO_TRACING)
        _ = [e async for e in result.stream_events()]

    assert_blocked(lambda: run(streamed()), server, handle, as_is=True)
    assert_one_span_per_call(otel, handle)


def test_runs_in_threads_keep_the_scope(server: LocalOpenAIServer, run: Run[Any],
                                        guarded: GuardFactory, otel: Telemetry) -> None:
    """A run handed to ``asyncio.to_thread`` or an executor is the caller's: the team is on its
    receipts, and the capped team's runs are blocked there too."""
    handle = guarded(policy("1"))

    def run_sync() -> RunResultBase:
        return Runner.run_sync(reviewer(server), PROMPT, run_config=NO_TRACING)

    async def in_thread() -> Any:
        return await asyncio.to_thread(run_sync)

    with scope(team="research"), ThreadPoolExecutor(1) as pool:
        results = [run(in_thread()), pool.submit(run_sync).result()]
    assert [r["scope"]["team"] for r in receipts(handle, "settlement")] == ["research"] * 2
    assert_settled(handle, server, [c for r in results for c in per_call(r)])
    with scope(team=CAPPED_TEAM), ThreadPoolExecutor(1) as pool:
        blocked = [ours(pool.submit(run_sync).exception() or AssertionError("not blocked"))]
        blocked.append(assert_blocked(lambda: run(in_thread()), server, handle, TEAM_REASON))
    assert [(b.reason, b.scope["team"]) for b in blocked] == [(TEAM_REASON, CAPPED_TEAM)] * 2
    assert len(server.requests) == 2
    assert_one_span_per_call(otel, handle)


def test_a_provider_error_releases_the_hold(agent: Agent[Any], server: LocalOpenAIServer, run: Run[Any],
                                            guarded: GuardFactory, otel: Telemetry) -> None:
    handle = guarded(policy(LIMIT_USD))
    fail_next_call(server)
    with pytest.raises(openai.BadRequestError) as info:
        run(Runner.run(agent, PROMPT, run_config=NO_TRACING))
    assert_provider_error_released(handle, otel, info.value)
