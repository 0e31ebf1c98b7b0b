"""The real ``openai`` SDK against the local OpenAI-wire server, guarded end to end: every calling
style reaches the choke point, blocked calls never reach the server, and settlement is exact."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from agentguard_otel import AgentGuardBlocked, scope
from agentguard_otel.pricing import TokenUsage
from tests.conftest import GuardFactory, Telemetry

MODEL = "gpt-4o-mini"

ALLOW_ALL = {"version": 1, "id": "test", "mode": "enforce",
             "rules": [{"id": "all", "caps": [{"limit_usd": 100, "window": "day", "action": "block"}]}]}
# A per-call cap below any call's bound: every guarded call is blocked before it is sent.
BLOCK_ALL = {"version": 1, "id": "test", "mode": "enforce",
             "rules": [{"id": "tiny", "caps": [{"limit_usd": "0.000000001", "window": "call", "action": "block",
                                                "reason": "test ceiling"}]}]}


class Answer(BaseModel):
    answer: str


def client(server: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="sk-test-secret", max_retries=0)


def aclient(server: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-test-secret", max_retries=0)


MESSAGES = [{"role": "user", "content": "Review this diff, please."}]


def _chat(c: openai.OpenAI) -> Any:
    return c.chat.completions.create(model=MODEL, messages=MESSAGES)


def _chat_stream(c: openai.OpenAI) -> Any:
    return "".join(ch.choices[0].delta.content or "" for ch in
                   c.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True) if ch.choices)


def _chat_stream_helper(c: openai.OpenAI) -> Any:
    with c.chat.completions.stream(model=MODEL, messages=MESSAGES) as stream:
        return stream.get_final_completion()


def _chat_parse(c: openai.OpenAI) -> Any:
    return c.chat.completions.parse(model=MODEL, messages=MESSAGES, response_format=Answer)


def _responses(c: openai.OpenAI) -> Any:
    return c.responses.create(model=MODEL, input="Review this diff, please.")


def _responses_stream(c: openai.OpenAI) -> Any:
    with c.responses.stream(model=MODEL, input="Review this diff, please.") as stream:
        return stream.get_final_response()


def _embeddings(c: openai.OpenAI) -> Any:
    return c.embeddings.create(model="text-embedding-3-small", input=["a diff", "another diff"])


def _legacy_completions(c: openai.OpenAI) -> Any:
    return c.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hi")


def _raw(c: openai.OpenAI) -> Any:
    return c.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES).parse()


def _raw_stream(c: openai.OpenAI) -> Any:
    raw = c.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, stream=True)
    return list(raw.parse())


def _streaming_response(c: openai.OpenAI) -> Any:
    with c.chat.completions.with_streaming_response.create(model=MODEL, messages=MESSAGES) as resp:
        return resp.parse()


def _streaming_response_lines(c: openai.OpenAI) -> Any:
    with c.chat.completions.with_streaming_response.create(model=MODEL, messages=MESSAGES, stream=True) as resp:
        return list(resp.iter_lines())


SYNC_STYLES: dict[str, Callable[[openai.OpenAI], Any]] = {
    "chat.create": _chat,
    "chat.create(stream=True)": _chat_stream,
    "chat.stream()": _chat_stream_helper,
    "chat.parse()": _chat_parse,
    "responses.create": _responses,
    "responses.stream()": _responses_stream,
    "embeddings.create": _embeddings,
    "completions.create": _legacy_completions,
    "with_raw_response": _raw,
    "with_raw_response(stream=True)": _raw_stream,
    "with_streaming_response": _streaming_response,
    "with_streaming_response.iter_lines": _streaming_response_lines,
}


async def _achat(c: openai.AsyncOpenAI) -> Any:
    return await c.chat.completions.create(model=MODEL, messages=MESSAGES)


async def _achat_stream(c: openai.AsyncOpenAI) -> Any:
    stream = await c.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    return [chunk async for chunk in stream]


async def _achat_stream_helper(c: openai.AsyncOpenAI) -> Any:
    async with c.chat.completions.stream(model=MODEL, messages=MESSAGES) as stream:
        return await stream.get_final_completion()


async def _aresponses_stream(c: openai.AsyncOpenAI) -> Any:
    async with c.responses.stream(model=MODEL, input="Review this diff.") as stream:
        return await stream.get_final_response()


async def _araw(c: openai.AsyncOpenAI) -> Any:
    raw = await c.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
    return raw.parse()


ASYNC_STYLES = {
    "async chat.create": _achat,
    "async chat.create(stream=True)": _achat_stream,
    "async chat.stream()": _achat_stream_helper,
    "async responses.stream()": _aresponses_stream,
    "async with_raw_response": _araw,
}


def _settled(handle: Any) -> list[dict[str, Any]]:
    return [r for r in handle.receipts() if r["kind"] == "settlement"]


@pytest.mark.parametrize("style", list(SYNC_STYLES))
def test_every_sync_style_is_blocked_before_the_server(style: str, server: Any, guarded: GuardFactory,
                                                       otel: Telemetry) -> None:
    guarded(BLOCK_ALL)
    with pytest.raises(AgentGuardBlocked) as info:
        SYNC_STYLES[style](client(server))
    assert server.requests == []
    assert info.value.reason == "test ceiling"
    assert info.value.cap is not None and info.value.cap["window"] == "call"
    span = otel.finished()[-1]
    assert span.attributes["error.type"] == "agentguard.blocked"
    assert span.attributes["agentguard.decision.action"] == "block"


@pytest.mark.parametrize("style", list(ASYNC_STYLES))
def test_every_async_style_is_blocked_before_the_server(style: str, server: Any, guarded: GuardFactory) -> None:
    guarded(BLOCK_ALL)
    with pytest.raises(AgentGuardBlocked):
        asyncio.run(ASYNC_STYLES[style](aclient(server)))
    assert server.requests == []


@pytest.mark.parametrize("style", list(SYNC_STYLES))
def test_every_sync_style_settles_exactly(style: str, server: Any, guarded: GuardFactory) -> None:
    handle = guarded(ALLOW_ALL)
    SYNC_STYLES[style](client(server))
    assert len(server.requests) == 1
    (settlement,) = _settled(handle)
    assert settlement["outcome"] == "ok"
    assert settlement["cost_source"] == "local"
    usage = TokenUsage(**{k: v for k, v in settlement["usage"].items()})
    assert usage.input_tokens > 0
    decision = next(r for r in handle.receipts() if r["kind"] == "decision")
    price = handle.guard.prices.lookup("openai", decision["model_effective"])
    assert price is not None
    assert settlement["actual_nano"] == handle.guard.prices.actual_cost_nano(price, usage)
    assert 0 < settlement["actual_nano"] <= decision["estimated_nano"]
    (state,) = handle.guard.ledger.states()
    assert state.held_nano == 0
    assert state.spent_nano == settlement["actual_nano"]


@pytest.mark.parametrize("style", list(ASYNC_STYLES))
def test_every_async_style_settles_exactly(style: str, server: Any, guarded: GuardFactory) -> None:
    handle = guarded(ALLOW_ALL)
    asyncio.run(ASYNC_STYLES[style](aclient(server)))
    (settlement,) = _settled(handle)
    assert settlement["outcome"] == "ok"
    (state,) = handle.guard.ledger.states()
    assert (state.held_nano, state.spent_nano) == (0, settlement["actual_nano"])


def test_client_built_before_instrument_is_guarded(server: Any, guarded: GuardFactory) -> None:
    early = client(server)
    guarded(BLOCK_ALL)
    with pytest.raises(AgentGuardBlocked):
        _chat(early)
    assert server.requests == []


def test_uninstrument_restores_the_sdk(server: Any, guarded: GuardFactory) -> None:
    from openai._base_client import SyncAPIClient

    handle = guarded(BLOCK_ALL)
    handle.instrumentor.uninstrument()
    assert not hasattr(SyncAPIClient.request, "__wrapped__")
    _chat(client(server))
    assert len(server.requests) == 1
    handle.instrumentor.instrument(policy=BLOCK_ALL, signing_key=str(handle.key_path),
                                   ledger="memory://", receipts=str(handle.home / "receipts"))


def test_stream_usage_is_requested_and_hidden(server: Any, guarded: GuardFactory) -> None:
    handle = guarded(ALLOW_ALL)
    chunks = list(client(server).chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
    assert server.requests[0].body["stream_options"] == {"include_usage": True}
    assert all(chunk.choices for chunk in chunks), "the usage-only chunk we asked for must not reach the caller"
    assert all(chunk.usage is None for chunk in chunks)
    (settlement,) = _settled(handle)
    assert settlement["usage"]["output_tokens"] == server.reply_words


def test_stream_usage_the_caller_asked_for_stays_visible(server: Any, guarded: GuardFactory) -> None:
    guarded(ALLOW_ALL)
    chunks = list(client(server).chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage is not None


def test_clamp_injects_and_lowers_max_tokens(server: Any, guarded: GuardFactory) -> None:
    policy = {**ALLOW_ALL, "rules": [{**ALLOW_ALL["rules"][0], "max_output_tokens": 5}]}  # type: ignore[dict-item]
    guarded(policy)
    c = client(server)
    c.chat.completions.create(model=MODEL, messages=MESSAGES)
    c.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=500)
    c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3)
    c.responses.create(model=MODEL, input="hi")
    bodies = [r.body for r in server.requests]
    assert bodies[0]["max_tokens"] == 5  # injected: compatible servers know max_tokens
    assert bodies[1]["max_completion_tokens"] == 5 and "max_tokens" not in bodies[1]
    assert bodies[2]["max_tokens"] == 3  # already below the clamp: untouched
    assert bodies[3]["max_output_tokens"] == 5


def test_downgrade_rewrites_the_model(server: Any, guarded: GuardFactory, otel: Telemetry) -> None:
    policy = {"version": 1, "id": "test", "rules": [{"id": "eng", "caps": [
        {"limit_usd": "0.000001", "window": "day", "action": "downgrade", "downgrade_to": "gpt-4o-mini"}]}]}
    handle = guarded(policy)
    response = client(server).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert server.requests[0].body["model"] == "gpt-4o-mini"
    assert response.model == "gpt-4o-mini"
    decision, _settlement = handle.receipts()
    assert (decision["action"], decision["model_requested"], decision["model_effective"]) == \
        ("downgrade", "gpt-4o", "gpt-4o-mini")
    span = otel.finished()[-1]
    assert span.name == "chat gpt-4o-mini"
    assert span.attributes["agentguard.model.requested"] == "gpt-4o"
    assert span.attributes["agentguard.model.effective"] == "gpt-4o-mini"


def test_daily_cap_blocks_once_spent(server: Any, guarded: GuardFactory) -> None:
    policy = {"version": 1, "id": "test", "rules": [{"id": "eng", "caps": [
        {"limit_usd": "0.0006", "window": "day", "action": "block", "reason": "daily ceiling"}]}]}
    handle = guarded(policy)
    c = client(server)
    admitted = 0
    with pytest.raises(AgentGuardBlocked) as info:
        for _ in range(50):
            c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=100)
            admitted += 1
    assert info.value.reason == "daily ceiling"
    assert len(server.requests) == admitted > 0
    (state,) = handle.guard.ledger.states()
    assert state.held_nano == 0
    assert state.spent_nano <= 600_000
    assert state.spent_nano == sum(r["actual_nano"] for r in _settled(handle))


def test_provider_error_releases_the_hold(server: Any, guarded: GuardFactory, otel: Telemetry) -> None:
    handle = guarded(ALLOW_ALL)
    server.fail_next(500)
    with pytest.raises(openai.InternalServerError):
        _chat(client(server))
    (settlement,) = _settled(handle)
    assert (settlement["outcome"], settlement["actual_nano"], settlement["error_type"]) == \
        ("error", 0, "InternalServerError")
    assert all(s.held_nano == 0 and s.spent_nano == 0 for s in handle.guard.ledger.states())
    assert otel.finished()[-1].attributes["error.type"] == "InternalServerError"


def test_abandoned_stream_still_settles(server: Any, guarded: GuardFactory) -> None:
    handle = guarded(ALLOW_ALL)
    stream = client(server).chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    for i, _chunk in enumerate(stream):
        if i == 2:
            break
    del stream, _chunk
    gc.collect()
    (settlement,) = _settled(handle)
    assert settlement["outcome"] == "abandoned"
    assert settlement["cost_source"] == "estimated"
    assert settlement["actual_nano"] > 0
    (state,) = handle.guard.ledger.states()
    assert (state.held_nano, state.spent_nano) == (0, settlement["actual_nano"])


def test_closed_stream_settles_immediately(server: Any, guarded: GuardFactory) -> None:
    handle = guarded(ALLOW_ALL)
    stream = client(server).chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    next(iter(stream))
    stream.close()
    (settlement,) = _settled(handle)
    assert settlement["outcome"] == "abandoned"


def test_stream_cut_by_the_network_settles(server: Any, guarded: GuardFactory) -> None:
    handle = guarded(ALLOW_ALL)
    server.cut_stream_after(3)
    with pytest.raises(Exception):  # noqa: B017 - the SDK/transport error type is theirs to choose
        list(client(server).chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
    (settlement,) = _settled(handle)
    assert settlement["outcome"] in ("abandoned", "error")
    assert handle.guard.ledger.states()[0].held_nano == 0


def test_provider_reported_cost_is_the_actual_cost(guarded: GuardFactory) -> None:
    from tests.servers.openai_server import LocalOpenAIServer

    with LocalOpenAIServer(openrouter=True, prices_usd_per_mtok={MODEL: ("0.15", "0.60")}) as srv:
        handle = guarded(ALLOW_ALL)
        response = client(srv).chat.completions.create(model=MODEL, messages=MESSAGES)
    (settlement,) = _settled(handle)
    assert settlement["cost_source"] == "provider"
    from decimal import Decimal
    assert settlement["actual_nano"] == int(Decimal(repr(response.usage.cost)) * 10**9)  # type: ignore[union-attr]


def test_shadow_mode_lets_calls_through_and_records(server: Any, guarded: GuardFactory, otel: Telemetry) -> None:
    handle = guarded({**BLOCK_ALL, "mode": "shadow"})
    _chat(client(server))
    assert len(server.requests) == 1
    decision = handle.receipts()[0]
    assert (decision["action"], decision["would"]) == ("shadow", "block")
    assert "max_tokens" not in server.requests[0].body  # shadow never rewrites a request


def test_capability_and_allow_list_and_unknown_model(server: Any, guarded: GuardFactory) -> None:
    policy = {"version": 1, "id": "test", "rules": [
        {"id": "pay", "match": {"task": "payment"}, "require_capability": "payment_execute"},
        {"id": "eng", "match": {"team": "eng"}, "models": {"allow": ["openai/gpt-4o-mini"]}},
    ]}
    guarded(policy)
    c = client(server)
    with scope(task="payment", capability="read_only"), pytest.raises(AgentGuardBlocked) as info:
        _chat(c)
    assert "requires capability payment_execute" in info.value.reason
    with scope(task="payment", capability="payment_execute"):
        _chat(c)
    with scope(team="eng"), pytest.raises(AgentGuardBlocked) as info:
        c.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert "not allowed" in info.value.reason
    with pytest.raises(AgentGuardBlocked) as info:
        c.chat.completions.create(model="no-such-model-xyz", messages=MESSAGES)
    assert "unknown model" in info.value.reason
    assert len(server.requests) == 1


def test_unknown_model_allowed_is_priced_at_the_fallback(server: Any, guarded: GuardFactory) -> None:
    handle = guarded({**ALLOW_ALL, "unknown_model": "allow"})
    client(server).chat.completions.create(model="no-such-model-xyz", messages=MESSAGES)
    decision, settlement = handle.receipts()
    assert decision["unknown_model"] is True and decision["price_source"] == "fallback"
    assert settlement["actual_nano"] > 0


def test_receipts_without_a_span_of_ours_link_the_callers_trace(server: Any, guarded: GuardFactory,
                                                                otel: Telemetry) -> None:
    handle = guarded(ALLOW_ALL, tracer_provider=None)  # no global provider either: the guard traces nothing
    _chat(client(server))
    with otel.tracer_provider.get_tracer("app").start_as_current_span("request") as outer:
        _chat(client(server))
    untraced, _, inside, settled = handle.receipts()
    assert (untraced["trace_id"], untraced["span_id"]) == (None, None)
    assert inside["trace_id"] == settled["trace_id"] == f"{outer.get_span_context().trace_id:032x}"
    assert inside["span_id"] is None
    assert [s.name for s in otel.finished()] == ["request"]


def test_span_metrics_and_logs(server: Any, guarded: GuardFactory, otel: Telemetry) -> None:
    handle = guarded(ALLOW_ALL)
    with scope(tenant="acme", team="eng", user="alice", task="review"):
        _chat(client(server))
    span = otel.finished()[-1]
    attrs = span.attributes
    assert span.name == f"chat {MODEL}"
    assert span.kind.name == "CLIENT"
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.request.model"] == MODEL
    assert attrs["gen_ai.response.model"] == MODEL
    assert attrs["gen_ai.usage.output_tokens"] == server.reply_words
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert attrs["server.address"] == "127.0.0.1"
    assert attrs["agentguard.user"] == "alice" and attrs["agentguard.team"] == "eng"
    decision, settlement = handle.receipts()
    assert attrs["agentguard.receipt.hash"] == decision["hash"]
    assert attrs["agentguard.receipt.seq"] == decision["seq"]
    assert attrs["agentguard.receipt.chain"] == decision["chain"]
    assert attrs["agentguard.receipt.sig"] == decision["sig"]
    assert attrs["agentguard.receipt.key_id"] == decision["key_id"]
    assert attrs["agentguard.settlement.receipt.hash"] == settlement["hash"]
    ids = {"trace_id": f"{span.context.trace_id:032x}", "span_id": f"{span.context.span_id:016x}"}
    assert {k: decision[k] for k in ids} == ids == {k: settlement[k] for k in ids}
    assert attrs["agentguard.cost.actual_usd"] == settlement["actual_nano"] / 1e9
    assert "sk-test-secret" not in str(dict(attrs)) and "Review this diff" not in str(dict(attrs))

    logs = [r.log_record for r in otel.logs.get_finished_logs()]
    assert [log.attributes["agentguard.receipt.hash"] for log in logs] == [decision["hash"], settlement["hash"]]
    import json
    assert json.loads(str(logs[0].body)) == decision
    assert logs[0].trace_id == span.context.trace_id

    (cost,) = otel.metric_points("agentguard.cost")
    assert cost.value == pytest.approx(settlement["actual_nano"] / 1e9)
    assert cost.attributes["agentguard.team"] == "eng" and "agentguard.user" not in cost.attributes
    (decisions,) = otel.metric_points("agentguard.decisions")
    assert decisions.attributes["agentguard.decision.action"] == "allow" and decisions.value == 1
    tokens = {p.attributes["gen_ai.token.type"]: p for p in otel.metric_points("gen_ai.client.token.usage")}
    assert tokens["output"].sum == server.reply_words
    assert tuple(tokens["input"].explicit_bounds)[:3] == (1, 4, 16)
    (duration,) = otel.metric_points("gen_ai.client.operation.duration")
    assert tuple(duration.explicit_bounds)[:2] == (0.01, 0.02)
    (utilization,) = otel.metric_points("agentguard.budget.utilization")
    assert utilization.value == pytest.approx(settlement["actual_nano"] / 100e9)


def test_coexists_with_the_official_openai_instrumentation(server: Any, guarded: GuardFactory,
                                                           otel: Telemetry) -> None:
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

    official = OpenAIInstrumentor()
    official.instrument(tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider,
                        logger_provider=otel.logger_provider)
    try:
        guarded(ALLOW_ALL)
        _chat(client(server))
    finally:
        official.uninstrument()
    spans = otel.finished()
    ours = [s for s in spans if s.instrumentation_scope.name == "agentguard_otel.telemetry"]
    theirs = [s for s in spans if s.instrumentation_scope.name != "agentguard_otel.telemetry"]
    assert len(ours) == 1 and len(theirs) == 1
    assert theirs[0].attributes["gen_ai.request.model"] == MODEL
    # Their span wraps the resource method; ours wraps the request beneath it: one trace, nested.
    assert ours[0].context.trace_id == theirs[0].context.trace_id
