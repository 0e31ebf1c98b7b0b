"""The real ``boto3`` client against the local Bedrock Runtime server, guarded end to end: every
operation and model family reaches the choke point, blocked calls never reach the server, and
settlement is exact. Dummy credentials: the AWS account is the only thing mocked."""

from __future__ import annotations

import gc
import io
import json
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
import wrapt
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import ClientError
from hypothesis import given
from hypothesis import strategies as st

from agentguard_otel import AgentGuardBlocked
from agentguard_otel.demo.server import count_prompt_tokens, reply_text
from agentguard_otel.pricing import TokenUsage
from agentguard_otel.providers.bedrock import family_of, model_name
from tests.conftest import GuardFactory, Telemetry
from tests.servers.bedrock_server import LocalBedrockServer, encode_event

CLAUDE = "us.anthropic.claude-3-5-haiku-20241022-v1:0"
NOVA = "amazon.nova-lite-v1:0"
TITAN = "amazon.titan-text-express-v1"
LLAMA = "meta.llama3-8b-instruct-v1:0"
PROMPT = "Review this diff, please."
MESSAGES = [{"role": "user", "content": [{"text": PROMPT}]}]
WORDS = 24  # the server's reply length

ALLOW_ALL = {"version": 1, "id": "test", "mode": "enforce",
             "rules": [{"id": "all", "caps": [{"limit_usd": 100, "window": "day", "action": "block"}]}]}
BLOCK_ALL = {"version": 1, "id": "test", "mode": "enforce",
             "rules": [{"id": "tiny", "caps": [{"limit_usd": "0.000000001", "window": "call", "action": "block",
                                                "reason": "test ceiling"}]}]}
CLAMP_5 = {**ALLOW_ALL, "rules": [{**ALLOW_ALL["rules"][0], "max_output_tokens": 5}]}  # type: ignore[dict-item]

# (model id, invoke body, reply text of a whole body, text of one stream chunk)
FAMILIES: dict[str, tuple[str, dict[str, Any], Callable[[Any], str], Callable[[Any], str]]] = {
    "anthropic": (CLAUDE,
                  {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 200,
                   "messages": [{"role": "user", "content": PROMPT}]},
                  lambda b: b["content"][0]["text"], lambda c: c.get("delta", {}).get("text", "")),
    "nova": (NOVA, {"messages": MESSAGES, "inferenceConfig": {"maxTokens": 200}},
             lambda b: b["output"]["message"]["content"][0]["text"],
             lambda c: c.get("contentBlockDelta", {}).get("delta", {}).get("text", "")),
    "titan": (TITAN, {"inputText": PROMPT, "textGenerationConfig": {"maxTokenCount": 200}},
              lambda b: b["results"][0]["outputText"], lambda c: c["outputText"]),
    "llama": (LLAMA, {"prompt": PROMPT, "max_gen_len": 200},
              lambda b: b["generation"], lambda c: c["generation"]),
}


@pytest.fixture(scope="module")
def bedrock() -> Iterator[LocalBedrockServer]:
    with LocalBedrockServer(reply_words=WORDS) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _fresh(bedrock: LocalBedrockServer) -> None:
    bedrock.reset()


def client(server: LocalBedrockServer) -> Any:
    return boto3.client("bedrock-runtime", region_name="us-east-1", endpoint_url=server.url,
                        aws_access_key_id="test", aws_secret_access_key="test",
                        config=Config(retries={"total_max_attempts": 1}))


def _converse(c: Any) -> str:
    return str(c.converse(modelId=CLAUDE, messages=MESSAGES)["output"]["message"]["content"][0]["text"])


def _converse_stream(c: Any) -> str:
    events = c.converse_stream(modelId=CLAUDE, messages=MESSAGES)["stream"]
    return "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e)


def _invoke(family: str) -> Callable[[Any], str]:
    model, body, text, _ = FAMILIES[family]

    def run(c: Any) -> str:
        response = c.invoke_model(modelId=model, body=json.dumps(body), contentType="application/json")
        return text(json.loads(response["body"].read()))

    return run


def _invoke_stream(family: str) -> Callable[[Any], str]:
    model, body, _, chunk_text = FAMILIES[family]

    def run(c: Any) -> str:
        events = c.invoke_model_with_response_stream(modelId=model, body=json.dumps(body))["body"]
        return "".join(chunk_text(json.loads(e["chunk"]["bytes"])) for e in events)

    return run


OPERATIONS: dict[str, Callable[[Any], str]] = {
    "converse": _converse,
    "converse_stream": _converse_stream,
    **{f"invoke_model[{f}]": _invoke(f) for f in FAMILIES},
    **{f"invoke_model_with_response_stream[{f}]": _invoke_stream(f) for f in FAMILIES},
}


def _settled(handle: Any) -> list[dict[str, Any]]:
    return [r for r in handle.receipts() if r["kind"] == "settlement"]


def _assert_exact(handle: Any, settlement: dict[str, Any]) -> TokenUsage:
    usage = TokenUsage(**settlement["usage"])
    decision = next(r for r in handle.receipts() if r["kind"] == "decision")
    price = handle.guard.prices.lookup("aws", decision["model_effective"])
    assert price is not None
    assert settlement["actual_nano"] == handle.guard.prices.actual_cost_nano(price, usage)
    assert 0 < settlement["actual_nano"] <= decision["estimated_nano"]
    (state,) = handle.guard.ledger.states()
    assert (state.held_nano, state.spent_nano) == (0, settlement["actual_nano"])
    return usage


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_every_operation_is_blocked_before_the_server(operation: str, bedrock: LocalBedrockServer,
                                                      guarded: GuardFactory, otel: Telemetry) -> None:
    guarded(BLOCK_ALL)
    with pytest.raises(AgentGuardBlocked) as info:
        OPERATIONS[operation](client(bedrock))
    assert bedrock.requests == []
    assert info.value.reason == "test ceiling"
    span = otel.finished()[-1]
    assert span.attributes["error.type"] == "agentguard.blocked"
    assert span.attributes["gen_ai.provider.name"] == "aws.bedrock"


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_every_operation_settles_exactly(operation: str, bedrock: LocalBedrockServer,
                                         guarded: GuardFactory) -> None:
    handle = guarded(ALLOW_ALL)
    text = OPERATIONS[operation](client(bedrock))
    assert text == reply_text(WORDS)  # the caller's body / stream arrives intact
    assert len(bedrock.requests) == 1
    (settlement,) = _settled(handle)
    assert (settlement["outcome"], settlement["cost_source"]) == ("ok", "local")
    usage = _assert_exact(handle, settlement)
    messages = 1
    assert (usage.input_tokens, usage.output_tokens) == (count_prompt_tokens([PROMPT], messages), WORDS)


def test_client_built_before_instrument_is_guarded(bedrock: LocalBedrockServer, guarded: GuardFactory) -> None:
    early = client(bedrock)
    guarded(BLOCK_ALL)
    with pytest.raises(AgentGuardBlocked):
        _converse(early)
    assert bedrock.requests == []


def test_other_services_and_operations_pass_untouched(bedrock: LocalBedrockServer, guarded: GuardFactory) -> None:
    handle = guarded(BLOCK_ALL)
    with pytest.raises(ClientError):  # CountTokens is not an LLM call: not guarded, reaches the server
        client(bedrock).count_tokens(modelId=CLAUDE, input={"converse": {"messages": MESSAGES}})
    assert len(bedrock.requests) == 1 and handle.receipts() == []


def test_uninstrument_restores_botocore(bedrock: LocalBedrockServer, guarded: GuardFactory) -> None:
    handle = guarded(BLOCK_ALL)
    assert isinstance(BaseClient.__dict__["_make_api_call"], wrapt.FunctionWrapper)
    handle.instrumentor.uninstrument()
    assert not isinstance(BaseClient.__dict__["_make_api_call"], wrapt.FunctionWrapper)
    _converse(client(bedrock))
    assert len(bedrock.requests) == 1
    handle.instrumentor.instrument(policy=BLOCK_ALL, signing_key=str(handle.key_path),
                                   ledger="memory://", receipts=str(handle.home / "receipts"))


def test_clamp_lowers_and_injects_max_tokens(bedrock: LocalBedrockServer, guarded: GuardFactory) -> None:
    guarded(CLAMP_5)
    c = client(bedrock)
    c.converse(modelId=CLAUDE, messages=MESSAGES)
    c.converse(modelId=CLAUDE, messages=MESSAGES, inferenceConfig={"maxTokens": 500, "temperature": 0.5})
    c.converse(modelId=CLAUDE, messages=MESSAGES, inferenceConfig={"maxTokens": 3})
    response = c.converse_stream(modelId=CLAUDE, messages=MESSAGES)
    list(response["stream"])
    bodies = [r.body or {} for r in bedrock.requests]
    assert bodies[0]["inferenceConfig"] == {"maxTokens": 5}
    assert bodies[1]["inferenceConfig"] == {"maxTokens": 5, "temperature": 0.5}
    assert bodies[2]["inferenceConfig"] == {"maxTokens": 3}  # already below the clamp: untouched
    assert bodies[3]["inferenceConfig"] == {"maxTokens": 5}


@pytest.mark.parametrize(("family", "body", "expected"), [
    ("anthropic", {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 200, "messages": MESSAGES},
     {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 5, "messages": MESSAGES}),
    ("nova", {"messages": MESSAGES}, {"messages": MESSAGES, "inferenceConfig": {"maxTokens": 5}}),
    ("titan", {"inputText": PROMPT, "textGenerationConfig": {"maxTokenCount": 200, "temperature": 0.5}},
     {"inputText": PROMPT, "textGenerationConfig": {"maxTokenCount": 5, "temperature": 0.5}}),
    ("llama", {"prompt": PROMPT}, {"prompt": PROMPT, "max_gen_len": 5}),  # the 512 default is above the clamp
])
def test_clamp_rewrites_the_family_field(family: str, body: dict[str, Any], expected: dict[str, Any],
                                          bedrock: LocalBedrockServer, guarded: GuardFactory) -> None:
    handle = guarded(CLAMP_5)
    original = json.dumps(body)
    response = client(bedrock).invoke_model(modelId=FAMILIES[family][0], body=original)
    assert bedrock.requests[0].body == expected
    assert json.dumps(body) == original  # the caller's own body is not modified
    assert FAMILIES[family][2](json.loads(response["body"].read())) == reply_text(5)
    (settlement,) = _settled(handle)
    assert settlement["usage"]["output_tokens"] == 5


def test_file_like_body_is_read_once_and_passed_on(bedrock: LocalBedrockServer, guarded: GuardFactory) -> None:
    guarded(CLAMP_5)
    body = io.BytesIO(json.dumps({"inputText": PROMPT}).encode())
    response = client(bedrock).invoke_model(modelId=TITAN, body=body)
    assert bedrock.requests[0].body == {"inputText": PROMPT, "textGenerationConfig": {"maxTokenCount": 5}}
    assert json.loads(response["body"].read())["results"][0]["outputText"] == reply_text(5)


def test_unreadable_body_is_refused_in_strict_and_opaque_input_in_expected(bedrock: LocalBedrockServer,
                                                                            guarded: GuardFactory) -> None:
    handle = guarded(ALLOW_ALL)
    with pytest.raises(AgentGuardBlocked, match="cannot be bounded"):
        client(bedrock).invoke_model(modelId=TITAN, body=b"not json " * 10)
    assert bedrock.requests == []
    handle.instrumentor.uninstrument()
    handle = guarded({**ALLOW_ALL, "estimation": "expected"})
    with pytest.raises(ClientError) as info:
        client(bedrock).invoke_model(modelId=TITAN, body=b"not json " * 10)
    assert info.value.response["Error"]["Code"] == "ValidationException"
    (decision,) = [r for r in handle.receipts() if r["kind"] == "decision" and r["estimation"] == "expected"]
    (settlement,) = [r for r in handle.receipts() if r["kind"] == "settlement"]
    assert decision["action"] == "allow" and decision["estimated_nano"] > 0
    assert (settlement["outcome"], settlement["actual_nano"]) == ("error", 0)


def test_downgrade_rewrites_the_model_id(bedrock: LocalBedrockServer, guarded: GuardFactory,
                                         otel: Telemetry) -> None:
    sonnet = "us.anthropic.claude-sonnet-4-20250514-v1:0"
    policy = {"version": 1, "id": "test", "rules": [{"id": "eng", "caps": [
        {"limit_usd": "0.000001", "window": "day", "action": "downgrade", "downgrade_to": CLAUDE}]}]}
    handle = guarded(policy)
    c = client(bedrock)
    c.converse(modelId=sonnet, messages=MESSAGES)
    c.invoke_model(modelId=sonnet, body=json.dumps(FAMILIES["anthropic"][1]))
    assert [r.model_id for r in bedrock.requests] == [CLAUDE, CLAUDE]
    decisions = [r for r in handle.receipts() if r["kind"] == "decision"]
    assert [(d["action"], d["model_requested"], d["model_effective"]) for d in decisions] == \
        [("downgrade", sonnet, CLAUDE)] * 2
    span = otel.finished()[-1]
    assert span.name == f"chat {CLAUDE}"
    assert span.attributes["agentguard.model.requested"] == sonnet


def test_throttling_releases_the_hold(bedrock: LocalBedrockServer, guarded: GuardFactory, otel: Telemetry) -> None:
    handle = guarded(ALLOW_ALL)
    c = client(bedrock)
    for run in (_converse, _converse_stream, _invoke("nova"), _invoke_stream("titan")):
        bedrock.fail_next(429, code="ThrottlingException", message="Too many requests")
        with pytest.raises(ClientError) as info:
            run(c)
        assert info.value.response["Error"]["Code"] == "ThrottlingException"
    settlements = _settled(handle)
    assert [(s["outcome"], s["actual_nano"], s["error_type"]) for s in settlements] == \
        [("error", 0, "ThrottlingException")] * 4
    assert all(s.held_nano == 0 and s.spent_nano == 0 for s in handle.guard.ledger.states())
    assert otel.finished()[-1].attributes["error.type"] == "ThrottlingException"


def _abandon(handle: Any, response: dict[str, Any], field: str) -> dict[str, Any]:
    for i, _event in enumerate(response[field]):
        if i == 2:
            break
    del response, _event
    gc.collect()
    (settlement,) = _settled(handle)
    return settlement


@pytest.mark.parametrize("operation", ["converse_stream", "invoke_model_with_response_stream"])
def test_abandoned_stream_settles(operation: str, bedrock: LocalBedrockServer, guarded: GuardFactory) -> None:
    handle = guarded(ALLOW_ALL)
    c = client(bedrock)
    if operation == "converse_stream":
        settlement = _abandon(handle, c.converse_stream(modelId=CLAUDE, messages=MESSAGES), "stream")
    else:
        model, body, _, _ = FAMILIES["anthropic"]
        settlement = _abandon(handle, c.invoke_model_with_response_stream(modelId=model, body=json.dumps(body)),
                              "body")
    assert (settlement["outcome"], settlement["cost_source"]) == ("abandoned", "estimated")
    assert settlement["actual_nano"] > 0
    (state,) = handle.guard.ledger.states()
    assert (state.held_nano, state.spent_nano) == (0, settlement["actual_nano"])


def test_closed_stream_settles_at_once(bedrock: LocalBedrockServer, guarded: GuardFactory) -> None:
    handle = guarded(ALLOW_ALL)
    stream = client(bedrock).converse_stream(modelId=CLAUDE, messages=MESSAGES)["stream"]
    next(iter(stream))
    stream.close()
    (settlement,) = _settled(handle)
    assert settlement["outcome"] == "abandoned"
    assert handle.guard.ledger.states()[0].held_nano == 0


def test_leaving_a_loop_early_is_not_the_end(bedrock: LocalBedrockServer, guarded: GuardFactory) -> None:
    handle = guarded(ALLOW_ALL)
    stream = client(bedrock).converse_stream(modelId=CLAUDE, messages=MESSAGES)["stream"]
    for _event in stream:
        break
    assert _settled(handle) == []
    rest = list(stream)
    assert "metadata" in rest[-1]
    (settlement,) = _settled(handle)
    assert settlement["outcome"] == "ok"
    assert settlement["usage"]["output_tokens"] == WORDS


def test_cache_reads_are_priced_as_cache(guarded: GuardFactory) -> None:
    with LocalBedrockServer(cache_read_tokens=4) as srv:
        handle = guarded(ALLOW_ALL)
        c = client(srv)
        c.converse(modelId=CLAUDE, messages=MESSAGES)
        list(c.converse_stream(modelId=CLAUDE, messages=MESSAGES)["stream"])
        c.invoke_model(modelId=CLAUDE, body=json.dumps(FAMILIES["anthropic"][1]))["body"].read()
    prompt = count_prompt_tokens([PROMPT], 1)
    price = handle.guard.prices.lookup("aws", CLAUDE)
    assert price is not None and price.cache_read is not None and price.cache_read < price.input
    for settlement in _settled(handle):
        usage = TokenUsage(**settlement["usage"])
        assert (usage.input_tokens, usage.cache_read_tokens) == (prompt, 4)
        assert settlement["actual_nano"] == handle.guard.prices.actual_cost_nano(price, usage)


def test_other_model_families_are_refused_in_strict_mode(bedrock: LocalBedrockServer,
                                                          guarded: GuardFactory) -> None:
    guarded(ALLOW_ALL)
    model = "mistral.mistral-7b-instruct-v0:2"  # not a format the adapter reads: its output limit is unknown
    with pytest.raises(AgentGuardBlocked, match="cannot be read, so the call cannot be bounded"):
        client(bedrock).invoke_model(modelId=model, body=json.dumps({"prompt": PROMPT, "max_tokens": 50}))
    assert bedrock.requests == []


def test_other_model_families_settle_from_the_usage_headers(bedrock: LocalBedrockServer,
                                                            guarded: GuardFactory) -> None:
    handle = guarded({**ALLOW_ALL, "estimation": "expected"})
    model = "mistral.mistral-7b-instruct-v0:2"  # not a format the adapter reads: usage from the headers
    response = client(bedrock).invoke_model(modelId=model, body=json.dumps({"prompt": PROMPT, "max_tokens": 50}))
    assert json.loads(response["body"].read())["generation"] == reply_text(WORDS)
    (settlement,) = _settled(handle)
    assert settlement["outcome"] == "ok"
    assert settlement["usage"]["output_tokens"] == WORDS
    _assert_exact(handle, settlement)


def test_span_of_a_bedrock_call(bedrock: LocalBedrockServer, guarded: GuardFactory, otel: Telemetry) -> None:
    handle = guarded(ALLOW_ALL)
    _converse(client(bedrock))
    span = otel.finished()[-1]
    attrs = span.attributes
    assert span.name == f"chat {CLAUDE}"
    assert attrs["gen_ai.provider.name"] == "aws.bedrock"
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == CLAUDE
    assert attrs["gen_ai.usage.output_tokens"] == WORDS
    assert attrs["gen_ai.response.finish_reasons"] == ("end_turn",)
    assert attrs["server.address"] == "127.0.0.1" and attrs["server.port"] == bedrock.port
    (settlement,) = _settled(handle)
    assert attrs["agentguard.settlement.receipt.hash"] == settlement["hash"]
    assert PROMPT not in str(dict(attrs))


def test_bedrock_model_ids_are_priced(guarded: GuardFactory) -> None:
    handle = guarded(ALLOW_ALL)
    for model in (CLAUDE, NOVA, TITAN, LLAMA, "global.anthropic.claude-haiku-4-5-20251001-v1:0",
                  "eu.anthropic.claude-3-haiku-20240307-v1:0", "apac.amazon.nova-micro-v1:0",
                  "us.meta.llama3-2-1b-instruct-v1:0"):
        assert handle.guard.prices.lookup("aws", model) is not None, model


@pytest.mark.parametrize(("model_id", "family"), [
    (CLAUDE, "anthropic"), ("global.anthropic.claude-haiku-4-5-20251001-v1:0", "anthropic"),
    ("anthropic.claude-3-haiku-20240307-v1:0", "anthropic"), (NOVA, "nova"), ("us.amazon.nova-pro-v1:0", "nova"),
    (TITAN, "titan"), (LLAMA, "llama"), ("us-gov.meta.llama3-8b-instruct-v1:0", "llama"),
    ("arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.amazon.nova-lite-v1:0", "nova"),
    ("cohere.command-r-v1:0", "other"), ("amazon.titan-embed-text-v2:0", "other"),
])
def test_family_is_read_from_the_model_id(model_id: str, family: str) -> None:
    assert family_of(model_id).name == family
    assert model_name(model_id) == model_id.rsplit("/", 1)[-1]


@given(st.dictionaries(st.text(min_size=1, max_size=20).filter(lambda s: len(s.encode()) < 256),
                       st.text(max_size=40), max_size=4),
       st.binary(max_size=300))
def test_event_stream_encoding_is_what_botocore_decodes(headers: dict[str, str], payload: bytes) -> None:
    from botocore.eventstream import EventStreamBuffer

    buffer = EventStreamBuffer()
    buffer.add_data(encode_event(headers, payload))
    (message,) = list(buffer)
    assert (message.headers, message.payload) == (headers, payload)
