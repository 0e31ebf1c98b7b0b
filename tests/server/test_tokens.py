"""Token accounting: the documented formula, and never above the strict reservation bound."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentguard_otel.demo.server import count_prompt_tokens, text_tokens
from tests.servers.openai_server import LocalOpenAIServer, is_reasoning_model

texts = st.text(max_size=60)
contents = st.one_of(texts, st.lists(texts.map(lambda t: {"type": "text", "text": t}), max_size=3))
messages = st.lists(st.fixed_dictionaries({"role": st.just("user"), "content": contents}), min_size=1, max_size=5)


def strict_bound(utf8_bytes: int, message_count: int) -> int:
    return utf8_bytes + 8 * message_count + 16


def message_texts(msgs: list[dict[str, Any]]) -> list[str]:
    found: list[str] = []
    for message in msgs:
        content = message["content"]
        found += [content] if isinstance(content, str) else [part["text"] for part in content]
    return found


@pytest.fixture(scope="module")
def connection() -> Iterator[http.client.HTTPConnection]:
    with LocalOpenAIServer() as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        yield conn
        conn.close()


@pytest.mark.parametrize(("text", "tokens"), [("", 0), ("a", 1), ("abcd", 1), ("abcde", 2), ("é" * 4, 2)])
def test_text_tokens(text: str, tokens: int) -> None:
    assert text_tokens(text) == tokens


@pytest.mark.parametrize(
    ("model", "reasoning"),
    [("gpt-5", True), ("openai/gpt-5-mini", True), ("o3", True), ("openai/o4-mini", True), ("gpt-4o", False)],
)
def test_reasoning_models(model: str, reasoning: bool) -> None:
    assert is_reasoning_model(model) is reasoning


@given(st.lists(texts, max_size=8), st.integers(min_value=0, max_value=50))
def test_formula_never_exceeds_strict_bound(parts: list[str], message_count: int) -> None:
    utf8_bytes = sum(len(t.encode()) for t in parts)
    tokens = count_prompt_tokens(parts, message_count)
    assert tokens == sum(-(-len(t.encode()) // 4) for t in parts) + 3 * message_count + 3
    assert tokens <= strict_bound(utf8_bytes, message_count)


@settings(max_examples=60, deadline=None)
@given(messages)
def test_served_prompt_tokens_follow_formula(
    connection: http.client.HTTPConnection, msgs: list[dict[str, object]]
) -> None:
    connection.request(
        "POST",
        "/v1/chat/completions",
        json.dumps({"model": "gpt-4o", "messages": msgs}),
        {"Content-Type": "application/json"},
    )
    usage = json.loads(connection.getresponse().read())["usage"]
    found = message_texts(msgs)
    assert usage["prompt_tokens"] == count_prompt_tokens(found, len(msgs))
    assert usage["prompt_tokens"] <= strict_bound(sum(len(t.encode()) for t in found), len(msgs))
