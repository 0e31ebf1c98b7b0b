"""Strict means proven: requests drawn from the adapters' request schemas (any mix of text, unicode,
images of any size, system prompts, tool definitions, tool calls and results, cache breakpoints,
output limits, ``n``, streaming or not) go through the real SDKs to local servers that bill the
worst a provider could for them (:mod:`tests.servers.worst_bill`). The reservation is never below
that bill, the settlement is the bill itself, and the ledger's spend is the sum of the bills."""

from __future__ import annotations

import base64
import functools
import json
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anthropic
import boto3
import openai
import pytest
from botocore.config import Config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentguard_otel.pricing import TokenUsage
from tests.conftest import Guarded, GuardFactory
from tests.servers.anthropic_server import LocalAnthropicServer
from tests.servers.base import Bill, JSONObject, LocalServer
from tests.servers.bedrock_server import LocalBedrockServer
from tests.servers.openai_server import LocalOpenAIServer
from tests.servers.worst_bill import worst_bill

# A call without an output limit gets the injected default: kept as short as the drawn limits.
STRICT = {"version": 1, "mode": "enforce", "estimation": "strict", "default_max_output_tokens": 64,
          "rules": [{"id": "all", "caps": [{"limit_usd": 1_000_000, "window": "day", "action": "block"}]}]}
PROPERTY = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


@functools.lru_cache(maxsize=64)
def png(width: int, height: int) -> bytes:
    """A real (blank, 1-bit grayscale) PNG of that size: only its header's size matters to a bill."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes((width + 7) // 8) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 1)) + chunk(b"IEND", b"")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=120)
names = st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True)
sizes = st.tuples(st.integers(1, 4096), st.integers(1, 4096))
schemas = st.builds(
    lambda props: {"type": "object", "properties": props, "required": sorted(props)[:1]},
    st.dictionaries(names, st.one_of(
        st.builds(lambda d: {"type": "string", "description": d}, texts),
        st.builds(lambda e: {"type": "string", "enum": e}, st.lists(texts, min_size=1, max_size=4)),
        st.just({"type": "integer", "minimum": 0}),
    ), max_size=4))
limits = st.integers(1, 256)  # a streamed reply is one event per billed token: kept short


@dataclass
class Billing:
    """A local server billing the worst case, and every bill it sent."""

    server: LocalServer
    bills: list[Bill] = field(default_factory=list)

    def __post_init__(self) -> None:
        def bill(path: str, body: JSONObject) -> Bill:
            self.bills.append(worst_bill(path, body))
            return self.bills[-1]

        self.server.bill_with(bill)


def _check(g: Guarded, billing: Billing, provider: str, model: str, before: int) -> None:
    """The call just made reached the server once; reserved >= billed, settled == billed."""
    assert len(billing.bills) == before + 1
    bill = billing.bills[-1]
    receipts = g.receipts()
    decision = [r for r in receipts if r["kind"] == "decision"][-1]
    settlement = [r for r in receipts if r["kind"] == "settlement"][-1]
    assert (decision["action"], settlement["call_id"]) == ("allow", decision["call_id"])
    price = g.guard.prices.lookup(provider, model)
    assert price is not None
    billed = g.guard.prices.actual_cost_nano(price, TokenUsage(
        input_tokens=bill.input_tokens, output_tokens=bill.output_tokens,
        cache_write_tokens=bill.cache_write_tokens, cache_write_1h_tokens=bill.cache_write_1h_tokens))
    assert decision["estimated_nano"] >= billed, (decision["estimated_nano"], billed, bill)
    assert (settlement["actual_nano"], settlement["cost_source"], settlement["overshoot_nano"]) == (billed, "local", 0)


@pytest.fixture(scope="module")
def billing() -> Iterator[dict[str, Billing]]:
    """The three local servers of the module, each billing the worst case."""
    with LocalOpenAIServer() as o, LocalAnthropicServer() as a, LocalBedrockServer() as b:
        yield {"openai": Billing(o), "anthropic": Billing(a), "bedrock": Billing(b)}


def _drain(stream: Any) -> None:
    for _ in stream:
        pass


def _spent_is_the_sum(g: Guarded, billing: Billing) -> None:
    (state,) = g.guard.ledger.states()
    settled = [r["actual_nano"] for r in g.receipts() if r["kind"] == "settlement"]
    assert len(settled) == len(billing.bills)
    assert (state.held_nano, state.spent_nano) == (0, sum(settled))


# -- OpenAI --------------------------------------------------------------------------------------

def _openai_image(draw: st.DrawFn) -> JSONObject:
    url = draw(st.one_of(st.builds(lambda s: "data:image/png;base64," + b64(png(*s)), sizes),
                         st.just("https://example.com/cat.png")))
    return {"type": "image_url", "image_url": {"url": url, "detail": draw(st.sampled_from(["low", "high", "auto"]))}}


@st.composite
def chat_requests(draw: st.DrawFn) -> JSONObject:
    def user() -> JSONObject:
        if draw(st.booleans()):
            return {"role": "user", "content": draw(texts)}
        return {"role": "user", "content": [{"type": "text", "text": draw(texts)} if draw(st.booleans())
                                            else _openai_image(draw) for _ in range(draw(st.integers(1, 3)))]}

    messages: list[JSONObject] = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(texts)})
    for _ in range(draw(st.integers(1, 3))):
        messages.append(user())
        if draw(st.booleans()):
            call_id = "call_" + draw(names)
            messages.append({"role": "assistant", "content": None, "tool_calls": [
                {"id": call_id, "type": "function",
                 "function": {"name": draw(names), "arguments": json.dumps({"q": draw(texts)})}}]})
            messages.append({"role": "tool", "tool_call_id": call_id, "content": draw(texts)})
    body: JSONObject = {"model": draw(st.sampled_from(["gpt-4o-mini", "gpt-4o", "gpt-4.1-mini"])),
                        "messages": messages}
    tools = draw(st.lists(st.builds(lambda n, d, p: {"type": "function", "function": {
        "name": n, "description": d, "parameters": p}}, names, texts, schemas), max_size=3))
    if tools:
        body["tools"] = tools
    for name in draw(st.sets(st.sampled_from(["max_tokens", "max_completion_tokens"]))):
        body[name] = draw(limits)
    if draw(st.booleans()):
        body["n"] = draw(st.integers(1, 4))
    if draw(st.booleans()):
        body["stop"] = draw(st.lists(texts.filter(bool), min_size=1, max_size=4))
    if draw(st.booleans()):
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "schema": draw(schemas)}}
    return body


@st.composite
def responses_requests(draw: st.DrawFn) -> JSONObject:
    def part() -> JSONObject:
        if draw(st.booleans()):
            return {"type": "input_text", "text": draw(texts)}
        image = _openai_image(draw)["image_url"]
        return {"type": "input_image", "image_url": image["url"], "detail": image["detail"]}

    items: list[JSONObject] = []
    for _ in range(draw(st.integers(1, 3))):
        items.append({"role": "user", "content": [part() for _ in range(draw(st.integers(1, 3)))]})
        if draw(st.booleans()):
            call_id = "call_" + draw(names)
            items.append({"type": "function_call", "call_id": call_id, "name": draw(names),
                          "arguments": json.dumps({"q": draw(texts)})})
            items.append({"type": "function_call_output", "call_id": call_id, "output": draw(texts)})
    body: JSONObject = {"model": draw(st.sampled_from(["gpt-4o-mini", "gpt-4o"])),
                        "input": draw(st.one_of(texts, st.just(items)))}
    if draw(st.booleans()):
        body["instructions"] = draw(texts)
    tools = draw(st.lists(st.builds(lambda n, d, p: {"type": "function", "name": n, "description": d,
                                                     "parameters": p}, names, texts, schemas), max_size=3))
    if tools:
        body["tools"] = tools
    if draw(st.booleans()):
        body["max_output_tokens"] = draw(limits)
    if draw(st.booleans()):
        body["text"] = {"format": {"type": "json_schema", "name": "answer", "schema": draw(schemas)}}
    return body


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_openai_reservation_bounds_the_worst_bill(api: str, billing: dict[str, Billing], guarded: GuardFactory) -> None:
    g = guarded(STRICT, ledger="memory://")
    client = openai.OpenAI(base_url=billing["openai"].server.base_url, api_key="sk", max_retries=0)
    billing["openai"].bills.clear()
    create: Callable[..., Any] = client.chat.completions.create if api == "chat" else client.responses.create
    strategy = chat_requests() if api == "chat" else responses_requests()

    @PROPERTY
    @given(body=strategy, stream=st.booleans())
    def call(body: JSONObject, stream: bool) -> None:
        before = len(billing["openai"].bills)
        result = create(**body, stream=stream)
        if stream:
            _drain(result)
        _check(g, billing["openai"], "openai", body["model"], before)

    call()
    _spent_is_the_sum(g, billing["openai"])


# -- Anthropic -----------------------------------------------------------------------------------

def _cache(draw: st.DrawFn) -> JSONObject:
    choice = draw(st.sampled_from([None, "5m", "1h"]))
    if choice is None:
        return {}
    return {"cache_control": {"type": "ephemeral", **({"ttl": "1h"} if choice == "1h" else {})}}


def _anthropic_image(draw: st.DrawFn) -> JSONObject:
    if draw(st.booleans()):
        return {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}
    return {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64(png(*draw(sizes)))}}


@st.composite
def anthropic_bodies(draw: st.DrawFn, *, converse_tools: bool = False) -> JSONObject:
    """A Messages body (the Anthropic API's, and Anthropic's invoke_model body on Bedrock)."""
    messages: list[JSONObject] = []
    for _ in range(draw(st.integers(1, 3))):
        blocks: list[JSONObject] = [
            draw(st.builds(lambda t: {"type": "text", "text": t}, texts.filter(bool))) | _cache(draw)
            if draw(st.booleans()) else _anthropic_image(draw)
            for _ in range(draw(st.integers(1, 3)))]
        messages.append({"role": "user", "content": draw(st.one_of(texts.filter(bool), st.just(blocks)))})
        if draw(st.booleans()):
            tool_id = "toolu_" + draw(names)
            messages.append({"role": "assistant", "content": [
                {"type": "tool_use", "id": tool_id, "name": draw(names), "input": {"q": draw(texts)}}]})
            messages.append({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": tool_id, "content": draw(texts)}]})
    body: JSONObject = {"messages": messages, "max_tokens": draw(limits)}
    if draw(st.booleans()):
        body["system"] = draw(st.one_of(texts, st.builds(lambda t: [{"type": "text", "text": t}],
                                                          texts.filter(bool))))
    tools = draw(st.lists(st.builds(lambda n, d, p: {"name": n, "description": d, "input_schema": p},
                                    names, texts, schemas), max_size=3))
    tools += draw(st.lists(st.sampled_from([
        {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
        {"type": "bash_20250124", "name": "bash"},
        {"type": "computer_20250124", "name": "computer", "display_width_px": 1024, "display_height_px": 768}]),
        max_size=3, unique_by=lambda tool: tool["name"]))
    if tools:
        body["tools"] = tools
    if draw(st.booleans()):
        body["stop_sequences"] = draw(st.lists(texts.filter(bool), min_size=1, max_size=3))
    return body


def test_anthropic_reservation_bounds_the_worst_bill(billing: dict[str, Billing], guarded: GuardFactory) -> None:
    g = guarded(STRICT, ledger="memory://")
    client = anthropic.Anthropic(base_url=billing["anthropic"].server.base_url, api_key="sk", max_retries=0)
    billing["anthropic"].bills.clear()

    @PROPERTY
    @given(body=anthropic_bodies(), model=st.sampled_from(["claude-sonnet-4-5", "claude-3-5-haiku-latest"]),
           stream=st.booleans())
    def call(body: JSONObject, model: str, stream: bool) -> None:
        before = len(billing["anthropic"].bills)
        result = client.messages.create(**body, model=model, stream=stream)
        if stream:
            _drain(result)
        _check(g, billing["anthropic"], "anthropic", model, before)

    call()
    _spent_is_the_sum(g, billing["anthropic"])


# -- Bedrock -------------------------------------------------------------------------------------

BEDROCK_MODELS = ["anthropic.claude-3-5-sonnet-20241022-v2:0", "amazon.nova-pro-v1:0", "amazon.nova-lite-v1:0"]


@st.composite
def converse_params(draw: st.DrawFn, *, nova_invoke: bool = False) -> JSONObject:
    """Converse params (images as bytes), or with ``nova_invoke`` Nova's invoke_model body (base64)."""
    def block() -> JSONObject:
        kind = draw(st.sampled_from(["text", "image", "cache"] if not nova_invoke else ["text", "image"]))
        if kind == "cache":
            return {"cachePoint": {"type": "default"}}
        if kind == "text":
            return {"text": draw(texts.filter(bool))}
        data = png(*draw(sizes))
        return {"image": {"format": "png", "source": {"bytes": b64(data) if nova_invoke else data}}}

    messages: list[JSONObject] = []
    for _ in range(draw(st.integers(1, 3))):
        messages.append({"role": "user", "content": [block() for _ in range(draw(st.integers(1, 3)))]})
        if draw(st.booleans()):
            tool_id = "tooluse_" + draw(names)
            messages.append({"role": "assistant", "content": [
                {"toolUse": {"toolUseId": tool_id, "name": draw(names), "input": {"q": draw(texts)}}}]})
            messages.append({"role": "user", "content": [
                {"toolResult": {"toolUseId": tool_id, "content": [{"text": draw(texts)}]}}]})
    params: JSONObject = {"messages": messages, "inferenceConfig": {"maxTokens": draw(limits)}}
    if draw(st.booleans()):
        params["system"] = [{"text": draw(texts.filter(bool))}]
    tools = draw(st.lists(st.builds(lambda n, d, p: {"toolSpec": {"name": n, "description": d or "d",
                                                                  "inputSchema": {"json": p}}},
                                    names, texts, schemas), max_size=3))
    if tools:
        params["toolConfig"] = {"tools": tools}
    if draw(st.booleans()):
        params["inferenceConfig"]["stopSequences"] = draw(st.lists(texts.filter(bool), min_size=1, max_size=3))
    return params


def _bedrock_client(billing: Billing) -> Any:
    return boto3.client("bedrock-runtime", endpoint_url=billing.server.url, region_name="us-east-1",
                        aws_access_key_id="AKID", aws_secret_access_key="secret",
                        config=Config(retries={"total_max_attempts": 1}))


def test_bedrock_converse_reservation_bounds_the_worst_bill(billing: dict[str, Billing],
                                                            guarded: GuardFactory) -> None:
    g = guarded(STRICT, ledger="memory://")
    client = _bedrock_client(billing["bedrock"])
    billing["bedrock"].bills.clear()

    @PROPERTY
    @given(params=converse_params(), model=st.sampled_from(BEDROCK_MODELS), stream=st.booleans())
    def call(params: JSONObject, model: str, stream: bool) -> None:
        before = len(billing["bedrock"].bills)
        if stream:
            _drain(client.converse_stream(modelId=model, **params)["stream"])
        else:
            client.converse(modelId=model, **params)
        _check(g, billing["bedrock"], "aws", model, before)

    call()
    _spent_is_the_sum(g, billing["bedrock"])


@st.composite
def invoke_bodies(draw: st.DrawFn) -> tuple[str, JSONObject]:
    """(model id, invoke_model body) of a family the adapter reads: Anthropic or Nova."""
    model = draw(st.sampled_from(BEDROCK_MODELS))
    if model.startswith("anthropic."):
        return model, {"anthropic_version": "bedrock-2023-05-31", **draw(anthropic_bodies())}
    return model, {"schemaVersion": "messages-v1", **draw(converse_params(nova_invoke=True))}


def test_bedrock_invoke_model_reservation_bounds_the_worst_bill(billing: dict[str, Billing],
                                                                guarded: GuardFactory) -> None:
    g = guarded(STRICT, ledger="memory://")
    client = _bedrock_client(billing["bedrock"])
    billing["bedrock"].bills.clear()

    @PROPERTY
    @given(request=invoke_bodies(), stream=st.booleans())
    def call(request: tuple[str, JSONObject], stream: bool) -> None:
        model, body = request
        before = len(billing["bedrock"].bills)
        if stream:
            _drain(client.invoke_model_with_response_stream(modelId=model, body=json.dumps(body))["body"])
        else:
            client.invoke_model(modelId=model, body=json.dumps(body))["body"].read()
        _check(g, billing["bedrock"], "aws", model, before)

    call()
    _spent_is_the_sum(g, billing["bedrock"])


def test_regression_claude_on_bedrock_with_tools_reserves_the_tool_use_prompt(billing: dict[str, Billing],
                                                                              guarded: GuardFactory) -> None:
    """The property's first find: Converse with tools for a Claude model left Anthropic's tool-use
    system prompt (hundreds of tokens the request does not carry) out of the bound."""
    g = guarded(STRICT, ledger="memory://")
    client = _bedrock_client(billing["bedrock"])
    billing["bedrock"].bills.clear()
    model = "anthropic.claude-3-5-sonnet-20241022-v2:0"
    client.converse(modelId=model, messages=[{"role": "user", "content": [{"text": "0"}]}],
                    inferenceConfig={"maxTokens": 1}, toolConfig={"tools": [{"toolSpec": {
                        "name": "a", "description": "d",
                        "inputSchema": {"json": {"type": "object", "properties": {}, "required": []}}}}]})
    _check(g, billing["bedrock"], "aws", model, 0)
    assert billing["bedrock"].bills[0].input_tokens > 346  # the documented prompt is in the bill


def test_regression_anthropic_builtin_tools_reserve_their_documented_definitions(billing: dict[str, Billing],
                                                                                 guarded: GuardFactory) -> None:
    """The computer tool's definition and system prompt (735 + 499 tokens, which the body only
    names) are beyond the tool-use prompt's margin: they are in the bound too (shown on Bedrock,
    where Claude's dearest input rate is closest to its plain one)."""
    g = guarded(STRICT, ledger="memory://")
    client = _bedrock_client(billing["bedrock"])
    billing["bedrock"].bills.clear()
    model = "anthropic.claude-3-5-sonnet-20241022-v2:0"
    client.invoke_model(modelId=model, body=json.dumps({
        "anthropic_version": "bedrock-2023-05-31", "max_tokens": 1, "messages": [{"role": "user", "content": "0"}],
        "tools": [{"type": "computer_20250124", "name": "computer", "display_width_px": 1024,
                   "display_height_px": 768}]}))["body"].read()
    _check(g, billing["bedrock"], "aws", model, 0)
