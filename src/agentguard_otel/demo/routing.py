"""An OpenRouter client served by the local endpoint, for demos, examples and tests.

The client is a real ``openai`` client with OpenRouter's ``base_url`` (so provider detection,
span names and pricing see OpenRouter); only its connections are routed to the local server in
OpenRouter mode — the URL path and ``Host`` header stay OpenRouter's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import openai

OPENROUTER_BASE_URL = "https://openrouter.ai/api/v1"


def local_openrouter_client(local_base_url: str, api_key: str = "sk-or-local") -> openai.OpenAI:
    """A client for ``OPENROUTER_BASE_URL`` whose requests reach the server at ``local_base_url``."""
    import httpx2
    import openai

    port = urlsplit(local_base_url).port

    class ToLocal(httpx2.HTTPTransport):
        def handle_request(self, request: httpx2.Request) -> httpx2.Response:
            request.url = request.url.copy_with(scheme="http", host="127.0.0.1", port=port)
            return super().handle_request(request)

    return openai.OpenAI(base_url=OPENROUTER_BASE_URL, api_key=api_key, max_retries=0,
                         http_client=openai.DefaultHttpxClient(transport=ToLocal()))
