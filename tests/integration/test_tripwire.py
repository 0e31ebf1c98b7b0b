"""The transport tripwire: HTTP sent to a known LLM host outside every SDK. Raw ``httpx`` requests
(sync, async, streaming) on the OpenAI, Anthropic and Bedrock wire formats are guarded through
their adapter — decided, reserved, settled at what the server billed, one span each — while
``requests``, ``urllib`` and ``aiohttp``, which the guard cannot read a body from, are refused as
unknown endpoints. The host names resolve to the local servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import aiohttp
import httpx
import openai
import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.eventstream import EventStreamBuffer
from hypothesis import given
from hypothesis import strategies as st

from agentguard_otel import AgentGuardBlocked, AgentGuardInstrumentor
from agentguard_otel.call import ResponseInfo
from agentguard_otel.pricing import TokenUsage
from agentguard_otel.providers.bedrock import split_events
from agentguard_otel.providers.raw import StainlessTarget, target
from agentguard_otel.providers.stream import BodyObserver
from tests.conftest import Guarded, GuardFactory, Telemetry
from tests.integration.known_hosts import ANTHROPIC_HOST, BEDROCK_HOST, OPENAI_HOST, at, resolve_locally
from tests.servers.anthropic_server import LocalAnthropicServer
from tests.servers.bedrock_server import LocalBedrockServer, encode_event
from tests.servers.openai_server import LocalOpenAIServer

CAP = {"limit_usd": 100, "window": "day", "action": "block"}
ALLOW = {"version": 1, "id": "test", "mode": "enforce", "rules": [{"id": "all", "caps": [CAP]}]}
BLOCK = {"version": 1, "id": "test", "mode": "enforce",
         "rules": [{"id": "tiny", "caps": [{"limit_usd": "0.000000001", "window": "call", "action": "block",
                                            "reason": "test ceiling"}]}]}
CLAMP_5 = {**ALLOW, "rules": [{"id": "all", "caps": [CAP], "max_output_tokens": 5}]}
PROMPT = "Review this diff, please."
CLAUDE_ON_BEDROCK = "us.anthropic.claude-3-5-haiku-20241022-v1:0"
NOVA = "amazon.nova-lite-v1:0"


@pytest.fixture(autouse=True)
def _known_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    resolve_locally(monkeypatch)


@pytest.fixture(scope="module")
def anthropic_server() -> Iterator[LocalAnthropicServer]:
    with LocalAnthropicServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def bedrock_server() -> Iterator[LocalBedrockServer]:
    with LocalBedrockServer() as srv:
        yield srv


@pytest.fixture
def servers(server: LocalOpenAIServer, anthropic_server: LocalAnthropicServer,
            bedrock_server: LocalBedrockServer) -> dict[str, Any]:
    anthropic_server.reset()
    bedrock_server.reset()
    return {"openai": server, "anthropic": anthropic_server, "bedrock": bedrock_server}


def sigv4(url: str, body: bytes) -> dict[str, str]:
    """Headers of a request signed as LiteLLM signs its Bedrock calls (botocore's SigV4Auth, fake creds)."""
    request = AWSRequest(method="POST", url=url, data=body, headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials("AKIDEXAMPLE", "fake-secret"), "bedrock", "us-east-1").add_auth(request)
    return dict(request.headers.items())


# One request per wire format: (URL, headers, body) against the local server of that wire.
def wire_request(wire: str, srv: Any, *, stream: bool, usage: bool = True) -> tuple[str, dict[str, str], bytes]:
    """``usage``: an OpenAI stream asks for its usage chunk itself."""
    if wire == "openai":
        body: dict[str, Any] = {"model": "gpt-4o-mini", "max_tokens": 50,
                                "messages": [{"role": "user", "content": PROMPT}], "stream": stream}
        if stream and usage:
            body["stream_options"] = {"include_usage": True}
        url = f"{at(OPENAI_HOST, srv)}/chat/completions"
        return url, {"authorization": "Bearer sk-test"}, json.dumps(body).encode()
    if wire == "anthropic":
        body = {"model": "claude-haiku-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": PROMPT}],
                "stream": stream}
        return (f"{at(ANTHROPIC_HOST, srv)}/v1/messages",
                {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01", "content-type": "application/json"},
                json.dumps(body).encode())
    operation = "converse-stream" if stream else "converse"
    url = f"{at(BEDROCK_HOST, srv)}/model/{quote(NOVA, safe='')}/{operation}"
    raw = json.dumps({"messages": [{"role": "user", "content": [{"text": PROMPT}]}],
                      "inferenceConfig": {"maxTokens": 100}}).encode()
    return url, sigv4(url, raw), raw


def reported_usage(wire: str, payload: bytes, stream: bool) -> TokenUsage:
    """The usage the server reported, read from what the caller received."""
    if wire == "bedrock":
        usage = next(e["metadata"]["usage"] for e in split_events(payload)[0] if "metadata" in e) if stream \
            else json.loads(payload)["usage"]
        return TokenUsage(input_tokens=usage["inputTokens"], output_tokens=usage["outputTokens"])
    if not stream:
        usage = json.loads(payload)["usage"]
    else:
        events = [json.loads(line[5:]) for line in payload.decode().splitlines()
                  if line.startswith("data:") and line[5:].strip() != "[DONE]"]
        if wire == "openai":
            usage = next(e["usage"] for e in events if e.get("usage"))
        else:
            start = next(e["message"]["usage"] for e in events if e["type"] == "message_start")
            usage = {**start, **next(e["usage"] for e in events if e["type"] == "message_delta")}
    if wire == "openai":
        return TokenUsage(input_tokens=usage["prompt_tokens"], output_tokens=usage["completion_tokens"])
    return TokenUsage(input_tokens=usage["input_tokens"], output_tokens=usage["output_tokens"])


def send_sync(url: str, headers: dict[str, str], body: bytes, stream: bool, http: Any = httpx) -> httpx.Response:
    with http.Client(timeout=10) as client:
        if not stream:
            return client.post(url, headers=headers, content=body)
        with client.stream("POST", url, headers=headers, content=body) as response:
            response.read_bytes = b"".join(response.iter_bytes())  # type: ignore[attr-defined]
            return response


async def send_async(url: str, headers: dict[str, str], body: bytes, stream: bool,
                     http: Any = httpx) -> httpx.Response:
    async with http.AsyncClient(timeout=10) as client:
        if not stream:
            return await client.post(url, headers=headers, content=body)
        async with client.stream("POST", url, headers=headers, content=body) as response:
            response.read_bytes = b"".join([c async for c in response.aiter_bytes()])  # type: ignore[attr-defined]
            return response


def send(mode: str, url: str, headers: dict[str, str], body: bytes, http: Any = httpx) -> tuple[int, bytes]:
    """One request with ``http`` (the ``httpx`` or ``httpx2`` package): sync or async, whole or streamed."""
    stream = mode == "stream" or mode == "async stream"
    if mode.startswith("async"):
        response = asyncio.run(send_async(url, headers, body, stream, http))
    else:
        response = send_sync(url, headers, body, stream, http)
    return response.status_code, response.read_bytes if stream else response.content  # type: ignore[attr-defined]


def receipts(g: Guarded, kind: str) -> list[dict[str, Any]]:
    return [r for r in g.receipts() if r["kind"] == kind]


PRICE_PROVIDERS = {"openai": "openai", "anthropic": "anthropic", "bedrock": "aws"}
WIRES = ["openai", "anthropic", "bedrock"]
MODES = ["sync", "async", "stream", "async stream"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("wire", WIRES)
def test_a_raw_httpx_call_is_guarded_and_settles_at_what_the_server_billed(
        wire: str, mode: str, servers: dict[str, Any], guarded: GuardFactory, otel: Telemetry) -> None:
    g = guarded(ALLOW, ledger="memory://")
    stream = "stream" in mode
    status, payload = send(mode, *wire_request(wire, servers[wire], stream=stream))
    assert status == 200
    assert len(servers[wire].requests) == 1
    (decision,) = receipts(g, "decision")
    (settlement,) = receipts(g, "settlement")
    assert (decision["action"], settlement["outcome"], settlement["cost_source"]) == ("allow", "ok", "local")
    usage = reported_usage(wire, payload, stream)
    assert usage.output_tokens > 0
    assert TokenUsage(**settlement["usage"]) == usage
    price = g.guard.prices.lookup(PRICE_PROVIDERS[wire], decision["model_effective"])
    assert price is not None
    assert settlement["actual_nano"] == g.guard.prices.actual_cost_nano(price, usage) > 0
    assert settlement["actual_nano"] <= decision["estimated_nano"]
    (state,) = g.guard.ledger.states()
    assert (state.held_nano, state.spent_nano) == (0, settlement["actual_nano"])
    assert len(otel.finished()) == 1  # one guard span


@pytest.mark.parametrize("mode", ["sync", "async stream"])
def test_httpx2_is_guarded_the_same(mode: str, servers: dict[str, Any], guarded: GuardFactory,
                                    otel: Telemetry) -> None:
    import httpx2

    g = guarded(ALLOW, ledger="memory://")
    status, payload = send(mode, *wire_request("anthropic", servers["anthropic"], stream="stream" in mode), httpx2)
    assert status == 200
    (settlement,) = receipts(g, "settlement")
    assert settlement["cost_source"] == "local"
    assert TokenUsage(**settlement["usage"]) == reported_usage("anthropic", payload, "stream" in mode)
    assert len(otel.finished()) == 1


def test_httpx2_is_blocked_the_same(servers: dict[str, Any], guarded: GuardFactory) -> None:
    import httpx2

    guarded(BLOCK, ledger="memory://")
    with pytest.raises(AgentGuardBlocked, match="test ceiling"):
        send("async", *wire_request("bedrock", servers["bedrock"], stream=False), httpx2)
    assert servers["bedrock"].requests == []


def test_the_usage_chunk_the_guard_asks_of_an_openai_stream_is_hidden_from_the_caller(
        servers: dict[str, Any], guarded: GuardFactory) -> None:
    g = guarded(ALLOW, ledger="memory://")
    status, payload = send("stream", *wire_request("openai", servers["openai"], stream=True, usage=False))
    assert status == 200
    (seen,) = servers["openai"].requests
    assert seen.body["stream_options"] == {"include_usage": True}
    assert '"usage"' not in payload.decode().replace('"usage": null', "").replace('"usage":null', "")
    (settlement,) = receipts(g, "settlement")
    assert settlement["cost_source"] == "local" and settlement["usage"]["output_tokens"] > 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("wire", WIRES)
def test_a_blocked_raw_call_never_reaches_the_server(wire: str, mode: str, servers: dict[str, Any],
                                                     guarded: GuardFactory, otel: Telemetry) -> None:
    g = guarded(BLOCK, ledger="memory://")
    with pytest.raises(AgentGuardBlocked, match="test ceiling"):
        send(mode, *wire_request(wire, servers[wire], stream="stream" in mode))
    assert servers[wire].requests == []
    assert [d["action"] for d in receipts(g, "decision")] == ["block"]
    assert receipts(g, "settlement") == []
    assert len(otel.finished()) == 1


@pytest.mark.parametrize("wire", ["openai", "anthropic"])
def test_a_clamp_rewrites_an_unsigned_json_body(wire: str, servers: dict[str, Any], guarded: GuardFactory) -> None:
    g = guarded(CLAMP_5, ledger="memory://")
    status, payload = send("sync", *wire_request(wire, servers[wire], stream=False))
    assert status == 200
    (seen,) = servers[wire].requests
    assert seen.body["max_tokens"] == 5
    assert reported_usage(wire, payload, False).output_tokens == 5
    (settlement,) = receipts(g, "settlement")
    assert settlement["usage"]["output_tokens"] == 5


def test_a_signed_bedrock_body_that_needs_a_change_is_refused_with_the_reason(
        servers: dict[str, Any], guarded: GuardFactory) -> None:
    g = guarded(CLAMP_5, ledger="memory://")
    with pytest.raises(AgentGuardBlocked, match=r"signed \(AWS SigV4\), so its body cannot carry the guard's"):
        send("sync", *wire_request("bedrock", servers["bedrock"], stream=False))
    assert servers["bedrock"].requests == []
    (settlement,) = receipts(g, "settlement")
    assert (settlement["outcome"], settlement["actual_nano"]) == ("unsent", 0)
    (state,) = g.guard.ledger.states()
    assert (state.held_nano, state.spent_nano) == (0, 0)


def test_shadow_mode_sends_a_signed_body_unchanged(servers: dict[str, Any], guarded: GuardFactory) -> None:
    g = guarded({**CLAMP_5, "mode": "shadow"}, ledger="memory://")
    status, _ = send("sync", *wire_request("bedrock", servers["bedrock"], stream=False))
    assert status == 200
    (seen,) = servers["bedrock"].requests
    assert seen.body["inferenceConfig"] == {"maxTokens": 100}
    (settlement,) = receipts(g, "settlement")
    assert settlement["outcome"] == "ok" and settlement["usage"]["output_tokens"] == 24


def test_a_downgrade_rewrites_an_unsigned_bedrock_path(servers: dict[str, Any], guarded: GuardFactory) -> None:
    sonnet = "us.anthropic.claude-sonnet-4-20250514-v1:0"
    policy = {"version": 1, "id": "test", "rules": [{"id": "eng", "caps": [
        {"limit_usd": "0.000001", "window": "day", "action": "downgrade", "downgrade_to": CLAUDE_ON_BEDROCK}]}]}
    g = guarded(policy, ledger="memory://")
    srv = servers["bedrock"]
    url = f"{at(BEDROCK_HOST, srv)}/model/{quote(sonnet, safe='')}/invoke"
    body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 100,
                       "messages": [{"role": "user", "content": PROMPT}]}).encode()
    status, _ = send("sync", url, {"authorization": "Bearer bedrock-api-key"}, body)  # a Bedrock API key
    assert status == 200
    (seen,) = srv.requests
    assert seen.model_id == CLAUDE_ON_BEDROCK
    (decision,) = receipts(g, "decision")
    assert (decision["action"], decision["model_requested"], decision["model_effective"]) == (
        "downgrade", sonnet, CLAUDE_ON_BEDROCK)
    (settlement,) = receipts(g, "settlement")
    assert settlement["outcome"] == "ok" and settlement["cost_source"] == "local"


def test_a_bedrock_invoke_stream_settles_at_its_invocation_metrics(servers: dict[str, Any],
                                                                   guarded: GuardFactory) -> None:
    g = guarded(ALLOW, ledger="memory://")
    srv = servers["bedrock"]
    url = f"{at(BEDROCK_HOST, srv)}/model/{quote(CLAUDE_ON_BEDROCK, safe='')}/invoke-with-response-stream"
    raw = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 100,
                      "messages": [{"role": "user", "content": PROMPT}]}).encode()
    status, payload = send("stream", url, sigv4(url, raw), raw)
    assert status == 200
    metrics = json.loads(split_events(payload)[0][-1]["chunk"]["bytes"])["amazon-bedrock-invocationMetrics"]
    (settlement,) = receipts(g, "settlement")
    assert settlement["cost_source"] == "local"
    assert (settlement["usage"]["input_tokens"], settlement["usage"]["output_tokens"]) == (
        metrics["inputTokenCount"], metrics["outputTokenCount"])


def test_a_provider_error_releases_the_hold(servers: dict[str, Any], guarded: GuardFactory) -> None:
    g = guarded(ALLOW, ledger="memory://")
    servers["anthropic"].fail_next(429)
    status, _ = send("sync", *wire_request("anthropic", servers["anthropic"], stream=False))
    assert status == 429
    (settlement,) = receipts(g, "settlement")
    assert (settlement["outcome"], settlement["http_status"], settlement["actual_nano"]) == ("error", 429, 0)
    (state,) = g.guard.ledger.states()
    assert (state.held_nano, state.spent_nano) == (0, 0)


def test_a_body_the_guard_cannot_read_is_an_unknown_endpoint(servers: dict[str, Any], guarded: GuardFactory) -> None:
    guarded(ALLOW, ledger="memory://")
    url, headers, body = wire_request("openai", servers["openai"], stream=False)
    with pytest.raises(AgentGuardBlocked, match="with a body the guard cannot read"), httpx.Client() as client:
        client.post(url, headers=headers, content=iter([body]))
    assert servers["openai"].requests == []


def test_an_unlisted_path_on_a_known_host_is_an_unknown_endpoint_and_reads_pass(
        servers: dict[str, Any], guarded: GuardFactory) -> None:
    g = guarded(ALLOW, ledger="memory://")
    base = at(OPENAI_HOST, servers["openai"])
    with pytest.raises(AgentGuardBlocked, match=r"POST api\.openai\.com/v1/batches sent outside a guarded SDK"):
        httpx.post(f"{base}/batches", json={"input_file_id": "file-1", "endpoint": "/v1/chat/completions"})
    assert httpx.get(f"{base}/models").status_code in (200, 404)  # a read is free, whatever the server says
    assert httpx.post(f"{base}/moderations", json={"input": "hi"}).status_code in (200, 404)  # listed free
    assert [r.path for r in servers["openai"].requests] == ["/v1/models", "/v1/moderations"]
    assert [(d["action"], d["unknown_endpoint"]) for d in receipts(g, "decision")] == [("block", True)]


def test_an_sdk_call_is_guarded_once(servers: dict[str, Any], guarded: GuardFactory, otel: Telemetry) -> None:
    g = guarded(ALLOW, ledger="memory://")
    client = openai.OpenAI(base_url=at(OPENAI_HOST, servers["openai"]), api_key="sk-test", max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}])
    assert len(receipts(g, "decision")) == 1 and len(otel.finished()) == 1


def _unreadable_clients(url: str, body: dict[str, Any]) -> dict[str, Callable[[], Any]]:
    async def with_aiohttp() -> Any:
        async with aiohttp.ClientSession() as session, session.post(url, json=body) as response:
            return await response.read()

    return {
        "requests": lambda: requests.post(url, json=body, timeout=5),
        "urllib": lambda: urllib.request.urlopen(urllib.request.Request(
            url, data=json.dumps(body).encode(), method="POST"), timeout=5),
        "aiohttp": lambda: asyncio.run(with_aiohttp()),
    }


@pytest.mark.parametrize("mode", ["enforce", "shadow"])
@pytest.mark.parametrize("client", ["requests", "urllib", "aiohttp"])
def test_clients_the_guard_cannot_read_refuse_llm_calls_as_unknown_endpoints(
        client: str, mode: str, servers: dict[str, Any], guarded: GuardFactory) -> None:
    g = guarded({**ALLOW, "mode": mode}, ledger="memory://")
    url = f"{at(OPENAI_HOST, servers['openai'])}/chat/completions"
    call = _unreadable_clients(url, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}]})
    if mode == "enforce":
        with pytest.raises(AgentGuardBlocked, match=r"POST api\.openai\.com/v1/chat/completions sent outside a "
                                                    r"guarded SDK is not guarded \(unknown_endpoint: block\)"):
            call[client]()
        assert servers["openai"].requests == []
    else:
        call[client]()  # recorded as degraded, then sent as it is
        assert len(servers["openai"].requests) == 1
    (decision,) = receipts(g, "decision")
    assert (decision["action"], decision["unknown_endpoint"]) == ("block" if mode == "enforce" else "allow", True)


@pytest.mark.parametrize("client", ["requests", "aiohttp"])
def test_a_read_through_those_clients_passes(client: str, servers: dict[str, Any], guarded: GuardFactory) -> None:
    g = guarded(ALLOW, ledger="memory://")
    url = f"{at(OPENAI_HOST, servers['openai'])}/models"

    async def with_aiohttp() -> Any:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return response.status

    if client == "requests":
        requests.get(url, timeout=5)
    else:
        asyncio.run(with_aiohttp())
    assert [r.path for r in servers["openai"].requests] == ["/v1/models"]
    assert receipts(g, "decision") == []


class _Events:
    """A reader that keeps the events it is given."""

    def __init__(self) -> None:
        self.info = ResponseInfo()
        self.complete = False
        self.events: list[Any] = []

    def on_body(self, body: Any) -> None:
        raise AssertionError("an event stream has no whole body")

    def on_event(self, event: str | None, data: Any) -> bool:
        self.events.append(data)
        return False


JSON_VALUES = st.dictionaries(st.text(max_size=6), st.integers() | st.text(max_size=8), max_size=3)


@given(st.lists(st.tuples(st.sampled_from(["chunk", "metadata", "contentBlockDelta"]), JSON_VALUES),
                min_size=1, max_size=6), st.data())
def test_an_event_stream_is_read_as_botocore_reads_it_however_the_network_cuts_it(
        events: list[tuple[str, dict[str, Any]]], data: st.DataObject) -> None:
    def encoded(kind: str, payload: dict[str, Any]) -> bytes:
        body = {"bytes": base64.b64encode(json.dumps(payload).encode()).decode()} if kind == "chunk" else payload
        return encode_event({":event-type": kind, ":message-type": "event", ":content-type": "application/json"},
                            json.dumps(body).encode())

    wire = b"".join(encoded(kind, payload) for kind, payload in events)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    reader = _Events()
    observer = BodyObserver(reader, sse=False, frames=split_events, on_progress=lambda: None,
                            on_end=lambda info, complete: None)
    passed = b"".join(observer.feed(wire[a:b]) for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True))
    assert passed + observer.flush() == wire  # the caller gets every byte, unchanged
    assert reader.info.problem is None
    buffer = EventStreamBuffer()
    buffer.add_data(wire)
    botocore_events = [(m.headers[":event-type"], json.loads(m.payload)) for m in buffer]
    expected = [{kind: {"bytes": base64.b64decode(p["bytes"])} if kind == "chunk" else p}
                for kind, p in botocore_events]
    assert reader.events == expected


@given(st.sampled_from(["", "/v1", "/api/v1", "/proxy/anthropic"]), st.sampled_from(["", "/", "?beta=true"]),
       st.booleans(), st.booleans())
def test_an_llm_path_is_recognised_in_any_spelling(prefix: str, suffix: str, doubled: bool, encoded: bool) -> None:
    path = f"{prefix}/v1/{'%6Dessages' if encoded else 'messages'}"
    if doubled:
        path = path.replace("/", "//")
    found = target("POST", path + suffix)
    assert isinstance(found, StainlessTarget)
    assert (found.adapter.module, found.path) == ("anthropic", "/v1/messages")


WATCHED = [(httpx.Client, "_send_single_request"), (httpx.AsyncClient, "_send_single_request"),
           (httpx.HTTPTransport, "handle_request"), (httpx.AsyncHTTPTransport, "handle_async_request")]


def test_a_watched_method_is_one_object_while_patched_and_the_original_after() -> None:
    """Code that checks by identity that nothing replaced a client's dispatch while it sends (the
    openai SDK's own tests do) sees the same object on every read; uninstrument puts back the very
    function that was there."""
    originals = {(owner, name): vars(owner)[name] for owner, name in WATCHED}
    instrumentor = AgentGuardInstrumentor()
    instrumentor.instrument(policy=None, ledger="memory://")
    try:
        for owner, name in WATCHED:
            assert getattr(owner, name) is getattr(owner, name)
            assert vars(owner)[name] is not originals[(owner, name)]
            assert vars(owner)[name].__wrapped__ is originals[(owner, name)]
    finally:
        instrumentor.uninstrument()
    assert {(owner, name): vars(owner)[name] for owner, name in WATCHED} == originals
