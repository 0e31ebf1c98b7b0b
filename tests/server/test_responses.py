"""Responses API through the real openai SDK: create, parse, the raw event stream and responses.stream()."""

from __future__ import annotations

import openai
import pytest
from openai.types.responses import (
    ResponseCompletedEvent,
    ResponseCreatedEvent,
    ResponseIncompleteEvent,
    ResponseOutputMessage,
)
from pydantic import BaseModel

from agentguard_otel.demo.server import REPLY_SENTENCE
from tests.servers.openai_server import LocalOpenAIServer

from .support import MODEL, async_sdk_client, words

# input "hello": ceil(5/4) + 3 (one message) + 3; instructions "be brief": ceil(8/4)
HELLO_TOKENS = 8
INSTRUCTIONS_TOKENS = 2

EVENT_SEQUENCE = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    *["response.output_text.delta"] * 24,
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


class Answer(BaseModel):
    answer: str


def test_create(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="hello", instructions="be brief")
    assert response.object == "response"
    assert response.status == "completed"
    assert response.incomplete_details is None
    assert response.model == MODEL
    assert response.instructions == "be brief"
    assert response.output_text == REPLY_SENTENCE
    [message] = response.output
    assert message.type == "message" and message.status == "completed" and message.role == "assistant"
    usage = response.usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (
        HELLO_TOKENS + INSTRUCTIONS_TOKENS,
        24,
        HELLO_TOKENS + INSTRUCTIONS_TOKENS + 24,
    )
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0


def test_input_items_each_count_as_a_message(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL,
        input=[
            {"role": "user", "content": "hello"},  # 2
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "x" * 12}]},  # 3
        ],
    )
    assert response.usage is not None and response.usage.input_tokens == 2 + 3 + 3 * 2 + 3


def test_max_output_tokens_makes_it_incomplete(client: openai.OpenAI) -> None:
    response = client.responses.create(model="gpt-5-nano", input="hello", max_output_tokens=11)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == words(3)
    [message] = response.output
    assert isinstance(message, ResponseOutputMessage) and message.status == "incomplete"
    assert response.usage is not None
    assert response.usage.output_tokens == 11
    assert response.usage.output_tokens_details.reasoning_tokens == 8


def test_parse_with_text_format(client: openai.OpenAI) -> None:
    response = client.responses.parse(model=MODEL, input="hello", text_format=Answer)
    assert response.output_parsed == Answer(answer=REPLY_SENTENCE)


def test_raw_event_stream_sequence(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model=MODEL, input="hello", stream=True))
    assert [event.type for event in events] == EVENT_SEQUENCE
    assert [event.sequence_number for event in events] == list(range(len(EVENT_SEQUENCE)))
    created, completed = events[0], events[-1]
    assert isinstance(created, ResponseCreatedEvent) and isinstance(completed, ResponseCompletedEvent)
    assert created.response.status == "in_progress" and created.response.usage is None
    assert completed.response.id == created.response.id
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == REPLY_SENTENCE
    assert completed.response.usage is not None and completed.response.usage.output_tokens == 24


def test_stream_helper_final_response(client: openai.OpenAI) -> None:
    with client.responses.stream(model=MODEL, input="hello", instructions="be brief") as stream:
        snapshots = [event.snapshot for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert snapshots[0] == "This" and snapshots[-1] == REPLY_SENTENCE
    assert final.output_text == REPLY_SENTENCE
    assert final.usage is not None
    assert (final.usage.input_tokens, final.usage.output_tokens) == (HELLO_TOKENS + INSTRUCTIONS_TOKENS, 24)


def test_truncated_stream_ends_with_response_incomplete(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model=MODEL, input="hello", stream=True, max_output_tokens=2))
    assert [e.type for e in events][-2:] == ["response.output_item.done", "response.incomplete"]
    assert isinstance(events[-1], ResponseIncompleteEvent)
    final = events[-1].response
    assert final.status == "incomplete" and final.output_text == words(2)
    assert final.usage is not None and final.usage.output_tokens == 2
    with (
        client.responses.stream(model=MODEL, input="hello", max_output_tokens=2) as stream,
        pytest.raises(RuntimeError, match=r"response\.completed"),
    ):
        stream.get_final_response()  # the SDK's own behaviour against the real API


async def test_async_stream_helper(local: LocalOpenAIServer) -> None:
    async with async_sdk_client(local) as sdk:
        created = await sdk.responses.create(model=MODEL, input="hello")
        async with sdk.responses.stream(model=MODEL, input="hello") as stream:
            final = await stream.get_final_response()
    assert created.output_text == final.output_text == REPLY_SENTENCE
    assert final.usage is not None and final.usage.total_tokens == HELLO_TOKENS + 24
