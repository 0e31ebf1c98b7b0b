"""The provider contract, run on every adapter through its real SDK against a local server of its
wire format: for each calling style and each response shape, what reached the server, what the
caller saw, the settlement receipt, nothing left held, and spent = the sum of the receipts.

The one rule it pins: once the provider has answered, nothing raises into the caller; usage that
cannot be trusted settles at the reservation (``cost_source: estimated``, ``degraded: true``), and
no response settles silently at $0.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import boto3
import openai
import pytest

from tests.conftest import Guarded, GuardFactory, Telemetry
from tests.servers.anthropic_server import LocalAnthropicServer
from tests.servers.base import OMIT_USAGE
from tests.servers.bedrock_server import LocalBedrockServer
from tests.servers.openai_server import LocalOpenAIServer

PROMPT = "Summarise the incident report of project Bluebird."
POLICY = {"version": 1, "id": "contract", "mode": "enforce",
          "rules": [{"id": "all", "caps": [{"limit_usd": 100, "window": "day", "action": "block"}]}]}


def _openai_calls(srv: Any) -> dict[str, Callable[[], str]]:
    sync = openai.OpenAI(base_url=srv.base_url, api_key="sk-contract", max_retries=0)
    messages = [{"role": "user", "content": PROMPT}]

    def create() -> str:
        return sync.chat.completions.create(model="gpt-4o-mini", messages=messages).choices[0].message.content or ""

    def stream() -> str:
        chunks = sync.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    def async_create() -> str:
        async def go() -> str:
            async with openai.AsyncOpenAI(base_url=srv.base_url, api_key="sk-contract", max_retries=0) as client:
                reply = await client.chat.completions.create(model="gpt-4o-mini", messages=messages)
                return reply.choices[0].message.content or ""
        return asyncio.run(go())

    def raw() -> str:
        reply = sync.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
        return reply.parse().choices[0].message.content or ""

    def streaming_raw() -> str:
        with sync.chat.completions.with_streaming_response.create(model="gpt-4o-mini", messages=messages,
                                                                  stream=True) as response:
            return "".join(response.iter_lines())

    return {"sync": create, "stream": stream, "async": async_create, "raw": raw, "streaming_raw": streaming_raw}


def _anthropic_calls(srv: Any) -> dict[str, Callable[[], str]]:
    sync = anthropic.Anthropic(base_url=srv.base_url, api_key="sk-ant-contract", max_retries=0)
    args: dict[str, Any] = {"model": "claude-haiku-4-5", "max_tokens": 64,
                            "messages": [{"role": "user", "content": PROMPT}]}

    def text(message: Any) -> str:
        return "".join(getattr(b, "text", "") for b in message.content)

    def stream() -> str:
        return "".join(e.delta.text for e in sync.messages.create(**args, stream=True)
                       if e.type == "content_block_delta" and e.delta.type == "text_delta")

    def async_create() -> str:
        async def go() -> str:
            async with anthropic.AsyncAnthropic(base_url=srv.base_url, api_key="sk-ant-contract",
                                                max_retries=0) as client:
                return text(await client.messages.create(**args))
        return asyncio.run(go())

    def streaming_raw() -> str:
        with sync.messages.with_streaming_response.create(**args, stream=True) as response:
            return "".join(response.iter_lines())

    return {"sync": lambda: text(sync.messages.create(**args)), "stream": stream, "async": async_create,
            "raw": lambda: text(sync.messages.with_raw_response.create(**args).parse()),
            "streaming_raw": streaming_raw}


def _bedrock_calls(srv: Any) -> dict[str, Callable[[], str]]:
    client = boto3.client("bedrock-runtime", endpoint_url=srv.url, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test",
                          config=__import__("botocore.config").config.Config(retries={"total_max_attempts": 1}))
    model = "anthropic.claude-3-haiku-20240307-v1:0"
    messages = [{"role": "user", "content": [{"text": PROMPT}]}]

    def converse() -> str:
        reply = client.converse(modelId=model, messages=messages)
        return "".join(b.get("text", "") for b in reply["output"]["message"]["content"])

    def stream() -> str:
        events = client.converse_stream(modelId=model, messages=messages)["stream"]
        return "".join(e["contentBlockDelta"]["delta"].get("text", "") for e in events if "contentBlockDelta" in e)

    def invoke() -> str:
        body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64,
                           "messages": [{"role": "user", "content": PROMPT}]})
        reply = json.loads(client.invoke_model(modelId=model, body=body)["body"].read())
        return "".join(b.get("text", "") for b in reply.get("content", []))

    return {"sync": converse, "stream": stream, "raw": invoke}


@dataclass(frozen=True)
class Adapter:
    name: str
    server: Callable[[], Any]
    calls: Callable[[Any], dict[str, Callable[[], str]]]
    malformed: dict[str, Any]  # usage objects the provider should never send


ADAPTERS = [
    Adapter("openai", LocalOpenAIServer, _openai_calls, {
        "negative": {"prompt_tokens": -5, "completion_tokens": 3, "total_tokens": -2},
        "non_numeric": {"prompt_tokens": "abc", "completion_tokens": 3, "total_tokens": 3},
        "empty": {},
        "absurd": {"prompt_tokens": 1e30, "completion_tokens": 3, "total_tokens": 1e30},
        "inconsistent": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8,
                         "prompt_tokens_details": {"cached_tokens": 500}},
        "cost_negative": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8, "cost": -5},
        "cost_text": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8, "cost": "abc"},
        "cost_object": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8, "cost": {}},
        "cost_absurd": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8, "cost": 1e30},
    }),
    Adapter("anthropic", LocalAnthropicServer, _anthropic_calls, {
        "negative": {"input_tokens": -5, "output_tokens": 3},
        "non_numeric": {"input_tokens": "abc", "output_tokens": 3},
        "empty": {},
        "absurd": {"input_tokens": 1e30, "output_tokens": 3},
    }),
    Adapter("bedrock", LocalBedrockServer, _bedrock_calls, {
        "negative": {"inputTokens": -5, "outputTokens": 3, "totalTokens": -2},
        "empty": {},
    }),
]
STREAMS = {"stream", "streaming_raw"}


STYLES = {"openai": ("sync", "stream", "async", "raw", "streaming_raw"),
          "anthropic": ("sync", "stream", "async", "raw", "streaming_raw"),
          "bedrock": ("sync", "stream", "raw")}  # converse, converse_stream, invoke_model
BY_NAME = {a.name: a for a in ADAPTERS}
EVERY_STYLE = [pytest.param(name, style, id=f"{name}-{style}") for name, styles in STYLES.items() for style in styles]
SYNC_AND_STREAM = [pytest.param(name, style, id=f"{name}-{style}") for name in STYLES for style in ("sync", "stream")]


@pytest.fixture
def adapter(request: pytest.FixtureRequest) -> Iterator[tuple[Adapter, Any]]:
    spec = BY_NAME[request.node.callspec.params["name"]]
    with spec.server() as srv:
        yield spec, srv


def _settled(g: Guarded) -> dict[str, Any]:
    (settlement,) = [r for r in g.receipts() if r["kind"] == "settlement"]
    (decision,) = [r for r in g.receipts() if r["kind"] == "decision"]
    assert settlement["decision"] == decision["hash"]
    states = g.guard.ledger.states()
    assert all(s.held_nano == 0 for s in states)
    assert {s.spent_nano for s in states} == {settlement["actual_nano"]}
    return settlement


@pytest.mark.parametrize(("name", "style"), EVERY_STYLE)
def test_usage_settles_exactly(adapter: tuple[Adapter, Any], name: str, style: str, guarded: GuardFactory) -> None:
    spec, srv = adapter
    calls = spec.calls(srv)
    g = guarded(POLICY, ledger="memory://")
    assert calls[style]()
    settlement = _settled(g)
    assert (settlement["outcome"], settlement["cost_source"], settlement["degraded"]) == ("ok", "local", False)
    assert 0 < settlement["actual_nano"] <= settlement["estimated_nano"]
    assert len(srv.requests) == 1


@pytest.mark.parametrize(("name", "style"), EVERY_STYLE)
def test_no_usage_never_settles_at_zero(adapter: tuple[Adapter, Any], name: str, style: str,
                                        guarded: GuardFactory) -> None:
    spec, srv = adapter
    calls = spec.calls(srv)
    g = guarded(POLICY, ledger="memory://")
    srv.usage_next(OMIT_USAGE)
    assert calls[style]()  # the caller gets the reply as the server sent it
    settlement = _settled(g)
    assert (settlement["cost_source"], settlement["degraded"], settlement["problem"]) == \
        ("estimated", True, "no usage reported")
    assert 0 < settlement["actual_nano"] <= settlement["estimated_nano"]
    if style not in STREAMS:
        assert settlement["actual_nano"] == settlement["estimated_nano"]


def _malformed_cases() -> list[Any]:
    return [pytest.param(spec.name, kind, value, id=f"{spec.name}-{kind}")
            for spec in ADAPTERS for kind, value in spec.malformed.items()]


@pytest.mark.parametrize(("name", "kind", "value"), _malformed_cases())
@pytest.mark.parametrize("style", ["sync", "stream"])
def test_malformed_usage_settles_at_the_reservation_and_never_raises(
        name: str, kind: str, value: Any, style: str, guarded: GuardFactory, otel: Telemetry) -> None:
    spec = BY_NAME[name]
    with spec.server() as srv:
        g = guarded(POLICY, ledger="memory://")
        srv.usage_next(value)
        assert spec.calls(srv)[style]()
        settlement = _settled(g)
    assert (settlement["cost_source"], settlement["degraded"]) == ("estimated", True)
    assert settlement["actual_nano"] == settlement["estimated_nano"]
    assert settlement["problem"] and settlement["usage"] is None
    (span,) = [s for s in otel.finished() if "agentguard.decision.action" in s.attributes]
    assert span.attributes["agentguard.cost.source"] == "estimated"


@pytest.mark.parametrize(("name", "style"), SYNC_AND_STREAM)
def test_provider_error_quoting_the_prompt_releases_and_leaks_no_text(
        adapter: tuple[Adapter, Any], name: str, style: str, guarded: GuardFactory, otel: Telemetry) -> None:
    spec, srv = adapter
    g = guarded(POLICY, ledger="memory://")
    srv.fail_next(400, message=f"invalid request: {PROMPT}")
    with pytest.raises(Exception) as raised:
        spec.calls(srv)[style]()
    assert PROMPT in str(raised.value)  # the caller gets the provider's error as it was
    settlement = _settled(g)
    assert (settlement["outcome"], settlement["cost_source"], settlement["actual_nano"], settlement["http_status"]) \
        == ("error", "none", 0, 400)
    exported = json.dumps([dict(s.attributes) | {"status": s.status.description} for s in otel.finished()],
                          default=str) + json.dumps(g.receipts()) + json.dumps(
        [str(r.log_record.body) for r in otel.logs.get_finished_logs()])
    assert "Bluebird" not in exported
    (span,) = [s for s in otel.finished() if "agentguard.decision.action" in s.attributes]
    assert span.status.description == f"{settlement['error_type']} (HTTP 400)"


@pytest.mark.parametrize(("name", "style"), SYNC_AND_STREAM)
def test_a_cut_body_settles_at_most_the_reservation_and_never_at_zero(
        adapter: tuple[Adapter, Any], name: str, style: str, guarded: GuardFactory) -> None:
    spec, srv = adapter
    g = guarded(POLICY, ledger="memory://")
    srv.truncate_next()
    try:
        spec.calls(srv)[style]()
    except Exception as exc:  # the SDK reports the cut body its own way
        assert "agentguard" not in type(exc).__module__
    settlement = _settled(g)
    assert settlement["cost_source"] == "estimated"
    assert 0 < settlement["actual_nano"] <= settlement["estimated_nano"]


@pytest.mark.parametrize("name", list(STYLES))
def test_an_abandoned_stream_settles_once_at_its_reservation(adapter: tuple[Adapter, Any], name: str,
                                                             guarded: GuardFactory) -> None:
    """What a stream delivered before it was closed does not bound what it was billed (hidden
    reasoning tokens, a generation that runs on after the client hangs up): the hold is taken whole."""
    spec, srv = adapter
    g = guarded(POLICY, ledger="memory://")
    if spec.name == "openai":
        client = openai.OpenAI(base_url=srv.base_url, api_key="sk", max_retries=0)
        stream: Any = client.chat.completions.create(model="gpt-4o-mini", stream=True,
                                                     messages=[{"role": "user", "content": PROMPT}])
    elif spec.name == "anthropic":
        client = anthropic.Anthropic(base_url=srv.base_url, api_key="sk", max_retries=0)
        stream = client.messages.create(model="claude-haiku-4-5", max_tokens=64, stream=True,
                                        messages=[{"role": "user", "content": PROMPT}])
    else:
        bedrock = boto3.client("bedrock-runtime", endpoint_url=srv.url, region_name="us-east-1",
                               aws_access_key_id="test", aws_secret_access_key="test")
        stream = bedrock.converse_stream(modelId="anthropic.claude-3-haiku-20240307-v1:0",
                                         messages=[{"role": "user", "content": [{"text": PROMPT}]}])["stream"]
    next(iter(stream))
    stream.close()
    settlement = _settled(g)
    assert (settlement["outcome"], settlement["cost_source"]) == ("abandoned", "estimated")
    assert 0 < settlement["actual_nano"] == settlement["estimated_nano"]
