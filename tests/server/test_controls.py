"""The response-shape controls every test server shares (``usage_next``, ``truncate_next``,
``fail_next`` with a message), for the three wire formats, as the real SDKs see them: ``openai``
(JSON and SSE), ``anthropic`` (JSON and SSE) and ``boto3`` (JSON and binary event streams)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import boto3
import botocore.exceptions
import httpx2
import openai
import pytest
import urllib3.exceptions
from botocore.config import Config

from agentguard_otel.demo.server import REPLY_SENTENCE, count_prompt_tokens
from tests.servers.anthropic_server import LocalAnthropicServer
from tests.servers.base import OMIT_USAGE
from tests.servers.bedrock_server import LocalBedrockServer
from tests.servers.openai_server import LocalOpenAIServer

from .support import MODEL, USER, USER_PROMPT_TOKENS

PROMPT = "hello world"
MALFORMED = {"input_tokens": -3, "output_tokens": 1e30, "note": "not a count"}
INCLUDE_USAGE: Any = {"include_usage": True}


# openai -----------------------------------------------------------------------------------------


def test_openai_omitted_usage(client: openai.OpenAI, local: LocalOpenAIServer) -> None:
    local.usage_next(OMIT_USAGE, count=4)
    assert client.chat.completions.create(model=MODEL, messages=USER).usage is None
    chunks = list(client.chat.completions.create(model=MODEL, messages=USER, stream=True,
                                                 stream_options=INCLUDE_USAGE))
    assert len(chunks) == 1 + 24 + 1  # no usage chunk, although the request asked for one
    assert all(c.usage is None and c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == REPLY_SENTENCE
    assert client.responses.create(model=MODEL, input=PROMPT).usage is None
    with client.responses.stream(model=MODEL, input=PROMPT) as stream:
        assert stream.get_final_response().usage is None
    usage = client.chat.completions.create(model=MODEL, messages=USER).usage  # the count is used up
    assert usage is not None and usage.prompt_tokens == USER_PROMPT_TOKENS


def test_openai_malformed_usage_is_sent_verbatim(client: openai.OpenAI, local: LocalOpenAIServer) -> None:
    local.usage_next({"prompt_tokens": -5, "completion_tokens": "many", "total_tokens": 1e30})
    usage = client.chat.completions.create(model=MODEL, messages=USER).usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (-5, "many", 1e30)
    local.usage_next("garbage")
    chunks = list(client.chat.completions.create(model=MODEL, messages=USER, stream=True,
                                                 stream_options=INCLUDE_USAGE))
    assert chunks[-1].choices == [] and chunks[-1].usage == "garbage"
    local.usage_next({})
    embedded = client.embeddings.create(model="text-embedding-3-small", input=PROMPT)
    assert embedded.usage.model_fields_set == set() and embedded.usage.prompt_tokens is None


def test_openai_usage_next_waits_for_a_reply_that_reports_usage(client: openai.OpenAI,
                                                               local: LocalOpenAIServer) -> None:
    local.usage_next(OMIT_USAGE)
    local.fail_next(500)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model=MODEL, messages=USER)
    assert len(list(client.chat.completions.create(model=MODEL, messages=USER, stream=True))) == 26  # no usage asked
    assert client.chat.completions.create(model=MODEL, messages=USER).usage is None


def test_openai_truncated_json_and_stream(client: openai.OpenAI, local: LocalOpenAIServer) -> None:
    local.truncate_next(count=2)
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model=MODEL, messages=USER)
    received: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in client.chat.completions.create(model=MODEL, messages=USER, stream=True):
            received.append(chunk.choices[0].delta.content or "")
    assert received and REPLY_SENTENCE.startswith("".join(received)) and "".join(received) != REPLY_SENTENCE
    assert client.chat.completions.create(model=MODEL, messages=USER).choices[0].message.content == REPLY_SENTENCE
    assert local.connections_accepted == 3  # each truncation hung up


def test_openai_failure_message_quotes_the_prompt(client: openai.OpenAI, local: LocalOpenAIServer) -> None:
    local.fail_next(400, message=f"This model refuses {PROMPT!r}.", code="content_filter")
    with pytest.raises(openai.BadRequestError) as raised:
        list(client.chat.completions.create(model=MODEL, messages=USER, stream=True))
    assert raised.value.message == "Error code: 400 - This model refuses 'hello world'."
    assert raised.value.body == {"message": "This model refuses 'hello world'.", "type": "invalid_request_error",
                                 "param": None, "code": "content_filter"}


# anthropic --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def claude_server() -> Iterator[LocalAnthropicServer]:
    with LocalAnthropicServer() as server:
        yield server


@pytest.fixture
def claude(claude_server: LocalAnthropicServer) -> Iterator[anthropic.Anthropic]:
    claude_server.reset()
    with anthropic.Anthropic(base_url=claude_server.base_url, api_key="sk-ant-test", max_retries=0) as sdk:
        yield sdk


def _message(sdk: anthropic.Anthropic, **kwargs: Any) -> Any:
    return sdk.messages.create(model="claude-haiku-4-5", max_tokens=100, messages=USER, **kwargs)


def _usage_events(sdk: anthropic.Anthropic) -> list[tuple[str, Any]]:
    """(type, usage) of the stream's message_start and message_delta events, as the SDK parsed them."""
    return [(e.type, e.message.usage if e.type == "message_start" else e.usage)
            for e in _message(sdk, stream=True) if e.type in ("message_start", "message_delta")]


def test_anthropic_omitted_usage(claude: anthropic.Anthropic, claude_server: LocalAnthropicServer) -> None:
    claude_server.usage_next(OMIT_USAGE, count=2)
    message = _message(claude)
    assert message.usage is None and "usage" not in message.model_fields_set
    assert _usage_events(claude) == [("message_start", None), ("message_delta", None)]
    start, delta = _usage_events(claude)
    assert (start[1].input_tokens, start[1].output_tokens, delta[1].output_tokens) == (USER_PROMPT_TOKENS, 1, 24)


def test_anthropic_malformed_usage_is_sent_verbatim(claude: anthropic.Anthropic,
                                                    claude_server: LocalAnthropicServer) -> None:
    claude_server.usage_next(MALFORMED)
    usage = _message(claude).usage
    assert (usage.input_tokens, usage.output_tokens, (usage.model_extra or {})["note"]) == (-3, 1e30, "not a count")
    claude_server.usage_next("x")
    assert _usage_events(claude) == [("message_start", "x"), ("message_delta", "x")]
    assert _message(claude, stream=False).usage.input_tokens == USER_PROMPT_TOKENS
    claude.messages.count_tokens(model="claude-haiku-4-5", messages=USER)  # no usage: leaves a pending one
    claude_server.usage_next(-1)
    claude.messages.count_tokens(model="claude-haiku-4-5", messages=USER)
    assert _message(claude).usage == -1


def test_anthropic_truncated_json_and_stream(claude: anthropic.Anthropic,
                                             claude_server: LocalAnthropicServer) -> None:
    claude_server.truncate_next(count=2)
    with pytest.raises(anthropic.APIConnectionError):
        _message(claude)
    types: list[str] = []
    with pytest.raises((anthropic.APIConnectionError, httpx2.RemoteProtocolError)):
        for event in _message(claude, stream=True):
            types.append(event.type)
    assert types[:2] == ["message_start", "content_block_start"] and "message_stop" not in types
    assert _message(claude).content[0].text == REPLY_SENTENCE


def test_anthropic_failure_message_quotes_the_prompt(claude: anthropic.Anthropic,
                                                     claude_server: LocalAnthropicServer) -> None:
    claude_server.fail_next(529, message=f"Overloaded while reading {PROMPT!r}")
    claude_server.fail_next(400, message="no", code="billing_error")
    with pytest.raises(anthropic.OverloadedError) as overloaded:
        _message(claude, stream=True)
    assert overloaded.value.body == {"type": "error", "error": {"type": "overloaded_error",
                                                                "message": "Overloaded while reading 'hello world'"}}
    with pytest.raises(anthropic.BadRequestError) as bad:
        _message(claude)
    assert bad.value.body == {"type": "error", "error": {"type": "billing_error", "message": "no"}}


# bedrock (boto3) --------------------------------------------------------------------------------

MESSAGES = [{"role": "user", "content": [{"text": PROMPT}]}]
CLAUDE = "anthropic.claude-3-haiku-20240307-v1:0"
CLAUDE_BODY = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 100, "messages": USER})
TOKEN_HEADERS = ("x-amzn-bedrock-input-token-count", "x-amzn-bedrock-output-token-count")


@pytest.fixture(scope="module")
def bedrock_server() -> Iterator[LocalBedrockServer]:
    with LocalBedrockServer() as server:
        yield server


@pytest.fixture
def bedrock(bedrock_server: LocalBedrockServer) -> Any:
    bedrock_server.reset()
    return boto3.client("bedrock-runtime", region_name="us-east-1", endpoint_url=bedrock_server.url,
                        aws_access_key_id="test", aws_secret_access_key="test",
                        config=Config(retries={"total_max_attempts": 1}))


def _token_headers(response: Any) -> dict[str, str]:
    headers = response["ResponseMetadata"]["HTTPHeaders"]
    return {name: headers[name] for name in TOKEN_HEADERS if name in headers}


def _last_chunk(response: Any) -> Any:
    return json.loads([e["chunk"]["bytes"] for e in response["body"]][-1])


def test_bedrock_omitted_usage(bedrock: Any, bedrock_server: LocalBedrockServer) -> None:
    bedrock_server.usage_next(OMIT_USAGE, count=4)
    converse = bedrock.converse(modelId=CLAUDE, messages=MESSAGES)
    assert "usage" not in converse and converse["output"]["message"]["content"][0]["text"] == REPLY_SENTENCE
    events = list(bedrock.converse_stream(modelId=CLAUDE, messages=MESSAGES)["stream"])
    assert events[-1] == {"metadata": {"metrics": {"latencyMs": 1}}}
    invoked = bedrock.invoke_model(modelId=CLAUDE, body=CLAUDE_BODY)
    assert "usage" not in json.loads(invoked["body"].read()) and _token_headers(invoked) == {}
    last = _last_chunk(bedrock.invoke_model_with_response_stream(modelId=CLAUDE, body=CLAUDE_BODY))
    assert last == {"type": "message_stop"}  # no amazon-bedrock-invocationMetrics
    prompt = count_prompt_tokens([PROMPT], 1)
    assert _token_headers(bedrock.invoke_model(modelId=CLAUDE, body=CLAUDE_BODY)) == {
        TOKEN_HEADERS[0]: str(prompt), TOKEN_HEADERS[1]: "24"}


def test_bedrock_malformed_usage(bedrock: Any, bedrock_server: LocalBedrockServer) -> None:
    bedrock_server.usage_next({"inputTokens": -1, "outputTokens": 1e30, "totalTokens": 0})
    usage = bedrock.converse(modelId=CLAUDE, messages=MESSAGES)["usage"]
    assert usage == {"inputTokens": -1, "outputTokens": int(1e30), "totalTokens": 0}  # botocore makes them ints
    bedrock_server.usage_next({"inputTokens": "many"})
    with pytest.raises(ValueError):  # botocore's parser cannot read a string count
        bedrock.converse(modelId=CLAUDE, messages=MESSAGES)
    bedrock_server.usage_next("1e30")
    invoked = bedrock.invoke_model(modelId=CLAUDE, body=CLAUDE_BODY)
    assert json.loads(invoked["body"].read())["usage"] == "1e30"
    assert _token_headers(invoked) == {TOKEN_HEADERS[0]: '"1e30"', TOKEN_HEADERS[1]: '"1e30"'}
    bedrock_server.usage_next([])
    last = _last_chunk(bedrock.invoke_model_with_response_stream(modelId=CLAUDE, body=CLAUDE_BODY))
    assert last == {"type": "message_stop", "amazon-bedrock-invocationMetrics": []}


def test_bedrock_truncated_json_and_streams(bedrock: Any, bedrock_server: LocalBedrockServer) -> None:
    bedrock_server.truncate_next(count=3)
    # botocore reads half a JSON body without complaint (no Content-Length check) and parses nothing from it
    converse = bedrock.converse(modelId=CLAUDE, messages=MESSAGES)
    assert "output" not in converse and "usage" not in converse
    stream = bedrock.converse_stream(modelId=CLAUDE, messages=MESSAGES)["stream"]
    events: list[Any] = []
    with pytest.raises(urllib3.exceptions.ProtocolError):
        for event in stream:
            events.append(event)
    assert events[0] == {"messageStart": {"role": "assistant"}} and "metadata" not in events[-1]
    invoked = bedrock.invoke_model(modelId=CLAUDE, body=CLAUDE_BODY)
    with pytest.raises(botocore.exceptions.ResponseStreamingError):
        invoked["body"].read()
    assert bedrock.converse(modelId=CLAUDE, messages=MESSAGES)["usage"]["outputTokens"] == 24


def test_bedrock_failure_message_quotes_the_prompt(bedrock: Any, bedrock_server: LocalBedrockServer) -> None:
    bedrock_server.fail_next(400, message=f"Input {PROMPT!r} is not allowed")
    bedrock_server.fail_next(503, code="ModelNotReadyException")
    with pytest.raises(botocore.exceptions.ClientError) as validation:
        bedrock.converse(modelId=CLAUDE, messages=MESSAGES)
    assert validation.value.response["Error"] == {"Code": "ValidationException",
                                                  "Message": "Input 'hello world' is not allowed"}
    with pytest.raises(botocore.exceptions.ClientError) as not_ready:
        bedrock.converse_stream(modelId=CLAUDE, messages=MESSAGES)
    assert not_ready.value.response["Error"]["Code"] == "ModelNotReadyException"
    assert len(bedrock_server.requests) == 2 and bedrock_server.requests[0].model_id == CLAUDE


# the controls themselves ------------------------------------------------------------------------


def test_controls_validate_and_reset_forgets_them(local: LocalOpenAIServer, client: openai.OpenAI) -> None:
    with pytest.raises(ValueError):
        local.usage_next({}, count=0)
    with pytest.raises(ValueError):
        local.truncate_next(count=0)
    with pytest.raises(TypeError):
        local.usage_next({"tokens": object()})  # not a JSON value
    local.usage_next(OMIT_USAGE)
    local.truncate_next()
    local.fail_next(500)
    local.cut_stream_after(1)
    local.reset()
    assert len(list(client.chat.completions.create(model=MODEL, messages=USER, stream=True,
                                                   stream_options=INCLUDE_USAGE))) == 27
