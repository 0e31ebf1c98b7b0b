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


LOCAL_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


def resolve_locally(monkeypatch: pytest.MonkeyPatch, *, offline: bool = False) -> None:
    """Patch ``socket.getaddrinfo`` (which every client's resolver ends in) for the known host names;
    ``offline``: any other name but the local ones fails to resolve (no request can leave the machine)."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name in KNOWN_HOSTS:
            return real("127.0.0.1", *args, **kwargs)
        if offline and name not in LOCAL_NAMES:
            raise socket.gaierror(socket.EAI_NONAME, f"{name} is not resolved in the tests (offline)")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)


def at(host: str, server: Any) -> str:
    """The server's base URL under a known host name."""
    return f"http://{host}:{server.port}{server.base_path}"
