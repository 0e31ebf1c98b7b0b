"""Known LLM host names resolved to 127.0.0.1, so that HTTP clients reach the local servers under the
names the transport tripwire watches (``http://api.anthropic.com:<local port>``)."""

from __future__ import annotations

import socket
from typing import Any

import pytest

OPENAI_HOST = "api.openai.com"
ANTHROPIC_HOST = "api.anthropic.com"
BEDROCK_HOST = "bedrock-runtime.us-east-1.amazonaws.com"
KNOWN_HOSTS = frozenset({OPENAI_HOST, ANTHROPIC_HOST, BEDROCK_HOST})


def resolve_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    """Patch ``socket.getaddrinfo`` (which every client's resolver ends in) for the known host names."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        return real("127.0.0.1" if name in KNOWN_HOSTS else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)


def at(host: str, server: Any) -> str:
    """The server's base URL under a known host name."""
    return f"http://{host}:{server.port}{server.base_path}"
