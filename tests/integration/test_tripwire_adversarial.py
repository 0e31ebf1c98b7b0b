"""Adversarial review of the transport tripwire: every way found for a request to a known LLM host to
leave unrecorded or unbounded, each with the request it takes, against the local servers (the
known host names resolve to 127.0.0.1)."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import aiohttp
import boto3
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentguard_otel import AgentGuardBlocked
from agentguard_otel.providers.raw import StainlessTarget, target
from agentguard_otel.providers.tripwire import guarded_host, header_host
from tests.conftest import Guarded, GuardFactory, Telemetry
from tests.integration.known_hosts import ANTHROPIC_HOST, BEDROCK_HOST, KNOWN_HOSTS, OPENAI_HOST, at, resolve_locally
from tests.servers.base import OMIT_USAGE
from tests.servers.bedrock_server import LocalBedrockServer
from tests.servers.openai_server import LocalOpenAIServer

CAP = {"limit_usd": 100, "window": "day", "action": "block"}
ALLOW = {"version": 1, "id": "test", "mode": "enforce", "rules": [{"id": "all", "caps": [CAP]}]}
BLOCK = {"version": 1, "id": "test", "mode": "enforce",
         "rules": [{"id": "tiny", "caps": [{"limit_usd": "0.000000001", "window": "call", "action": "block",
                                            "reason": "test ceiling"}]}]}
MESSAGES = [{"role": "user", "content": "Review this diff, please."}]
CHAT = {"model": "gpt-4o-mini", "max_tokens": 50, "messages": MESSAGES}
UNKNOWN = r"sent outside a guarded SDK is not guarded \(unknown_endpoint: block\)"


@pytest.fixture(autouse=True)
def _known_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    resolve_locally(monkeypatch)


def receipts(g: Guarded, kind: str) -> list[dict[str, Any]]:
    return [r for r in g.receipts() if r["kind"] == kind]


def chat_url(server: LocalOpenAIServer, host: str = OPENAI_HOST) -> str:
    return f"{at(host, server)}/chat/completions"


@pytest.fixture
def redirector(server: LocalOpenAIServer) -> Iterator[str]:
    """A host no one watches (127.0.0.1) that answers every request with a 307 to the OpenAI chat URL."""
    location = chat_url(server)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(307)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/anything"
    httpd.shutdown()
    httpd.server_close()


# --- httpx: what reaches the wire after Client.send looked at the request ---

# httpx replays a redirected body as a stream, which the guard does not read: an unknown endpoint
REDIRECTED = rf"POST {OPENAI_HOST}/v1/chat/completions with a body the guard cannot read, {UNKNOWN}"


def test_a_redirect_from_an_unwatched_host_to_an_llm_host_is_refused(
        server: LocalOpenAIServer, redirector: str, guarded: GuardFactory) -> None:
    guarded(ALLOW, ledger="memory://")
    with pytest.raises(AgentGuardBlocked, match=REDIRECTED), httpx.Client(follow_redirects=True) as client:
        client.post(redirector, json=CHAT)
    assert server.requests == []


def test_an_async_redirect_to_an_llm_host_is_refused(server: LocalOpenAIServer, redirector: str,
                                                     guarded: GuardFactory) -> None:
    guarded(ALLOW, ledger="memory://")

    async def call() -> None:
        async with httpx.AsyncClient(follow_redirects=True) as client:
            await client.post(redirector, json=CHAT)

    with pytest.raises(AgentGuardBlocked, match=REDIRECTED):
        asyncio.run(call())
    assert server.requests == []


def test_a_request_hook_that_changes_the_body_is_seen_by_the_guard(server: LocalOpenAIServer,
                                                                   guarded: GuardFactory) -> None:
    g = guarded(ALLOW, ledger="memory://")

    def dearer(request: httpx.Request) -> None:  # runs after Client.send was called
        body = {**json.loads(request.content), "model": "gpt-4o", "max_tokens": 400}
        request.stream = httpx.ByteStream(json.dumps(body).encode())
        request._content = json.dumps(body).encode()
        request.headers["content-length"] = str(len(request._content))

    with httpx.Client(event_hooks={"request": [dearer]}) as client:
        assert client.post(chat_url(server), json=CHAT).status_code == 200
    (seen,) = server.requests
    assert seen.body is not None and seen.body["model"] == "gpt-4o"
    (decision,) = receipts(g, "decision")
    assert decision["model_requested"] == "gpt-4o"
    assert receipts(g, "settlement")[0]["usage"]["output_tokens"] > 0


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_transport_called_directly_is_guarded(mode: str, server: LocalOpenAIServer, guarded: GuardFactory) -> None:
    guarded(BLOCK, ledger="memory://")
    request = httpx.Request("POST", chat_url(server), json=CHAT)

    async def call() -> None:
        async with httpx.AsyncHTTPTransport() as transport:
            await transport.handle_async_request(request)

    with pytest.raises(AgentGuardBlocked, match="test ceiling"):
        if mode == "sync":
            with httpx.HTTPTransport() as transport:
                transport.handle_request(request)
        else:
            asyncio.run(call())
    assert server.requests == []


def test_an_ip_literal_with_the_llm_host_in_its_host_header_is_guarded(
        server: LocalOpenAIServer, guarded: GuardFactory) -> None:
    guarded(BLOCK, ledger="memory://")
    with pytest.raises(AgentGuardBlocked, match="test ceiling"):
        httpx.post(f"http://127.0.0.1:{server.port}/v1/chat/completions", json=CHAT,
                   headers={"Host": f"{OPENAI_HOST}:{server.port}"})
    assert server.requests == []


# --- http.client: the host the request names, not the socket it is written to ---

def _dead_port() -> int:
    """A local port nothing listens on: a request that reaches the network fails to connect."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_http_client_with_the_llm_host_in_its_host_header_is_refused(server: LocalOpenAIServer,
                                                                     guarded: GuardFactory) -> None:
    g = guarded(ALLOW, ledger="memory://")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    with pytest.raises(AgentGuardBlocked, match=rf"POST {OPENAI_HOST}/v1/chat/completions {UNKNOWN}"):
        conn.request("POST", "/v1/chat/completions", json.dumps(CHAT), headers={"Host": OPENAI_HOST})
    conn.close()
    assert server.requests == []
    assert [d["unknown_endpoint"] for d in receipts(g, "decision")] == [True]


def test_in_shadow_mode_a_host_header_request_is_recorded_once_and_sent(server: LocalOpenAIServer,
                                                                       guarded: GuardFactory) -> None:
    g = guarded({**ALLOW, "mode": "shadow"}, ledger="memory://")
    for host in (OPENAI_HOST, "127.0.0.1"):  # the connection's own host, then another in its Host header
        conn = http.client.HTTPConnection(host, server.port, timeout=5)
        conn.request("POST", "/v1/chat/completions", json.dumps(CHAT), headers={"Host": OPENAI_HOST})
        assert conn.getresponse().read()
        conn.close()
    assert len(server.requests) == 2
    assert [(d["action"], d["unknown_endpoint"]) for d in receipts(g, "decision")] == [("allow", True)] * 2


def test_aiohttp_to_an_ip_literal_with_the_llm_host_in_its_host_header_is_refused(
        server: LocalOpenAIServer, guarded: GuardFactory) -> None:
    guarded(ALLOW, ledger="memory://")

    async def call() -> None:
        async with aiohttp.ClientSession() as session, session.post(
                f"http://127.0.0.1:{server.port}/v1/chat/completions", json=CHAT,
                headers={"Host": OPENAI_HOST}) as response:
            await response.read()

    with pytest.raises(AgentGuardBlocked, match=rf"POST {OPENAI_HOST}/v1/chat/completions {UNKNOWN}"):
        asyncio.run(call())
    assert server.requests == []


def test_http_client_through_a_connect_tunnel_is_refused(guarded: GuardFactory) -> None:
    guarded(ALLOW, ledger="memory://")
    conn = http.client.HTTPConnection("127.0.0.1", _dead_port(), timeout=5)  # the proxy
    conn.set_tunnel(OPENAI_HOST, 443)
    with pytest.raises(AgentGuardBlocked, match=rf"POST {OPENAI_HOST}/v1/chat/completions {UNKNOWN}"):
        conn.request("POST", "/v1/chat/completions", json.dumps(CHAT))
    conn.close()


# --- aiohttp ---

def test_aiohttp_with_a_base_url_is_refused(server: LocalOpenAIServer, guarded: GuardFactory) -> None:
    guarded(ALLOW, ledger="memory://")

    async def call() -> None:
        async with aiohttp.ClientSession(base_url=f"http://{OPENAI_HOST}:{server.port}") as session, \
                session.post("/v1/chat/completions", json=CHAT) as response:
            await response.read()

    with pytest.raises(AgentGuardBlocked, match=UNKNOWN):
        asyncio.run(call())
    assert server.requests == []


def test_an_aiohttp_websocket_to_an_llm_host_is_refused(server: LocalOpenAIServer, guarded: GuardFactory) -> None:
    g = guarded(ALLOW, ledger="memory://")

    async def call() -> None:
        async with aiohttp.ClientSession() as session, \
                session.ws_connect(f"ws://{OPENAI_HOST}:{server.port}/v1/realtime?model=gpt-realtime"):
            pass

    with pytest.raises(AgentGuardBlocked, match=rf"WEBSOCKET {OPENAI_HOST}/v1/realtime {UNKNOWN}"):
        asyncio.run(call())
    assert server.requests == []
    assert [d["unknown_endpoint"] for d in receipts(g, "decision")] == [True]


# --- bodies the guard must bound or refuse ---

def test_duplicate_keys_are_a_body_the_guard_cannot_read(server: LocalOpenAIServer, guarded: GuardFactory) -> None:
    guarded(ALLOW, ledger="memory://")
    body = b'{"model": "gpt-4o-mini", "model": "gpt-4o", "max_tokens": 50, "messages": ' + \
        json.dumps(MESSAGES).encode() + b"}"
    with pytest.raises(AgentGuardBlocked, match="with a body the guard cannot read"):
        httpx.post(chat_url(server), content=body, headers={"content-type": "application/json"})
    assert server.requests == []


@pytest.mark.parametrize("limit", [1000.0, "1000", True, 1e400, 10**40])
def test_an_output_limit_that_is_not_an_integer_is_refused(limit: Any, server: LocalOpenAIServer,
                                                           guarded: GuardFactory) -> None:
    guarded(ALLOW, ledger="memory://")
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi", "max_tokens": limit}  # default: 16
    with pytest.raises(AgentGuardBlocked, match="with a body the guard cannot read"):
        httpx.post(f"{at(OPENAI_HOST, server)}/completions", content=json.dumps(body).encode())
    assert server.requests == []


@pytest.mark.parametrize("field", ["max_tokens", "n"])
def test_the_largest_counts_the_guard_reads_are_bounded_in_integers(field: str, server: LocalOpenAIServer,
                                                                    guarded: GuardFactory) -> None:
    g = guarded(ALLOW, ledger="memory://")
    body = {**CHAT, "max_tokens": 2**24, "n": 2**10}
    with pytest.raises(AgentGuardBlocked, match="with a body the guard cannot read"):
        httpx.post(chat_url(server), json={**body, field: body[field] + 1})
    with pytest.raises(AgentGuardBlocked, match="day cap of rule all reached"):  # a bound far over it
        httpx.post(chat_url(server), json=body)
    assert server.requests == []
    decision = receipts(g, "decision")[-1]
    assert decision["action"] == "block"
    assert isinstance(decision["estimated_nano"], int) and decision["estimated_nano"] > 100 * 10**9


# --- after the provider answered: settled, never raised into the caller ---

def test_a_response_without_usage_settles_at_the_reservation(server: LocalOpenAIServer,
                                                             guarded: GuardFactory) -> None:
    g = guarded(ALLOW, ledger="memory://")
    server.usage_next(OMIT_USAGE)
    response = httpx.post(chat_url(server), json=CHAT)
    assert response.status_code == 200 and "usage" not in response.json()
    (decision,) = receipts(g, "decision")
    (settlement,) = receipts(g, "settlement")
    assert settlement["cost_source"] == "estimated"
    assert settlement["actual_nano"] == decision["estimated_nano"] > 0
    (state,) = g.guard.ledger.states()
    assert (state.held_nano, state.spent_nano) == (0, decision["estimated_nano"])


def test_a_cut_stream_settles_and_raises_only_the_transport_error(server: LocalOpenAIServer,
                                                                  guarded: GuardFactory) -> None:
    g = guarded(ALLOW, ledger="memory://")
    server.cut_stream_after(2)
    with pytest.raises(httpx.RemoteProtocolError), httpx.Client() as client, \
            client.stream("POST", chat_url(server), json={**CHAT, "stream": True}) as response:
        for _ in response.iter_bytes():
            pass
    (settlement,) = receipts(g, "settlement")
    assert settlement["actual_nano"] > 0
    (state,) = g.guard.ledger.states()
    assert (state.held_nano, state.spent_nano) == (0, settlement["actual_nano"])


def test_a_body_that_is_not_json_reaches_the_caller_unchanged(server: LocalOpenAIServer,
                                                             guarded: GuardFactory) -> None:
    g = guarded(ALLOW, ledger="memory://")
    server.truncate_next()
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(chat_url(server), json=CHAT)
    (decision,) = receipts(g, "decision")
    (settlement,) = receipts(g, "settlement")
    assert settlement["actual_nano"] == decision["estimated_nano"]
    (state,) = g.guard.ledger.states()
    assert (state.held_nano, state.spent_nano) == (0, decision["estimated_nano"])


def test_concurrent_raw_calls_each_get_one_decision_and_one_settlement(
        server: LocalOpenAIServer, guarded: GuardFactory, otel: Telemetry) -> None:
    g = guarded(ALLOW, ledger="memory://")
    with httpx.Client() as client, ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: client.post(chat_url(server), json=CHAT).status_code, range(24)))
    assert statuses == [200] * 24
    assert len(server.requests) == 24
    settlements = receipts(g, "settlement")
    assert len(receipts(g, "decision")) == len(settlements) == 24
    (state,) = g.guard.ledger.states()
    assert (state.held_nano, state.spent_nano) == (0, sum(s["actual_nano"] for s in settlements))
    assert len(otel.finished()) == 24


def test_an_aiohttp_redirect_from_an_unwatched_host_to_an_llm_host_is_refused(
        server: LocalOpenAIServer, redirector: str, guarded: GuardFactory) -> None:
    guarded(ALLOW, ledger="memory://")

    async def call() -> None:
        async with aiohttp.ClientSession() as session, session.post(redirector, json=CHAT) as response:
            await response.read()

    with pytest.raises(AgentGuardBlocked, match=rf"POST {OPENAI_HOST}/v1/chat/completions {UNKNOWN}"):
        asyncio.run(call())
    assert server.requests == []


def _pool_manager(url: str) -> Any:
    import urllib3

    return urllib3.PoolManager().request("POST", url, body=json.dumps(CHAT).encode())


def _mounted_session(url: str) -> Any:
    import requests

    with requests.Session() as session:
        session.mount("http://", requests.adapters.HTTPAdapter(max_retries=0, pool_connections=1))
        return session.post(url, json=CHAT, timeout=5)


@pytest.mark.parametrize("send", [_pool_manager, _mounted_session])
def test_urllib3_and_a_requests_session_with_adapters_are_refused(send: Any, server: LocalOpenAIServer,
                                                                  guarded: GuardFactory) -> None:
    guarded(ALLOW, ledger="memory://")
    with pytest.raises(AgentGuardBlocked, match=rf"POST {OPENAI_HOST}/v1/chat/completions {UNKNOWN}"):
        send(chat_url(server))
    assert server.requests == []


def test_a_stream_closed_unread_settles_and_frees_its_hold(server: LocalOpenAIServer, guarded: GuardFactory) -> None:
    g = guarded(ALLOW, ledger="memory://")
    with httpx.Client() as client:
        response = client.send(client.build_request("POST", chat_url(server), json={**CHAT, "stream": True}),
                               stream=True)
        response.close()
    assert len(server.requests) == 1
    (settlement,) = receipts(g, "settlement")
    (state,) = g.guard.ledger.states()
    assert (state.held_nano, state.spent_nano) == (0, settlement["actual_nano"])
    assert settlement["actual_nano"] > 0


def test_concurrent_async_raw_calls_each_settle_once(server: LocalOpenAIServer, guarded: GuardFactory) -> None:
    g = guarded(ALLOW, ledger="memory://")

    async def calls() -> list[int]:
        async with httpx.AsyncClient() as client:
            responses = await asyncio.gather(*(client.post(chat_url(server), json=CHAT) for _ in range(16)))
        return [r.status_code for r in responses]

    assert asyncio.run(calls()) == [200] * 16
    settlements = receipts(g, "settlement")
    assert len(receipts(g, "decision")) == len(settlements) == len(server.requests) == 16
    (state,) = g.guard.ledger.states()
    assert (state.held_nano, state.spent_nano) == (0, sum(s["actual_nano"] for s in settlements))


def test_an_async_sdk_call_is_guarded_once(server: LocalOpenAIServer, guarded: GuardFactory, otel: Telemetry) -> None:
    import openai

    g = guarded(ALLOW, ledger="memory://")

    async def call() -> None:
        async with openai.AsyncOpenAI(base_url=at(OPENAI_HOST, server), api_key="sk-test", max_retries=0) as client:
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]

    asyncio.run(call())
    assert len(server.requests) == 1
    assert len(receipts(g, "decision")) == len(receipts(g, "settlement")) == 1
    assert len(otel.finished()) == 1


@pytest.fixture(scope="module")
def bedrock_server() -> Iterator[LocalBedrockServer]:
    with LocalBedrockServer() as srv:
        yield srv


TITAN = "amazon.titan-text-express-v1"  # without a limit, the model generates up to 512 tokens


@pytest.mark.parametrize("limit", [4096.0, "4096", 10**40])
def test_a_bedrock_output_limit_that_is_not_an_integer_is_refused(limit: Any, bedrock_server: LocalBedrockServer,
                                                                  guarded: GuardFactory) -> None:
    guarded(ALLOW, ledger="memory://")
    bedrock_server.reset()
    body = {"inputText": "Say hi", "textGenerationConfig": {"maxTokenCount": limit}}
    with pytest.raises(AgentGuardBlocked, match="with a body the guard cannot read"):
        httpx.post(f"{at(BEDROCK_HOST, bedrock_server)}/model/{TITAN}/invoke", json=body,
                   headers={"authorization": "Bearer bedrock-api-key"})
    c = boto3.client("bedrock-runtime", region_name="us-east-1", endpoint_url=bedrock_server.url,
                     aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="fake-secret")
    with pytest.raises(AgentGuardBlocked, match="InvokeModel without a readable model id or output limit"):
        c.invoke_model(modelId=TITAN, body=json.dumps(body))
    with pytest.raises(AgentGuardBlocked, match="Converse without a readable model id or output limit"):
        c.converse(modelId="amazon.nova-lite-v1:0", messages=[{"role": "user", "content": [{"text": "hi"}]}],
                   inferenceConfig={"maxTokens": 10**40})
    assert bedrock_server.requests == []


def test_httpx_through_a_proxy_is_guarded_by_the_url_it_asks_for(server: LocalOpenAIServer,
                                                                 guarded: GuardFactory) -> None:
    g = guarded(BLOCK, ledger="memory://")
    with pytest.raises(AgentGuardBlocked, match="test ceiling"), \
            httpx.Client(proxy=f"http://127.0.0.1:{_dead_port()}") as client:
        client.post(chat_url(server), json=CHAT)
    assert [d["action"] for d in receipts(g, "decision")] == ["block"]


def test_a_request_that_never_reaches_its_proxy_releases_its_hold(guarded: GuardFactory,
                                                                  server: LocalOpenAIServer) -> None:
    g = guarded(ALLOW, ledger="memory://")
    with pytest.raises(httpx.ConnectError), httpx.Client(proxy=f"http://127.0.0.1:{_dead_port()}") as client:
        client.post(chat_url(server), json=CHAT)
    (settlement,) = receipts(g, "settlement")
    assert (settlement["outcome"], settlement["actual_nano"]) == ("error", 0)  # never connected: nothing billed
    (state,) = g.guard.ledger.states()
    assert (state.held_nano, state.spent_nano) == (0, 0)


@pytest.mark.parametrize("body", [
    {"content": json.dumps(CHAT).encode(), "headers": {"content-encoding": "gzip"}},
    {"files": {"file": ("a.json", json.dumps(CHAT).encode())}},
    {"data": {"model": "gpt-4o-mini", "max_tokens": "50"}},
    {"json": [CHAT]},
    {"content": b"\xff\xfe not json"},
], ids=["compressed", "multipart", "form", "json-list", "bytes"])
def test_a_body_that_is_not_one_json_object_is_refused(body: dict[str, Any], server: LocalOpenAIServer,
                                                       guarded: GuardFactory) -> None:
    guarded(ALLOW, ledger="memory://")
    with pytest.raises(AgentGuardBlocked, match="with a body the guard cannot read"):
        httpx.post(chat_url(server), **body)
    assert server.requests == []


@pytest.mark.parametrize("usage", [
    {"prompt_tokens": 10**30, "completion_tokens": 10**30, "total_tokens": 2 * 10**30},
    {"prompt_tokens": -5, "completion_tokens": -7, "total_tokens": -12},
    {"prompt_tokens": 1.5, "completion_tokens": "9", "total_tokens": None},
], ids=["huge", "negative", "not-integers"])
def test_a_usage_no_call_has_never_raises_into_the_caller(usage: dict[str, Any], server: LocalOpenAIServer,
                                                          guarded: GuardFactory) -> None:
    g = guarded(ALLOW, ledger="memory://")
    server.usage_next(usage)
    response = httpx.post(chat_url(server), json=CHAT)
    assert response.status_code == 200 and response.json()["usage"] == usage
    (decision,) = receipts(g, "decision")
    (settlement,) = receipts(g, "settlement")
    # not believed: settled at the reservation, degraded
    assert (settlement["cost_source"], settlement["degraded"]) == ("estimated", True)
    assert settlement["actual_nano"] == decision["estimated_nano"] > 0
    (state,) = g.guard.ledger.states()
    assert (state.held_nano, state.spent_nano) == (0, settlement["actual_nano"])


@pytest.fixture
def anthropic_erroring_stream() -> Iterator[str]:
    """An Anthropic Messages URL whose stream starts, then reports an ``overloaded_error`` event and ends."""
    events = [("message_start", {"type": "message_start", "message": {
                  "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5", "content": [],
                  "usage": {"input_tokens": 12, "output_tokens": 1}}}),
              ("content_block_start", {"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "text", "text": ""}}),
              ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                       "delta": {"type": "text_delta", "text": "Hel"}}),
              ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})]
    payload = b"".join(f"event: {e}\ndata: {json.dumps(d)}\n\n".encode() for e, d in events)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://{ANTHROPIC_HOST}:{httpd.server_address[1]}/v1/messages"
    httpd.shutdown()
    httpd.server_close()


def test_an_error_event_mid_stream_reaches_the_caller_and_the_call_settles(
        anthropic_erroring_stream: str, guarded: GuardFactory) -> None:
    g = guarded(ALLOW, ledger="memory://")
    body = {"model": "claude-haiku-4-5", "max_tokens": 100, "messages": MESSAGES, "stream": True}
    with httpx.Client() as client, client.stream("POST", anthropic_erroring_stream, json=body,
                                                 headers={"x-api-key": "sk-ant-test"}) as response:
        received = b"".join(response.iter_bytes())
    assert b"overloaded_error" in received
    (decision,) = receipts(g, "decision")
    (settlement,) = receipts(g, "settlement")
    assert 0 < settlement["actual_nano"] <= decision["estimated_nano"]
    (state,) = g.guard.ledger.states()
    assert (state.held_nano, state.spent_nano) == (0, settlement["actual_nano"])


class _AlsoAsksAnthropic(httpx.BaseTransport):
    """A transport that, while carrying an SDK's request, sends a request of its own to another LLM host."""

    def __init__(self, anthropic_url: str) -> None:
        self._inner = httpx.HTTPTransport()
        self._url = anthropic_url

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = {"model": "claude-haiku-4-5", "max_tokens": 100, "messages": MESSAGES}
        httpx.post(self._url, json=body, headers={"x-api-key": "sk-ant-test"})
        return self._inner.handle_request(request)


def test_a_request_a_transport_sends_while_carrying_an_sdk_call_is_guarded_on_its_own(
        server: LocalOpenAIServer, anthropic_erroring_stream: str, guarded: GuardFactory) -> None:
    import openai

    g = guarded(ALLOW, ledger="memory://")
    client = openai.OpenAI(base_url=at(OPENAI_HOST, server), api_key="sk-test", max_retries=0,
                           http_client=httpx.Client(transport=_AlsoAsksAnthropic(anthropic_erroring_stream)))
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    assert len(server.requests) == 1
    assert sorted(d["model_requested"] for d in receipts(g, "decision")) == ["claude-haiku-4-5", "gpt-4o-mini"]
    assert len(receipts(g, "settlement")) == 2


# --- the spellings, as properties ---

def _spelled(text: str, encode: list[bool]) -> str:
    return "".join(f"%{ord(c):02X}" if enc and c != "/" else c for c, enc in zip(text, encode, strict=False)) \
        + text[len(encode):]


@given(st.sampled_from(["/v1/chat/completions", "/v1/messages", "/v1/responses", "/v1/embeddings"]),
       st.lists(st.booleans(), max_size=24), st.lists(st.sampled_from(["", "/.", "/", "/x/.."]), min_size=1,
                                                       max_size=4), st.sampled_from(["", "/", "?a=1", "?a=/x"]))
def test_an_llm_path_in_any_spelling_a_server_resolves_is_priced(path: str, encode: list[bool],
                                                                 detours: list[str], query: str) -> None:
    head, _, last = path.rpartition("/")
    spelled = _spelled(head, encode) + "".join(detours) + "/" + _spelled(last, encode[::-1]) + query
    assert isinstance(target("POST", spelled), StainlessTarget)


@given(st.sampled_from(["/v1/chat/completions", "/v1/messages", "/model/m/converse", "/v1/responses"]),
       st.text(alphabet=";,:*!~$&'()+= \t%", min_size=1, max_size=4))
def test_an_llm_path_with_anything_after_it_is_never_free(path: str, tail: str) -> None:
    assert target("POST", path + tail) is not None


@given(st.sampled_from(sorted(KNOWN_HOSTS)), st.lists(st.booleans(), max_size=40), st.booleans(),
       st.none() | st.integers(1, 65535))
def test_a_known_host_in_any_spelling_of_its_host_header_is_watched(host: str, upper: list[bool], dot: bool,
                                                                    port: int | None) -> None:
    name = "".join(c.upper() if up else c for c, up in zip(host, upper, strict=False)) + host[len(upper):]
    value = name + ("." if dot else "") + (f":{port}" if port else "")
    assert guarded_host(header_host(value), ())
    assert guarded_host(header_host(value.encode()), ())
