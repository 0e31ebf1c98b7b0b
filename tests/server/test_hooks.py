"""Test hooks (fail_next, cut_stream_after), request recording, keep-alive and the server lifecycle."""

from __future__ import annotations

import http.client
import json
import time

import openai
import pytest

from agentguard_otel.demo.server import REPLY_SENTENCE
from tests.servers.base import RecordedRequest
from tests.servers.openai_server import LocalOpenAIServer

from .support import API_KEY, MODEL, USER, async_sdk_client, sdk_client


@pytest.mark.parametrize(
    ("status", "error", "error_type", "code"),
    [
        (429, openai.RateLimitError, "rate_limit_error", "rate_limit_exceeded"),
        (500, openai.InternalServerError, "server_error", None),
        (503, openai.InternalServerError, "server_error", None),
        (400, openai.BadRequestError, "invalid_request_error", None),
    ],
)
def test_fail_next_raises_sdk_errors(
    client: openai.OpenAI,
    local: LocalOpenAIServer,
    status: int,
    error: type[openai.APIStatusError],
    error_type: str,
    code: str | None,
) -> None:
    local.fail_next(status, message="boom")
    with pytest.raises(error) as raised:
        client.chat.completions.create(model=MODEL, messages=USER)
    assert raised.value.status_code == status
    assert raised.value.body == {"message": "boom", "type": error_type, "param": None, "code": code}
    retry_headers = {k: v for k, v in raised.value.response.headers.items() if k.startswith("retry-after")}
    assert retry_headers == ({} if status == 400 else {"retry-after": "0", "retry-after-ms": "1"})
    assert client.chat.completions.create(model=MODEL, messages=USER).choices[0].message.content == REPLY_SENTENCE


def test_fail_next_counts_only_llm_requests(client: openai.OpenAI, local: LocalOpenAIServer) -> None:
    local.fail_next(429, count=2)
    with pytest.raises(openai.NotFoundError):
        client.models.list()  # not an LLM call: does not consume a failure
    with pytest.raises(openai.RateLimitError):
        client.embeddings.create(model="text-embedding-3-small", input="x")
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model=MODEL, input="x")
    assert client.responses.create(model=MODEL, input="x").status == "completed"


def test_sdk_retries_through_injected_failures_fast(local: LocalOpenAIServer) -> None:
    local.fail_next(429, count=2)
    started = time.monotonic()
    with sdk_client(local, max_retries=2) as sdk:
        completion = sdk.chat.completions.create(model=MODEL, messages=USER)
    assert time.monotonic() - started < 1.0  # retry-after-ms: 1, not the SDK's 0.5 s backoff
    assert completion.choices[0].message.content == REPLY_SENTENCE
    assert len(local.requests) == 3


def test_fail_next_rejects_non_error_status(local: LocalOpenAIServer) -> None:
    with pytest.raises(ValueError):
        local.fail_next(200)
    with pytest.raises(ValueError):
        local.fail_next(500, count=0)
    with pytest.raises(ValueError):
        local.cut_stream_after(-1)


def test_cut_chat_stream_raises_in_sdk(client: openai.OpenAI, local: LocalOpenAIServer) -> None:
    local.cut_stream_after(3)
    assert client.chat.completions.create(model=MODEL, messages=USER).choices  # JSON replies are not cut
    received = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in client.chat.completions.create(model=MODEL, messages=USER, stream=True):
            received.append(chunk.choices[0].delta.content)
    assert received == ["", "This", " is"]
    assert len(list(client.chat.completions.create(model=MODEL, messages=USER, stream=True))) == 26


def test_cut_responses_stream_raises_in_stream_helper(client: openai.OpenAI, local: LocalOpenAIServer) -> None:
    local.cut_stream_after(5)
    types = []
    with (
        pytest.raises(openai.APIConnectionError),
        client.responses.stream(model=MODEL, input="hello") as stream,
    ):
        for event in stream:
            types.append(event.type)
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]


async def test_cut_async_stream(local: LocalOpenAIServer) -> None:
    local.cut_stream_after(0)
    async with async_sdk_client(local) as sdk:
        stream = await sdk.chat.completions.create(model=MODEL, messages=USER, stream=True)
        with pytest.raises(openai.APIConnectionError):
            [chunk async for chunk in stream]


def test_requests_recorded_without_credentials(client: openai.OpenAI, local: LocalOpenAIServer) -> None:
    client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=7, extra_headers={"api-key": "secret2", "x-trace": "t1"}
    )
    [recorded] = local.requests
    assert isinstance(recorded, RecordedRequest)
    assert (recorded.method, recorded.path) == ("POST", "/v1/chat/completions")
    assert recorded.body == {"model": MODEL, "messages": USER, "max_tokens": 7}
    assert recorded.headers["x-trace"] == "t1"
    assert recorded.headers["content-type"] == "application/json"
    assert "authorization" not in recorded.headers and "api-key" not in recorded.headers
    assert all(API_KEY not in value and "secret2" not in value for value in recorded.headers.values())
    snapshot = local.requests
    snapshot.clear()
    assert len(local.requests) == 1  # a snapshot, not the live list
    local.reset()
    assert local.requests == []


def test_keep_alive_reuses_one_connection(client: openai.OpenAI, local: LocalOpenAIServer) -> None:
    for _ in range(3):
        client.chat.completions.create(model=MODEL, messages=USER)
    assert local.connections_accepted == 1


async def test_connection_reused_after_a_chunked_stream(local: LocalOpenAIServer) -> None:
    async with async_sdk_client(local) as sdk:
        stream = await sdk.chat.completions.create(model=MODEL, messages=USER, stream=True)
        assert len([chunk async for chunk in stream]) == 26
        async with sdk.responses.stream(model=MODEL, input="hello") as responses:
            await responses.get_final_response()
        await sdk.chat.completions.create(model=MODEL, messages=USER)
    assert local.connections_accepted == 1


def test_raw_http11_chunked_framing_and_reuse(local: LocalOpenAIServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", local.port, timeout=5)
    body = json.dumps({"model": MODEL, "messages": USER, "stream": True, "max_tokens": 1})
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    stream = conn.getresponse()
    assert stream.getheader("Transfer-Encoding") == "chunked" and stream.getheader("Content-Length") is None
    events = stream.read().decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    conn.request("POST", "/v1/embeddings", json.dumps({"model": "e", "input": "x"}))
    plain = conn.getresponse()
    assert int(plain.getheader("Content-Length") or 0) == len(plain.read())
    conn.close()
    assert local.connections_accepted == 1


def test_lifecycle(local: LocalOpenAIServer) -> None:
    server = LocalOpenAIServer()
    with pytest.raises(RuntimeError):
        _ = server.base_url
    with server:
        assert server.base_url == f"http://127.0.0.1:{server.port}/v1" and server.port > 0
        with pytest.raises(RuntimeError):
            server.start()
        with sdk_client(server) as sdk:
            sdk.chat.completions.create(model=MODEL, messages=USER)
            server.stop()
            with pytest.raises(openai.APIConnectionError):  # the kept-alive connection is gone too
                sdk.chat.completions.create(model=MODEL, messages=USER)
    server.stop()  # idempotent


def test_constructor_validates() -> None:
    with pytest.raises(ValueError):
        LocalOpenAIServer(reply_words=-1)
