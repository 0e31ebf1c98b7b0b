"""Embeddings, legacy completions and error answers of the local server."""

from __future__ import annotations

import http.client
import json
import socket
import struct
from typing import Any

import openai
import pytest

from tests.servers.openai_server import LocalOpenAIServer, embedding_vector

from .support import async_sdk_client, words

EMBEDDING_MODEL = "text-embedding-3-small"
LEGACY_MODEL = "gpt-3.5-turbo-instruct"


def post_raw(server: LocalOpenAIServer, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_embedding_vector_is_exact_in_float32() -> None:
    vector = embedding_vector("hello", 16)
    assert len(vector) == 16
    assert list(struct.unpack("<16f", struct.pack("<16f", *vector))) == vector
    assert all(-0.5 <= v < 0.5 and (v * 256).is_integer() for v in vector)
    assert embedding_vector("hello", 16) == vector != embedding_vector("hellp", 16)


def test_embeddings_default_base64_matches_float(client: openai.OpenAI, local: LocalOpenAIServer) -> None:
    default = client.embeddings.create(model=EMBEDDING_MODEL, input=["a", "hello world"])
    floats = client.embeddings.create(model=EMBEDDING_MODEL, input=["a", "hello world"], encoding_format="float")
    assert local.requests[0].body is not None and local.requests[0].body["encoding_format"] == "base64"
    assert [d.embedding for d in default.data] == [d.embedding for d in floats.data]
    assert [d.embedding for d in floats.data] == [embedding_vector("a"), embedding_vector("hello world")]
    assert [d.index for d in default.data] == [0, 1]
    assert default.model == EMBEDDING_MODEL and default.object == "list"
    assert (default.usage.prompt_tokens, default.usage.total_tokens) == (1 + 3, 1 + 3)


def test_embeddings_dimensions_and_token_arrays(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model=EMBEDDING_MODEL, input=[[1, 2, 3], [4]], dimensions=3)
    assert [d.embedding for d in result.data] == [embedding_vector("1,2,3", 3), embedding_vector("4", 3)]
    assert result.usage.prompt_tokens == 4
    single = client.embeddings.create(model=EMBEDDING_MODEL, input=[7, 8], encoding_format="float")
    assert [d.embedding for d in single.data] == [embedding_vector("7,8")]


async def test_async_embeddings(local: LocalOpenAIServer) -> None:
    async with async_sdk_client(local) as sdk:
        result = await sdk.embeddings.create(model=EMBEDDING_MODEL, input="hello")
    assert result.data[0].embedding == embedding_vector("hello")


def test_legacy_completion_defaults_to_16_tokens(client: openai.OpenAI) -> None:
    completion = client.completions.create(model=LEGACY_MODEL, prompt="say hi")
    assert completion.object == "text_completion"
    assert completion.choices[0].text == words(16)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (2 + 3, 16)


def test_legacy_completion_stream_with_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.completions.create(
            model=LEGACY_MODEL,
            prompt=["say", "hi"],
            max_tokens=30,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == words(24)
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (1 + 1 + 3, 24)


def test_unknown_path_is_openai_404(client: openai.OpenAI, local: LocalOpenAIServer) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        client.models.list()
    assert raised.value.body == {
        "message": "Invalid URL (GET /v1/models)",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    assert [(r.method, r.path) for r in local.requests] == [("GET", "/v1/models")]


def test_both_base_paths_are_served(local: LocalOpenAIServer) -> None:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    assert post_raw(local, "/api/v1/chat/completions", body)[0] == 200
    assert post_raw(local, "/v1/chat/completions?x=1", body)[0] == 200
    assert post_raw(local, "/v2/chat/completions", body)[0] == 404


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b'{"model": "m", "messages": "hi"}', "messages"),
    ],
)
def test_bad_requests_are_openai_400s(local: LocalOpenAIServer, body: bytes, param: str | None) -> None:
    status, payload = post_raw(local, "/v1/chat/completions", body)
    assert status == 400
    assert payload["error"]["type"] == "invalid_request_error"
    assert payload["error"]["param"] == param


def test_unframed_request_body_is_refused_and_connection_closed(local: LocalOpenAIServer) -> None:
    with socket.create_connection(("127.0.0.1", local.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
        )
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 411 ") and b"Connection: close" in head
    assert json.loads(body)["error"]["type"] == "invalid_request_error"
    assert local.requests == []
