"""Constants and SDK client builders shared by the server tests."""

from __future__ import annotations

from typing import Any

import openai

from tests.servers.openai_server import LocalOpenAIServer

API_KEY = "sk-test-secret"
MODEL = "gpt-4o-mini"
USER: list[Any] = [{"role": "user", "content": "hello world"}]
USER_PROMPT_TOKENS = 9  # ceil(11 / 4) + 3 per message + 3
SENTENCE = (
    "This is a deterministic reply from the agentguard demo endpoint, "
    "sent one word at a time so that token counts are easy to check."
)


def words(count: int) -> str:
    return " ".join(SENTENCE.split(" ")[:count])


def sdk_client(server: LocalOpenAIServer, *, max_retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=max_retries)


def async_sdk_client(server: LocalOpenAIServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0)
