"""The real ``anthropic`` SDK against the local Anthropic-wire server, guarded end to end: every
calling style reaches the choke point, blocked calls never reach the server, settlement is exact
(cache reads and 5-minute / 1-hour cache writes included)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentguard_otel import AgentGuardBlocked
from agentguard_otel.demo.server import reply_text
from agentguard_otel.pricing import TokenUsage
from agentguard_otel.pricing.estimate import IMAGE_TOKEN_BOUND, TOKENS_PER_MTOK
from agentguard_otel.providers.anthropic import MessagesReader, read_usage
from agentguard_otel.providers.stream import loads
from tests.conftest import GuardFactory, Telemetry
from tests.servers.anthropic_server import LocalAnthropicServer

MODEL = "claude-haiku-4-5"
MESSAGES: list[Any] = [{"role": "user", "content": "Review this diff, please."}]
PROMPT_TOKENS = 13  # ceil(25 / 4) + 3 per message + 3, as the server counts

ALLOW_ALL = {"version": 1, "id": "test", "mode": "enforce",
             "rules": [{"id": "all", "caps": [{"limit_usd": 100, "window": "day", "action": "block"}]}]}
BLOCK_ALL = {"version": 1, "id": "test", "mode": "enforce",
             "rules": [{"id": "tiny", "caps": [{"limit_usd": "0.000000001", "window": "call", "action": "block",
                                                "reason": "test ceiling"}]}]}


@pytest.fixture(scope="module")
def server() -> Iterator[LocalAnthropicServer]:
    """Overrides the OpenAI-wire ``server`` here; the shared autouse fixture resets it per test."""
    with LocalAnthropicServer() as srv:
        yield srv


def client(server: LocalAnthropicServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key="sk-ant-test-secret", max_retries=0)


def aclient(server: LocalAnthropicServer) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=server.base_url, api_key="sk-ant-test-secret", max_retries=0)


def _create(c: anthropic.Anthropic) -> Any:
    return c.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES)


def _create_stream(c: anthropic.Anthropic) -> Any:
    return [event.type for event in c.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES, stream=True)]


def _stream_final(c: anthropic.Anthropic) -> Any:
    with c.messages.stream(model=MODEL, max_tokens=100, messages=MESSAGES) as stream:
        return stream.get_final_message()


def _stream_text(c: anthropic.Anthropic) -> Any:
    with c.messages.stream(model=MODEL, max_tokens=100, messages=MESSAGES) as stream:
        return "".join(stream.text_stream)


def _raw(c: anthropic.Anthropic) -> Any:
    return c.messages.with_raw_response.create(model=MODEL, max_tokens=100, messages=MESSAGES).parse()


def _raw_stream(c: anthropic.Anthropic) -> Any:
    raw = c.messages.with_raw_response.create(model=MODEL, max_tokens=100, messages=MESSAGES, stream=True)
    return list(raw.parse())


def _streaming_response(c: anthropic.Anthropic) -> Any:
    with c.messages.with_streaming_response.create(model=MODEL, max_tokens=100, messages=MESSAGES) as resp:
        return resp.parse()


def _streaming_response_lines(c: anthropic.Anthropic) -> Any:
    with c.messages.with_streaming_response.create(model=MODEL, max_tokens=100, messages=MESSAGES,
                                                   stream=True) as resp:
        return list(resp.iter_lines())


def _beta(c: anthropic.Anthropic) -> Any:
    return c.beta.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES)


def _beta_stream(c: anthropic.Anthropic) -> Any:
    with c.beta.messages.stream(model=MODEL, max_tokens=100, messages=MESSAGES) as stream:
        return stream.get_final_message()


def _beta_query_path(c: anthropic.Anthropic) -> Any:
    """Older SDKs post the beta namespace to ``/v1/messages?beta=true``: the choke point sees the query."""
    body = {"model": MODEL, "max_tokens": 100, "messages": MESSAGES}
    return c.post("/v1/messages?beta=true", cast_to=anthropic.types.Message, body=body)


SYNC_STYLES: dict[str, Callable[[anthropic.Anthropic], Any]] = {
    "messages.create": _create,
    "messages.create(stream=True)": _create_stream,
    "messages.stream().get_final_message": _stream_final,
    "messages.stream().text_stream": _stream_text,
    "with_raw_response": _raw,
    "with_raw_response(stream=True)": _raw_stream,
    "with_streaming_response": _streaming_response,
    "with_streaming_response(stream=True).iter_lines": _streaming_response_lines,
    "beta.messages.create": _beta,
    "beta.messages.stream()": _beta_stream,
    "post(/v1/messages?beta=true)": _beta_query_path,
}


async def _acreate(c: anthropic.AsyncAnthropic) -> Any:
    return await c.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES)


async def _acreate_stream(c: anthropic.AsyncAnthropic) -> Any:
    stream = await c.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES, stream=True)
    return [event async for event in stream]


async def _astream_final(c: anthropic.AsyncAnthropic) -> Any:
    async with c.messages.stream(model=MODEL, max_tokens=100, messages=MESSAGES) as stream:
        return await stream.get_final_message()


async def _astream_text(c: anthropic.AsyncAnthropic) -> Any:
    async with c.messages.stream(model=MODEL, max_tokens=100, messages=MESSAGES) as stream:
        return "".join([text async for text in stream.text_stream])


async def _araw(c: anthropic.AsyncAnthropic) -> Any:
    raw = await c.messages.with_raw_response.create(model=MODEL, max_tokens=100, messages=MESSAGES)
    return await raw.parse()


async def _astreaming_response(c: anthropic.AsyncAnthropic) -> Any:
    async with c.messages.with_streaming_response.create(model=MODEL, max_tokens=100, messages=MESSAGES,
                                                         stream=True) as resp:
        return [line async for line in resp.iter_lines()]


async def _abeta(c: anthropic.AsyncAnthropic) -> Any:
    return await c.beta.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES)


ASYNC_STYLES = {
    "async messages.create": _acreate,
    "async messages.create(stream=True)": _acreate_stream,
    "async messages.stream().get_final_message": _astream_final,
    "async messages.stream().text_stream": _astream_text,
    "async with_raw_response": _araw,
    "async with_streaming_response(stream=True)": _astreaming_response,
    "async beta.messages.create": _abeta,
}


def _settled(handle: Any) -> list[dict[str, Any]]:
    return [r for r in handle.receipts() if r["kind"] == "settlement"]


def _assert_exact(handle: Any) -> dict[str, Any]:
    """One call settled to exactly its priced usage, nothing left held."""
    (settlement,) = _settled(handle)
    assert settlement["outcome"] == "ok"
    assert settlement["cost_source"] == "local"
    usage = TokenUsage(**settlement["usage"])
    decision = next(r for r in handle.receipts() if r["kind"] == "decision")
    price = handle.guard.prices.lookup("anthropic", decision["model_effective"])
    assert price is not None
    assert settlement["actual_nano"] == handle.guard.prices.actual_cost_nano(price, usage)
    assert 0 < settlement["actual_nano"] <= decision["estimated_nano"]
    (state,) = handle.guard.ledger.states()
    assert (state.held_nano, state.spent_nano) == (0, settlement["actual_nano"])
    return settlement


@pytest.mark.parametrize("style", list(SYNC_STYLES))
def test_every_sync_style_is_blocked_before_the_server(style: str, server: LocalAnthropicServer,
                                                       guarded: GuardFactory, otel: Telemetry) -> None:
    guarded(BLOCK_ALL)
    with pytest.raises(AgentGuardBlocked) as info:
        SYNC_STYLES[style](client(server))
    assert server.requests == []
    assert info.value.reason == "test ceiling"
    span = otel.finished()[-1]
    assert span.attributes["error.type"] == "agentguard.blocked"
    assert span.attributes["gen_ai.provider.name"] == "anthropic"


@pytest.mark.parametrize("style", list(ASYNC_STYLES))
def test_every_async_style_is_blocked_before_the_server(style: str, server: LocalAnthropicServer,
                                                        guarded: GuardFactory) -> None:
    guarded(BLOCK_ALL)
    with pytest.raises(AgentGuardBlocked):
        asyncio.run(ASYNC_STYLES[style](aclient(server)))
    assert server.requests == []


@pytest.mark.parametrize("style", list(SYNC_STYLES))
def test_every_sync_style_settles_exactly(style: str, server: LocalAnthropicServer, guarded: GuardFactory) -> None:
    server.set_cache(read=4, write_5m=3, write_1h=2)
    handle = guarded(ALLOW_ALL)
    SYNC_STYLES[style](client(server))
    assert len(server.requests) == 1
    settlement = _assert_exact(handle)
    assert settlement["usage"] == {"input_tokens": PROMPT_TOKENS, "output_tokens": server.reply_words,
                                   "cache_read_tokens": 4, "cache_write_tokens": 3, "cache_write_1h_tokens": 2,
                                   "reasoning_tokens": 0}
    assert settlement["response_model"] == MODEL


@pytest.mark.parametrize("style", list(ASYNC_STYLES))
def test_every_async_style_settles_exactly(style: str, server: LocalAnthropicServer, guarded: GuardFactory) -> None:
    server.set_cache(read=4, write_5m=3, write_1h=2)
    handle = guarded(ALLOW_ALL)
    asyncio.run(ASYNC_STYLES[style](aclient(server)))
    settlement = _assert_exact(handle)
    assert settlement["usage"]["input_tokens"] == PROMPT_TOKENS


def test_client_built_before_instrument_is_guarded(server: LocalAnthropicServer, guarded: GuardFactory) -> None:
    early, aearly = client(server), aclient(server)
    guarded(BLOCK_ALL)
    with pytest.raises(AgentGuardBlocked):
        _create(early)
    with pytest.raises(AgentGuardBlocked):
        asyncio.run(_acreate(aearly))
    assert server.requests == []


def test_uninstrument_restores_the_sdk(server: LocalAnthropicServer, guarded: GuardFactory) -> None:
    from anthropic._base_client import AsyncAPIClient, SyncAPIClient

    handle = guarded(BLOCK_ALL)
    handle.instrumentor.uninstrument()
    assert not hasattr(SyncAPIClient.request, "__wrapped__")
    assert not hasattr(AsyncAPIClient.request, "__wrapped__")
    _create(client(server))
    assert len(server.requests) == 1
    handle.instrumentor.instrument(policy=BLOCK_ALL, signing_key=str(handle.key_path),
                                   ledger="memory://", receipts=str(handle.home / "receipts"))


def test_count_tokens_passes_unguarded(server: LocalAnthropicServer, guarded: GuardFactory) -> None:
    handle = guarded(BLOCK_ALL)
    c = client(server)
    assert c.messages.count_tokens(model=MODEL, messages=MESSAGES).input_tokens == PROMPT_TOKENS
    assert c.beta.messages.count_tokens(model=MODEL, messages=MESSAGES).input_tokens == PROMPT_TOKENS
    assert [r.path for r in server.requests] == ["/v1/messages/count_tokens"] * 2
    assert handle.receipts() == []


def test_stream_reaches_the_caller_whole(server: LocalAnthropicServer, guarded: GuardFactory) -> None:
    """Anthropic always streams usage: nothing is requested on the caller's behalf, nothing hidden."""
    guarded(ALLOW_ALL)
    events = _create_stream(client(server))
    assert events == ["message_start", "content_block_start", *["content_block_delta"] * server.reply_words,
                      "content_block_stop", "message_delta", "message_stop"]
    assert server.requests[0].body == {"model": MODEL, "max_tokens": 100, "messages": MESSAGES, "stream": True}


def test_clamp_lowers_max_tokens_and_never_removes_it(server: LocalAnthropicServer, guarded: GuardFactory) -> None:
    policy = {**ALLOW_ALL, "rules": [{**ALLOW_ALL["rules"][0], "max_output_tokens": 5}]}  # type: ignore[dict-item]
    handle = guarded(policy)
    c = client(server)
    message = c.messages.create(model=MODEL, max_tokens=500, messages=MESSAGES)
    c.messages.create(model=MODEL, max_tokens=3, messages=MESSAGES)
    with c.messages.stream(model=MODEL, max_tokens=4096, messages=MESSAGES) as stream:
        streamed = stream.get_final_message()
    assert [r.body["max_tokens"] for r in server.requests] == [5, 3, 5]  # type: ignore[index]
    assert (message.stop_reason, message.usage.output_tokens) == ("max_tokens", 5)
    assert streamed.stop_reason == "max_tokens"
    assert [d["max_output_tokens"] for d in handle.receipts() if d["kind"] == "decision"] == [5, 3, 5]


def test_downgrade_rewrites_the_model(server: LocalAnthropicServer, guarded: GuardFactory, otel: Telemetry) -> None:
    policy = {"version": 1, "id": "test", "rules": [{"id": "eng", "caps": [
        {"limit_usd": "0.0001", "window": "day", "action": "downgrade", "downgrade_to": MODEL}]}]}
    handle = guarded(policy)
    response = client(server).messages.create(model="claude-opus-4-1", max_tokens=100, messages=MESSAGES)
    assert server.requests[0].body["model"] == MODEL  # type: ignore[index]
    assert response.model == MODEL
    decision, settlement = handle.receipts()
    assert (decision["action"], decision["model_requested"], decision["model_effective"]) == \
        ("downgrade", "claude-opus-4-1", MODEL)
    assert settlement["response_model"] == MODEL
    assert otel.finished()[-1].name == f"chat {MODEL}"


def test_provider_error_releases_the_hold(server: LocalAnthropicServer, guarded: GuardFactory,
                                          otel: Telemetry) -> None:
    handle = guarded(ALLOW_ALL)
    server.fail_next(529, message="Overloaded")
    with pytest.raises(anthropic.APIStatusError) as info:
        _create(client(server))
    assert info.value.status_code == 529
    server.fail_next(500)
    with pytest.raises(anthropic.InternalServerError):
        _stream_final(client(server))
    settlements = _settled(handle)
    assert [(s["outcome"], s["actual_nano"]) for s in settlements] == [("error", 0), ("error", 0)]
    assert settlements[1]["error_type"] == "InternalServerError"
    assert all(s.held_nano == 0 and s.spent_nano == 0 for s in handle.guard.ledger.states())
    assert otel.finished()[-1].attributes["error.type"] == "InternalServerError"


def test_abandoned_stream_settles(server: LocalAnthropicServer, guarded: GuardFactory) -> None:
    server.set_cache(read=4)
    handle = guarded(ALLOW_ALL)
    stream = client(server).messages.create(model=MODEL, max_tokens=100, messages=MESSAGES, stream=True)
    for i, _event in enumerate(stream):
        if i == 3:
            break
    del stream, _event
    gc.collect()
    (settlement,) = _settled(handle)
    assert (settlement["outcome"], settlement["cost_source"]) == ("abandoned", "estimated")
    usage = settlement["usage"]
    # Input and cache tokens are known from message_start; output is bounded by the bytes seen.
    assert (usage["input_tokens"], usage["cache_read_tokens"]) == (PROMPT_TOKENS, 4)
    assert 1 <= usage["output_tokens"] <= len(reply_text(server.reply_words).encode())
    (state,) = handle.guard.ledger.states()
    assert (state.held_nano, state.spent_nano) == (0, settlement["actual_nano"])
    assert settlement["actual_nano"] > 0


def test_abandoned_stream_helper_settles_on_exit(server: LocalAnthropicServer, guarded: GuardFactory) -> None:
    handle = guarded(ALLOW_ALL)
    with client(server).messages.stream(model=MODEL, max_tokens=100, messages=MESSAGES) as stream:
        next(iter(stream.text_stream))
    (settlement,) = _settled(handle)
    assert settlement["outcome"] == "abandoned"
    assert handle.guard.ledger.states()[0].held_nano == 0


def test_stream_cut_by_the_network_settles(server: LocalAnthropicServer, guarded: GuardFactory) -> None:
    handle = guarded(ALLOW_ALL)
    server.cut_stream_after(4)
    with pytest.raises(Exception):  # noqa: B017 - the SDK/transport error type is theirs to choose
        _create_stream(client(server))
    (settlement,) = _settled(handle)
    assert settlement["outcome"] in ("abandoned", "error")
    assert settlement["usage"]["input_tokens"] == PROMPT_TOKENS
    assert handle.guard.ledger.states()[0].held_nano == 0


def test_span_carries_semconv_usage_with_cache_tokens(server: LocalAnthropicServer, guarded: GuardFactory,
                                                      otel: Telemetry) -> None:
    server.set_cache(read=4, write_5m=3, write_1h=2)
    handle = guarded(ALLOW_ALL)
    _stream_final(client(server))
    attrs = otel.finished()[-1].attributes
    assert attrs["gen_ai.provider.name"] == "anthropic"
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == attrs["gen_ai.response.model"] == MODEL
    assert attrs["gen_ai.usage.input_tokens"] == PROMPT_TOKENS  # Anthropic's input_tokens (4) + cache (9)
    assert attrs["gen_ai.usage.cache_read.input_tokens"] == 4
    assert attrs["gen_ai.usage.cache_creation.input_tokens"] == 5
    assert attrs["gen_ai.usage.output_tokens"] == server.reply_words
    assert attrs["gen_ai.response.finish_reasons"] == ("end_turn",)
    assert attrs["gen_ai.response.id"].startswith("msg_")
    assert attrs["server.address"] == "127.0.0.1"
    (_decision, settlement) = handle.receipts()
    assert attrs["agentguard.cost.actual_usd"] == settlement["actual_nano"] / 1e9
    assert "sk-ant-test-secret" not in str(dict(attrs)) and "Review this diff" not in str(dict(attrs))
    assert "x-api-key" not in server.requests[0].headers


@pytest.mark.parametrize(("cache", "expected_nano"), [
    # claude-haiku-4-5: input $1, 5-minute write $1.25, 1-hour write $2, cache read $0.10, output $5 per MTok.
    # 13 prompt tokens, 24 output tokens (120,000 nano); 8 of the prompt tokens cached as below.
    ({}, 13_000 + 120_000),
    ({"write_5m": 8}, 5_000 + 8 * 1_250 + 120_000),
    ({"write_1h": 8}, 5_000 + 8 * 2_000 + 120_000),
    ({"write_5m": 8, "breakdown": False}, 5_000 + 8 * 1_250 + 120_000),  # no breakdown: 5-minute writes
    ({"read": 8}, 5_000 + 8 * 100 + 120_000),
])
def test_cache_tokens_are_priced_as_anthropic_prices_them(cache: dict[str, Any], expected_nano: int,
                                                          server: LocalAnthropicServer, guarded: GuardFactory) -> None:
    server.set_cache(**cache)
    handle = guarded(ALLOW_ALL)
    _create(client(server))
    (settlement,) = _settled(handle)
    assert settlement["actual_nano"] == expected_nano
    assert settlement["usage"]["input_tokens"] == PROMPT_TOKENS


def test_body_is_measured_as_sent(server: LocalAnthropicServer, guarded: GuardFactory) -> None:
    """Iterators and pydantic blocks from an earlier reply are measured as the JSON they become,
    and reach the server intact; images are bounded per image."""
    handle = guarded(ALLOW_ALL)
    c = client(server)
    reply = c.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES)
    history = [*MESSAGES, {"role": "assistant", "content": reply.content}, {"role": "user", "content": "And?"}]
    plain = [*MESSAGES, {"role": "assistant", "content": [{"type": "text", "text": reply.content[0].text}]},
             {"role": "user", "content": "And?"}]
    c.messages.create(model=MODEL, max_tokens=100, messages=iter(history))
    c.messages.create(model=MODEL, max_tokens=100, messages=plain)
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    c.messages.create(model=MODEL, max_tokens=100,
                      messages=[{"role": "user", "content": [image, {"type": "text", "text": "What is it?"}]}])
    sent = [r.body["messages"] for r in server.requests]  # type: ignore[index]
    assert sent[1] == sent[2] == plain
    estimates = [d["estimated_nano"] for d in handle.receipts() if d["kind"] == "decision"]
    assert estimates[1] == estimates[2] > estimates[0]
    price = handle.guard.prices.lookup("anthropic", MODEL)
    assert price is not None
    assert estimates[3] - estimates[0] >= IMAGE_TOKEN_BOUND * price.bound_input // TOKENS_PER_MTOK


def test_stream_usage_merges_message_start_and_cumulative_message_delta() -> None:
    """Newer API versions repeat input and cache counts in message_delta (cumulative): later wins;
    thinking tokens are read as reasoning tokens."""
    reader = MessagesReader()
    reader.on_event("message_start", loads(
        b'{"type":"message_start","message":{"id":"msg_1","model":"claude-sonnet-4-5","usage":'
        b'{"input_tokens":10,"output_tokens":1,"cache_read_input_tokens":5,"cache_creation_input_tokens":7,'
        b'"cache_creation":{"ephemeral_5m_input_tokens":3,"ephemeral_1h_input_tokens":4}}}}'))
    reader.on_event("content_block_delta", {"type": "content_block_delta", "delta": {"type": "thinking_delta",
                                                                                      "thinking": "hmm é"}})
    # until message_delta, the counts so far (a stream closed here settles at its reservation)
    assert reader.info.usage is not None and reader.info.usage.output_tokens == 1
    cumulative = {"output_tokens": 40, "input_tokens": 12, "cache_read_input_tokens": None,
                  "output_tokens_details": {"thinking_tokens": 30}}
    reader.on_event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                                      "usage": cumulative})
    assert not reader.complete
    reader.on_event("message_stop", {"type": "message_stop"})
    assert reader.complete
    assert reader.info.usage == TokenUsage(input_tokens=12 + 5 + 7, output_tokens=40, cache_read_tokens=5,
                                           cache_write_tokens=3, cache_write_1h_tokens=4, reasoning_tokens=30)
    assert (reader.info.response_model, reader.info.response_id, reader.info.finish_reasons) == \
        ("claude-sonnet-4-5", "msg_1", ["tool_use"])


@given(plain=st.integers(0, 10**6), read=st.integers(0, 10**6), write_5m=st.integers(0, 10**6),
       write_1h=st.integers(0, 10**6), breakdown=st.booleans())
def test_read_usage_counts_every_input_token_once(plain: int, read: int, write_5m: int, write_1h: int,
                                                  breakdown: bool) -> None:
    usage: dict[str, Any] = {"input_tokens": plain, "output_tokens": 1, "cache_read_input_tokens": read,
                             "cache_creation_input_tokens": write_5m + write_1h}
    if breakdown:
        usage["cache_creation"] = {"ephemeral_5m_input_tokens": write_5m, "ephemeral_1h_input_tokens": write_1h}
    tokens = read_usage(usage)
    assert tokens is not None
    assert tokens.input_tokens == plain + read + write_5m + write_1h
    assert tokens.cache_read_tokens == read
    assert tokens.cache_write_tokens + tokens.cache_write_1h_tokens == write_5m + write_1h
    assert tokens.cache_write_1h_tokens == (write_1h if breakdown else 0)



FALLBACKS = [{"model": "claude-opus-4-1", "max_tokens": 2000}, {"model": "claude-sonnet-4-5"}]


def test_server_side_fallbacks_must_be_allowed(server: LocalAnthropicServer, guarded: GuardFactory) -> None:
    """Beta ``fallbacks``: any listed model may answer, so each must pass the allow-list."""
    policy = {**ALLOW_ALL, "rules": [{**ALLOW_ALL["rules"][0], "models": {"allow": [MODEL]}}]}  # type: ignore[dict-item]
    guarded(policy)
    with pytest.raises(AgentGuardBlocked) as info:
        client(server).beta.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES,
                                            fallbacks=FALLBACKS)  # type: ignore[arg-type]
    assert info.value.reason == "model claude-opus-4-1 is not allowed by rule all"
    assert server.requests == []


def test_server_side_fallbacks_are_reserved_at_the_dearest(server: LocalAnthropicServer,
                                                           guarded: GuardFactory) -> None:
    handle = guarded(ALLOW_ALL)
    c = client(server)
    c.beta.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES, fallbacks=FALLBACKS)  # type: ignore[arg-type]
    c.messages.create(model="claude-opus-4-1", max_tokens=2000, messages=MESSAGES)
    first, second = [d["estimated_nano"] for d in handle.receipts() if d["kind"] == "decision"]
    assert first == second  # the dearest candidate at its own max_tokens
    assert server.requests[0].body["fallbacks"] == FALLBACKS  # type: ignore[index]


def test_server_side_fallbacks_are_clamped(server: LocalAnthropicServer, guarded: GuardFactory) -> None:
    entries = [{"model": "claude-sonnet-4-5", "max_tokens": 2000}, {"model": MODEL, "max_tokens": 3},
               {"model": "claude-3-5-haiku-latest"}]
    guarded({**ALLOW_ALL, "rules": [{**ALLOW_ALL["rules"][0], "max_output_tokens": 5}]})  # type: ignore[dict-item]
    client(server).beta.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES,
                                        fallbacks=entries)  # type: ignore[arg-type]
    body = server.requests[0].body
    assert body is not None and body["max_tokens"] == 5
    assert body["fallbacks"] == [{"model": "claude-sonnet-4-5", "max_tokens": 5}, {"model": MODEL, "max_tokens": 3},
                                 {"model": "claude-3-5-haiku-latest"}]
    assert entries[0]["max_tokens"] == 2000  # the caller's list is untouched


def test_server_side_fallbacks_are_dropped_by_a_downgrade(server: LocalAnthropicServer,
                                                          guarded: GuardFactory) -> None:
    guarded({"version": 1, "id": "test", "rules": [{"id": "eng", "caps": [
        {"limit_usd": "0.0001", "window": "day", "action": "downgrade", "downgrade_to": MODEL}]}]})
    client(server).beta.messages.create(model="claude-opus-4-1", max_tokens=100, messages=MESSAGES,
                                        extra_body={"fallbacks": FALLBACKS})
    body = server.requests[0].body
    assert body is not None and body["model"] == MODEL and "fallbacks" not in body  # only the target may answer
