"""Strict means proven, or refused: input the provider bills that the request does not carry is
bounded by the model's context window × its top input rate, or the call is refused."""

from __future__ import annotations

from typing import Any

import anthropic
import boto3
import openai
import pytest

from agentguard_otel import AgentGuardBlocked
from agentguard_otel.pricing import TokenUsage
from agentguard_otel.providers.bedrock import NOVA_VIDEO_TOKENS
from tests.conftest import Guarded, GuardFactory
from tests.servers.anthropic_server import LocalAnthropicServer
from tests.servers.bedrock_server import LocalBedrockServer

STRICT = {"version": 1, "mode": "enforce", "estimation": "strict",
          "rules": [{"id": "all", "caps": [{"limit_usd": 100, "window": "day", "action": "block"}]}]}


def _decision(g: Guarded) -> dict[str, Any]:
    (decision,) = [r for r in g.receipts() if r["kind"] == "decision"]
    return decision


def _window_cost(g: Guarded, provider: str, model: str) -> int:
    price = g.guard.prices.lookup(provider, model)
    assert price is not None and price.context_window is not None
    return g.guard.prices.bound_cost_nano(price, price.context_window, 0)


@pytest.mark.parametrize("extra", [{"previous_response_id": "resp_earlier"}, {"conversation": "conv_1"},
                                   {"prompt": {"id": "pmpt_1", "version": "2"}}])
def test_earlier_turns_and_stored_prompts_are_bounded_by_the_context_window(extra: dict[str, Any], server: Any,
                                                                           guarded: GuardFactory) -> None:
    g = guarded(STRICT, ledger="memory://")
    openai.OpenAI(base_url=server.base_url, api_key="sk", max_retries=0).responses.create(
        model="gpt-4o-mini", input="and now?", max_output_tokens=16, **extra)
    assert _decision(g)["estimated_nano"] >= _window_cost(g, "openai", "gpt-4o-mini")


def test_chat_web_search_results_are_bounded_by_the_context_window(server: Any, guarded: GuardFactory) -> None:
    g = guarded(STRICT, ledger="memory://")
    openai.OpenAI(base_url=server.base_url, api_key="sk", max_retries=0).chat.completions.create(
        model="gpt-4o-mini", max_tokens=16, messages=[{"role": "user", "content": "news?"}], web_search_options={})
    assert _decision(g)["estimated_nano"] >= _window_cost(g, "openai", "gpt-4o-mini")


def test_a_file_by_id_is_bounded_too(server: Any, guarded: GuardFactory) -> None:
    g = guarded(STRICT, ledger="memory://")
    openai.OpenAI(base_url=server.base_url, api_key="sk", max_retries=0).chat.completions.create(
        model="gpt-4o-mini", max_tokens=16, messages=[{"role": "user", "content": [
            {"type": "text", "text": "summarise"}, {"type": "file", "file": {"file_id": "file-abc"}}]}])
    assert _decision(g)["estimated_nano"] >= _window_cost(g, "openai", "gpt-4o-mini")


def test_unseen_input_of_a_model_with_no_known_window_is_refused_in_strict(server: Any,
                                                                          guarded: GuardFactory) -> None:
    guarded({**STRICT, "unknown_model": "allow"}, ledger="memory://")
    with pytest.raises(AgentGuardBlocked, match=r"input the request does not carry \(previous_response_id\) "
                                                r"cannot be bounded"):
        openai.OpenAI(base_url=server.base_url, api_key="sk", max_retries=0).responses.create(
            model="house-model-7", input="and now?", previous_response_id="resp_earlier")
    assert server.requests == []


def test_anthropic_documents_and_the_tool_use_prompt_are_in_the_bound(guarded: GuardFactory) -> None:
    g = guarded(STRICT, ledger="memory://")
    with LocalAnthropicServer() as srv:
        client = anthropic.Anthropic(base_url=srv.base_url, api_key="sk", max_retries=0)
        base = {"model": "claude-haiku-4-5", "max_tokens": 16}
        client.messages.create(**base, messages=[{"role": "user", "content": "hi"}])
        client.messages.create(**base, messages=[{"role": "user", "content": "hi"}], tools=[
            {"name": "t", "description": "d", "input_schema": {"type": "object"}}])
        client.messages.create(**base, messages=[{"role": "user", "content": [
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}},
            {"type": "text", "text": "summarise"}]}])
    plain, tools, document = [r for r in g.receipts() if r["kind"] == "decision"]
    price = g.guard.prices.lookup("anthropic", "claude-haiku-4-5")
    assert price is not None
    assert tools["estimated_nano"] - plain["estimated_nano"] >= g.guard.prices.bound_cost_nano(price, 1024, 0) - 1
    assert document["estimated_nano"] >= _window_cost(g, "anthropic", "claude-haiku-4-5")


@pytest.mark.parametrize("source", [{"s3Location": {"uri": "s3://bucket/clip.mp4"}}, {"bytes": b"\x00" * 4096}])
def test_a_nova_video_is_bounded_by_its_documented_frames_whatever_its_source(source: dict[str, Any],
                                                                              guarded: GuardFactory) -> None:
    g = guarded(STRICT, ledger="memory://")
    with LocalBedrockServer() as srv:
        client = boto3.client("bedrock-runtime", endpoint_url=srv.url, region_name="us-east-1",
                              aws_access_key_id="test", aws_secret_access_key="test")
        content = [{"text": "describe"}, {"video": {"format": "mp4", "source": source}}]
        client.converse(modelId="us.amazon.nova-lite-v1:0", messages=[{"role": "user", "content": content}],
                        inferenceConfig={"maxTokens": 16})
        assert len(srv.requests) == 1
    price = g.guard.prices.lookup("aws", "us.amazon.nova-lite-v1:0")
    assert price is not None and price.context_window is not None
    estimated = _decision(g)["estimated_nano"]
    # 960 frames x 288 tokens, plus the text: below the whole context window, however long the video
    assert g.guard.prices.bound_cost_nano(price, NOVA_VIDEO_TOKENS, 16) < estimated
    assert estimated < g.guard.prices.bound_cost_nano(price, price.context_window, 16)


def test_a_video_for_a_model_without_a_documented_video_bound_is_bounded_by_its_window(
        guarded: GuardFactory) -> None:
    g = guarded(STRICT, ledger="memory://")
    model = "anthropic.claude-3-5-sonnet-20241022-v2:0"
    with LocalBedrockServer() as srv:
        client = boto3.client("bedrock-runtime", endpoint_url=srv.url, region_name="us-east-1",
                              aws_access_key_id="test", aws_secret_access_key="test")
        content = [{"text": "describe"}, {"video": {"format": "mp4", "source": {"bytes": b"\x00" * 64}}}]
        client.converse(modelId=model, messages=[{"role": "user", "content": content}],
                        inferenceConfig={"maxTokens": 16})
    assert _decision(g)["estimated_nano"] >= _window_cost(g, "aws", model)


def test_a_service_tier_is_priced_as_that_tier_and_an_unknown_one_as_the_dearest(server: Any,
                                                                                 guarded: GuardFactory) -> None:
    g = guarded(STRICT, ledger="memory://")
    client = openai.OpenAI(base_url=server.base_url, api_key="sk", max_retries=0)
    for tier in (None, "priority", "flex", "turbo-2031"):
        extra = {"service_tier": tier} if tier else {}
        client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}],
                                       max_completion_tokens=64, extra_body=extra)
    standard, priority, flex, unknown = [r["estimated_nano"] for r in g.receipts() if r["kind"] == "decision"]
    assert flex < standard < priority == unknown
    settled = [r for r in g.receipts() if r["kind"] == "settlement"]
    assert settled[1]["actual_nano"] > settled[0]["actual_nano"]  # the same usage, billed at the priority rate


def _settled_at(g: Guarded, settlement: dict[str, Any], tier: str | None) -> int:
    price = g.guard.prices.lookup("openai", "gpt-5", tier)
    assert price is not None
    return g.guard.prices.actual_cost_nano(price, TokenUsage(**settlement["usage"]))


def test_auto_tier_reserves_the_dearest_tier_and_settles_at_the_tier_the_response_reports(
        server: Any, guarded: GuardFactory) -> None:
    g = guarded(STRICT, ledger="memory://")
    client = openai.OpenAI(base_url=server.base_url, api_key="sk", max_retries=0)
    ask: dict[str, Any] = {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}],
                           "max_completion_tokens": 64}
    client.chat.completions.create(**ask, service_tier="priority")
    client.chat.completions.create(**ask)
    client.chat.completions.create(**ask, service_tier="auto")  # the project's default tier: standard
    server.set_project_tier("priority")
    client.chat.completions.create(**ask, service_tier="auto")  # the project's default tier: priority
    client.responses.create(model="gpt-5", input="hi", max_output_tokens=64, service_tier="auto")
    priority, standard, auto_standard, auto_priority, responses = [
        r["estimated_nano"] for r in g.receipts() if r["kind"] == "decision"]
    assert auto_standard == auto_priority == priority > standard
    settled = [r for r in g.receipts() if r["kind"] == "settlement"]
    assert [r["actual_nano"] for r in settled] == [
        _settled_at(g, settled[0], "priority"), _settled_at(g, settled[1], None), _settled_at(g, settled[2], None),
        _settled_at(g, settled[3], "priority"), _settled_at(g, settled[4], "priority")]
    assert settled[2]["actual_nano"] < settled[3]["actual_nano"] <= auto_priority
    assert responses >= settled[4]["actual_nano"] > _settled_at(g, settled[4], None)


def test_auto_tier_in_expected_estimation_is_reserved_as_the_standard_tier(server: Any,
                                                                          guarded: GuardFactory) -> None:
    g = guarded({**STRICT, "estimation": "expected"}, ledger="memory://")
    client = openai.OpenAI(base_url=server.base_url, api_key="sk", max_retries=0)
    ask: dict[str, Any] = {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}],
                           "max_completion_tokens": 64}
    client.chat.completions.create(**ask)
    client.chat.completions.create(**ask, service_tier="auto")
    standard, auto = [r["estimated_nano"] for r in g.receipts() if r["kind"] == "decision"]
    assert auto == standard


def test_bedrock_audio_and_stored_prompts_are_bounded_by_the_window_or_refused(guarded: GuardFactory) -> None:
    g = guarded(STRICT, ledger="memory://")
    model = "us.amazon.nova-lite-v1:0"
    with LocalBedrockServer() as srv:
        client = boto3.client("bedrock-runtime", endpoint_url=srv.url, region_name="us-east-1",
                              aws_access_key_id="test", aws_secret_access_key="test")
        content = [{"text": "transcribe"}, {"audio": {"format": "mp3", "source": {"bytes": b"\xff\xfb" * 32}}}]
        client.converse(modelId=model, messages=[{"role": "user", "content": content}],
                        inferenceConfig={"maxTokens": 16})
        with pytest.raises(AgentGuardBlocked, match=r"input the request does not carry \(a stored prompt\)"):
            client.converse(modelId="arn:aws:bedrock:us-east-1:123456789012:prompt/PROMPT12345",
                            promptVariables={"topic": {"text": "otters"}})
        assert len(srv.requests) == 1
    audio, prompt = [r for r in g.receipts() if r["kind"] == "decision"]
    assert audio["estimated_nano"] >= _window_cost(g, "aws", model)
    assert prompt["action"] == "block"


def test_anthropic_fast_mode_is_reserved_and_settled_at_its_fast_rates(guarded: GuardFactory) -> None:
    g = guarded(STRICT, ledger="memory://")
    ask: dict[str, Any] = {"model": "claude-opus-5", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
    with LocalAnthropicServer() as srv:
        client = anthropic.Anthropic(base_url=srv.base_url, api_key="sk", max_retries=0)
        client.messages.create(**ask)
        client.messages.create(**ask, speed="fast")
        with client.messages.stream(**ask, speed="fast") as stream:
            stream.get_final_message()
    standard, fast, streamed = [r["estimated_nano"] for r in g.receipts() if r["kind"] == "decision"]
    assert fast == streamed > standard
    prices = {speed: g.guard.prices.lookup("anthropic", "claude-opus-5", speed) for speed in (None, "fast")}
    assert prices[None] is not None and prices["fast"] is not None and prices["fast"].input > prices[None].input
    settled = [r for r in g.receipts() if r["kind"] == "settlement"]
    assert [r["actual_nano"] for r in settled] == [
        g.guard.prices.actual_cost_nano(price, TokenUsage(**r["usage"]))
        for price, r in zip([prices[None], prices["fast"], prices["fast"]], settled, strict=True)]
