"""OpenRouter mode: /api/v1 base path, provider-reported usage.cost, and the `models` fallback list."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal

import openai
import pytest

from tests.servers.openai_server import LocalOpenAIServer

from .support import USER, sdk_client

MINI = "openai/gpt-4o-mini"
HAIKU = "anthropic/claude-haiku-4-5"
PRICES = {MINI: ("0.15", "0.60"), HAIKU: ("1", "5")}


@pytest.fixture
def router(make_server: Callable[..., LocalOpenAIServer]) -> LocalOpenAIServer:
    return make_server(openrouter=True, prices_usd_per_mtok=PRICES)


@pytest.fixture
def or_client(router: LocalOpenAIServer) -> Iterator[openai.OpenAI]:
    with sdk_client(router) as sdk:
        yield sdk


def cost_of(usage: object) -> Decimal:
    extra = getattr(usage, "model_extra", None) or {}
    cost = extra["cost"]
    assert isinstance(cost, float)
    return Decimal(repr(cost))


def test_base_url_uses_api_v1(router: LocalOpenAIServer) -> None:
    assert router.base_url == f"http://127.0.0.1:{router.port}/api/v1"


def test_chat_usage_cost_is_exact(or_client: openai.OpenAI) -> None:
    completion = or_client.chat.completions.create(model=MINI, messages=USER)
    assert completion.model == MINI
    assert (completion.model_extra or {})["provider"] == "OpenAI"
    usage = completion.usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (9, 24)
    # 9 * 0.15 + 24 * 0.60 = 15.75 USD per million tokens
    assert cost_of(usage) == Decimal("0.00001575")
    extra = usage.model_extra or {}
    assert extra["is_byok"] is False
    assert extra["cost_details"] == {
        "upstream_inference_cost": None,
        "upstream_inference_prompt_cost": 0.00000135,
        "upstream_inference_completions_cost": 0.0000144,
    }


def test_models_fallback_answers_with_first_available(or_client: openai.OpenAI) -> None:
    completion = or_client.chat.completions.create(
        model=MINI, messages=USER, extra_body={"models": ["unavailable/gpt-9", HAIKU, MINI]}
    )
    assert completion.model == HAIKU
    assert (completion.model_extra or {})["provider"] == "Anthropic"
    assert cost_of(completion.usage) == Decimal("0.000129")  # 9 * 1 + 24 * 5


def test_no_available_model_is_a_404(or_client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        or_client.chat.completions.create(model="unavailable/a", messages=USER)
    assert raised.value.code == "model_not_found"


def test_unlisted_model_uses_default_price(or_client: openai.OpenAI) -> None:
    completion = or_client.chat.completions.create(model="meta-llama/llama-3-8b", messages=USER, max_tokens=4)
    assert cost_of(completion.usage) == Decimal("0.000025")  # 9 * 1 + 4 * 4


def test_stream_usage_chunk_carries_cost_only_when_asked(or_client: openai.OpenAI) -> None:
    plain = list(or_client.chat.completions.create(model=MINI, messages=USER, stream=True))
    assert all(c.usage is None for c in plain)
    with_usage = list(
        or_client.chat.completions.create(
            model=MINI, messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    assert len(with_usage) == len(plain) + 1
    assert cost_of(with_usage[-1].usage) == Decimal("0.00001575")


def test_responses_and_embeddings_cost(or_client: openai.OpenAI) -> None:
    response = or_client.responses.create(model=MINI, input="hello")
    assert cost_of(response.usage) == Decimal("0.0000156")  # 8 * 0.15 + 24 * 0.60
    embedded = or_client.embeddings.create(model=MINI, input="hello world")
    assert cost_of(embedded.usage) == Decimal("0.00000045")  # 3 * 0.15


def test_openai_base_path_also_served(router: LocalOpenAIServer) -> None:
    with openai.OpenAI(base_url=router.base_url.replace("/api/v1", "/v1"), api_key="k", max_retries=0) as sdk:
        completion = sdk.chat.completions.create(model=MINI, messages=USER)
    assert cost_of(completion.usage) == Decimal("0.00001575")


def test_bad_price_is_rejected() -> None:
    with pytest.raises(ValueError, match="not a decimal"):
        LocalOpenAIServer(openrouter=True, prices_usd_per_mtok={MINI: ("cheap", "1")})
