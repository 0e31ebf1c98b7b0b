"""Chat Completions through the real openai SDK: JSON, SSE, parse(), .stream(), raw/streaming responses."""

from __future__ import annotations

from collections.abc import Callable

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from pydantic import BaseModel

from agentguard_otel.demo.server import REPLY_SENTENCE, reply_text
from tests.servers.openai_server import LocalOpenAIServer

from .support import MODEL, USER, USER_PROMPT_TOKENS, async_sdk_client, sdk_client, words


class Answer(BaseModel):
    answer: str


def test_reply_sentence_is_24_words_and_reply_text_cycles() -> None:
    assert reply_text(24) == REPLY_SENTENCE == words(24)
    assert reply_text(26) == REPLY_SENTENCE + " This is"
    assert reply_text(0) == ""


def test_chat_json(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=USER)
    assert completion.object == "chat.completion"
    assert completion.model == MODEL
    assert completion.choices[0].message.content == REPLY_SENTENCE
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (USER_PROMPT_TOKENS, 24, 33)
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 0
    assert "provider" not in (completion.model_extra or {})
    assert "cost" not in (usage.model_extra or {})


def test_prompt_tokens_count_every_text_part_and_message(client: openai.OpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "be brief"},  # 8 bytes -> 2
        {"role": "user", "content": [{"type": "text", "text": "héllo"}, {"type": "text", "text": "x" * 9}]},
    ]  # "héllo" is 6 bytes -> 2, 9 bytes -> 3
    completion = client.chat.completions.create(model=MODEL, messages=messages)
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 2 + 2 + 3 + 3 * 2 + 3


@pytest.mark.parametrize(
    ("max_tokens", "max_completion_tokens", "visible", "finish"),
    [(5, None, 5, "length"), (None, 30, 24, "stop"), (50, 6, 6, "length")],  # max_completion_tokens wins
)
def test_max_tokens_truncates(
    client: openai.OpenAI,
    max_tokens: int | None,
    max_completion_tokens: int | None,
    visible: int,
    finish: str,
) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=max_tokens, max_completion_tokens=max_completion_tokens
    )
    assert completion.choices[0].message.content == words(visible)
    assert completion.choices[0].finish_reason == finish
    assert completion.usage is not None and completion.usage.completion_tokens == visible


@pytest.mark.parametrize(
    ("model", "limit", "visible", "reasoning", "finish"),
    [
        ("gpt-5-mini", None, 24, 8, "stop"),
        ("o4-mini", 10, 2, 8, "length"),
        ("openai/o3", 4, 0, 4, "length"),
        ("openai/gpt-4o", None, 24, 0, "stop"),
    ],
)
def test_reasoning_tokens_count_inside_completion(
    client: openai.OpenAI, model: str, limit: int | None, visible: int, reasoning: int, finish: str
) -> None:
    completion = client.chat.completions.create(model=model, messages=USER, max_completion_tokens=limit)
    assert completion.choices[0].message.content == words(visible)
    assert completion.choices[0].finish_reason == finish
    usage = completion.usage
    assert usage is not None and usage.completion_tokens == visible + reasoning
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == reasoning


@pytest.mark.parametrize(("configured", "reported"), [(5, 5), (100, USER_PROMPT_TOKENS)])
def test_cached_tokens_capped_at_prompt(
    make_server: Callable[..., LocalOpenAIServer], configured: int, reported: int
) -> None:
    with sdk_client(make_server(cached_tokens=configured, reply_words=3)) as sdk:
        completion = sdk.chat.completions.create(model=MODEL, messages=USER)
    assert completion.choices[0].message.content == "This is a"
    assert completion.usage is not None and completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == reported


def test_chat_stream_without_usage(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model=MODEL, messages=USER, stream=True))
    assert len(chunks) == 1 + 24 + 1
    assert all(c.object == "chat.completion.chunk" and c.model == MODEL for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == REPLY_SENTENCE
    assert [c.choices[0].delta.content for c in chunks[1:3]] == ["This", " is"]
    assert [c.choices[0].finish_reason for c in chunks].count("stop") == 1
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None and "usage" not in c.model_fields_set for c in chunks)


def test_chat_stream_with_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=USER, stream=True, stream_options={"include_usage": True}, max_tokens=3
        )
    )
    assert len(chunks) == 1 + 3 + 1 + 1
    assert chunks[-2].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks[:-1])
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert (usage_chunk.usage.prompt_tokens, usage_chunk.usage.completion_tokens) == (USER_PROMPT_TOKENS, 3)
    assert usage_chunk.usage.total_tokens == USER_PROMPT_TOKENS + 3


def test_parse_with_pydantic_model(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(model=MODEL, messages=USER, response_format=Answer)
    assert completion.choices[0].message.parsed == Answer(answer=REPLY_SENTENCE)
    assert completion.usage is not None and completion.usage.completion_tokens == 24


def test_parse_truncated_raises_length_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.LengthFinishReasonError):
        client.chat.completions.parse(model=MODEL, messages=USER, response_format=Answer, max_tokens=2)


def test_stream_helper_with_structured_output(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(
        model=MODEL, messages=USER, response_format=Answer, stream_options={"include_usage": True}
    ) as stream:
        deltas = [event.delta for event in stream if event.type == "content.delta"]
        final = stream.get_final_completion()
    assert "".join(deltas) == '{"answer": "' + REPLY_SENTENCE + '"}'
    assert final.choices[0].message.parsed == Answer(answer=REPLY_SENTENCE)
    assert final.usage is not None and final.usage.total_tokens == USER_PROMPT_TOKENS + 24


def test_with_raw_response(client: openai.OpenAI, local: LocalOpenAIServer) -> None:
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=USER)
    assert raw.status_code == 200
    assert raw.headers["content-type"] == "application/json"
    assert int(raw.headers["content-length"]) == len(raw.http_response.content)
    assert raw.parse().choices[0].message.content == REPLY_SENTENCE


def test_with_streaming_response(client: openai.OpenAI) -> None:
    with client.chat.completions.with_streaming_response.create(model=MODEL, messages=USER) as response:
        assert response.parse().choices[0].message.content == REPLY_SENTENCE
    with client.chat.completions.with_streaming_response.create(
        model=MODEL, messages=USER, stream=True, max_tokens=1
    ) as response:
        assert response.headers["transfer-encoding"] == "chunked"
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert len(lines) == 1 + 1 + 1 + 1
    assert lines[1].startswith("data: {") and '"content":"This"' in lines[1]
    assert lines[-1] == "data: [DONE]"


async def test_async_chat_json_and_stream(local: LocalOpenAIServer) -> None:
    async with async_sdk_client(local) as sdk:
        completion = await sdk.chat.completions.create(model=MODEL, messages=USER)
        stream = await sdk.chat.completions.create(
            model=MODEL, messages=USER, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    assert completion.choices[0].message.content == REPLY_SENTENCE
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY_SENTENCE
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 24


async def test_async_parse(local: LocalOpenAIServer) -> None:
    async with async_sdk_client(local) as sdk:
        completion = await sdk.chat.completions.parse(model=MODEL, messages=USER, response_format=Answer)
    assert completion.choices[0].message.parsed == Answer(answer=REPLY_SENTENCE)


def test_invalid_max_tokens_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=USER, max_tokens=0)
    assert raised.value.param == "max_tokens"


def test_missing_messages_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=[])
    assert raised.value.body == {
        "message": "'messages' must be a non-empty array of message objects.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": None,
    }
