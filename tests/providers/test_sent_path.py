"""The path a Stainless client will send is read as the client joins it, and the kept answer never
outlives what it was computed from."""

from __future__ import annotations

from typing import Any

import openai

from agentguard_otel.providers.stainless import _sent_path


def test_the_joined_path_follows_the_clients_base_url() -> None:
    client = openai.OpenAI(base_url="http://127.0.0.1:9/v1/", api_key="sk-test")
    assert _sent_path(client, "/chat/completions") == "/v1/chat/completions"
    client.base_url = "http://127.0.0.1:9/proxy/openai/v1/"  # type: ignore[assignment]
    assert _sent_path(client, "/chat/completions") == "/proxy/openai/v1/chat/completions"
    assert _sent_path(client, "http://127.0.0.1:9/elsewhere/responses") == "/elsewhere/responses"


def test_a_subclass_or_an_instance_with_its_own_join_is_asked() -> None:
    class Rerouting(openai.OpenAI):
        def _prepare_url(self, url: str) -> Any:
            return super()._prepare_url("/responses")

    base = "http://127.0.0.1:9/v1/"
    plain = openai.OpenAI(base_url=base, api_key="sk-test")
    assert _sent_path(plain, "/chat/completions") == "/v1/chat/completions"
    assert _sent_path(Rerouting(base_url=base, api_key="sk-test"), "/chat/completions") == "/v1/responses"
    own = openai.OpenAI(base_url=base, api_key="sk-test")
    calls: list[str] = []

    def join(url: str) -> Any:
        calls.append(url)
        return plain._prepare_url("/embeddings")

    own._prepare_url = join  # type: ignore[method-assign]
    assert [_sent_path(own, "/chat/completions") for _ in range(2)] == ["/v1/embeddings"] * 2
    assert calls == ["/chat/completions"] * 2
