"""The package's own endpoint for ``agentguard demo`` (and the openrouter_team example's offline run):
chat completions as JSON and SSE with usage, the documented token accounting, OpenRouter mode and
``python -m agentguard_otel.demo.server``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx2
import openai
import pytest

import agentguard_otel
from agentguard_otel.demo.routing import local_openrouter_client
from agentguard_otel.demo.server import REPLY_SENTENCE, DemoServer, _DemoHTTPServer, reply_text

from .support import API_KEY, MODEL, USER, USER_PROMPT_TOKENS


@pytest.fixture(scope="module")
def demo() -> Iterator[DemoServer]:
    with DemoServer() as server:
        yield server


@pytest.fixture
def client(demo: DemoServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=demo.base_url, api_key=API_KEY, max_retries=0) as sdk:
        yield sdk


def test_reply_text_cycles_the_sentence() -> None:
    assert reply_text(24) == REPLY_SENTENCE
    assert reply_text(26) == REPLY_SENTENCE + " This is"
    assert reply_text(0) == ""


def test_chat_json(client: openai.OpenAI, demo: DemoServer) -> None:
    assert demo.base_url == f"http://127.0.0.1:{demo.port}/v1"
    completion = client.chat.completions.create(model=MODEL, messages=USER)
    assert (completion.object, completion.model) == ("chat.completion", MODEL)
    assert completion.choices[0].message.content == REPLY_SENTENCE
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (USER_PROMPT_TOKENS, 24)
    assert completion.usage.total_tokens == USER_PROMPT_TOKENS + 24


def test_max_tokens_caps_the_reply(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=3)
    assert completion.choices[0].message.content == "This is a"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 3


def test_stream_with_and_without_usage_on_one_connection(client: openai.OpenAI) -> None:
    plain = list(client.chat.completions.create(model=MODEL, messages=USER, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in plain) == REPLY_SENTENCE
    assert len(plain) == 1 + 24 + 1 and all(c.usage is None for c in plain)
    assert plain[-1].choices[0].finish_reason == "stop"
    counted = list(client.chat.completions.create(model=MODEL, messages=USER, stream=True,
                                                  stream_options={"include_usage": True}))
    assert len(counted) == len(plain) + 1 and counted[-1].choices == []
    assert counted[-1].usage is not None
    assert (counted[-1].usage.prompt_tokens, counted[-1].usage.completion_tokens) == (USER_PROMPT_TOKENS, 24)
    assert client.chat.completions.create(model=MODEL, messages=USER).choices  # the connection is still usable


def test_other_requests_are_openai_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.models.list()
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input="x")
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[])


def test_openrouter_mode_reports_cost_at_the_default_price() -> None:
    with DemoServer(openrouter=True) as server:
        assert server.base_url.endswith("/api/v1")
        completion = local_openrouter_client(server.base_url).chat.completions.create(model="openai/gpt-5",
                                                                                      messages=USER)
    assert completion.usage is not None
    cost = (completion.usage.model_extra or {})["cost"]
    assert Decimal(repr(cost)) == Decimal("0.000105")  # 9 * 1 + 24 * 4 USD per million tokens


def test_constructor_validates() -> None:
    with pytest.raises(ValueError):
        DemoServer(reply_words=-1)
    server = DemoServer()
    with pytest.raises(RuntimeError):
        _ = server.base_url


def test_main_serves_until_interrupted() -> None:
    src = str(Path(agentguard_otel.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(
        [sys.executable, "-m", "agentguard_otel.demo.server", "--port", "0", "--openrouter", "--reply-words", "2"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/api/v1")
        reply = httpx2.post(f"{base_url}/chat/completions", json={"model": "m", "messages": USER}, timeout=5).json()
        assert reply["choices"][0]["message"]["content"] == "This is"
        assert "cost" in reply["usage"]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        process.wait()


def test_a_client_hanging_up_is_not_reported_other_errors_are(capsys: pytest.CaptureFixture[str]) -> None:
    http_server = _DemoHTTPServer(("127.0.0.1", 0), DemoServer())
    try:
        for error, reported in ((ConnectionResetError(104, "Connection reset by peer"), False),
                                (BrokenPipeError(32, "Broken pipe"), False), (ValueError("a bug"), True)):
            try:
                raise error
            except Exception:
                http_server.handle_error(None, ("127.0.0.1", 1))
            assert (type(error).__name__ in capsys.readouterr().err) is reported, error
    finally:
        http_server.server_close()
