"""The transport tripwire: a request to a known LLM host that did not come through an SDK choke point.

Frameworks that send their own HTTP (LiteLLM's raw Anthropic and Bedrock routes, a hand-written
``httpx`` or ``requests`` call) never pass an adapter's hook. The HTTP clients of the process —
``httpx`` and ``httpx2`` (``Client.send``), and ``http.client`` (which carries ``urllib``,
``urllib3``, ``requests`` and ``botocore``) — see every request; one to a known LLM host (or a host
of ``AGENTGUARD_GUARDED_HOSTS``) that the lifecycle is not sending right now is an unknown
endpoint: refused in enforce mode, recorded as degraded otherwise. Such calls are not priced here:
they are refused rather than let through unrecorded.
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable
from typing import Any

import wrapt
from opentelemetry.instrumentation.utils import unwrap

from agentguard_otel.call import UnknownEndpoint
from agentguard_otel.guard import Guard, Refusal
from agentguard_otel.lifecycle import at_choke_point
from agentguard_otel.providers import GuardRef, Integration

# Hosts of the providers and gateways LLM calls go to (shell patterns, lower case).
KNOWN_LLM_HOSTS = (
    "api.openai.com", "*.openai.azure.com", "*.cognitiveservices.azure.com", "*.services.ai.azure.com",
    "api.anthropic.com", "openrouter.ai", "*.openrouter.ai",
    "bedrock-runtime.*.amazonaws.com", "bedrock-runtime-fips.*.amazonaws.com", "bedrock-agent-runtime.*.amazonaws.com",
    "generativelanguage.googleapis.com", "*-aiplatform.googleapis.com", "aiplatform.googleapis.com",
    "api.mistral.ai", "api.groq.com", "api.deepseek.com", "api.x.ai", "api.cohere.com", "api.cohere.ai",
    "api.together.xyz", "api.fireworks.ai", "api.perplexity.ai", "api.cerebras.ai", "api-inference.huggingface.co",
)


def guarded_host(host: str, extra: tuple[str, ...]) -> bool:
    name = host.lower().rstrip(".")
    return any(fnmatch.fnmatchcase(name, pattern.lower()) for pattern in (*KNOWN_LLM_HOSTS, *extra))


class TripwireHook:
    """Wraps ``send`` of an ``httpx``/``httpx2`` package's clients, or ``http.client``'s ``putrequest``."""

    def __init__(self, guard: GuardRef, package: str) -> None:
        self._guard = guard
        self._package = package
        self._wrapped: list[tuple[Any, str]] = []

    def instrument(self) -> None:
        module = importlib.import_module(self._package)
        targets: list[tuple[Any, str, Callable[..., Any]]] = (
            [(module.HTTPConnection, "putrequest", self._putrequest)] if self._package == "http.client"
            else [(module.Client, "send", self._send), (module.AsyncClient, "send", self._asend)])
        for owner, name, wrapper in targets:
            wrapt.wrap_function_wrapper(owner, name, wrapper)
            self._wrapped.append((owner, name))

    def uninstrument(self) -> None:
        for owner, name in self._wrapped:
            unwrap(owner, name)
        self._wrapped = []

    def _check(self, method: str, host: str, path: str) -> None:
        """Refuse (raise) or record a request to an LLM host that bypassed every choke point."""
        if at_choke_point():
            return
        guard = self._guard()
        if guard is None:
            return
        extra = guard.guarded_hosts if isinstance(guard, Guard) else ()
        if not guarded_host(host, extra):
            return
        if isinstance(guard, Refusal):
            guard.refuse()
        guard.unguarded(UnknownEndpoint("http", f"{method.upper()} {host}{path.split('?', 1)[0]} sent "
                                                "outside a guarded SDK", host))

    def _send(self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self._check_request(args[0] if args else kwargs.get("request"))
        return wrapped(*args, **kwargs)

    async def _asend(self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> Any:
        self._check_request(args[0] if args else kwargs.get("request"))
        return await wrapped(*args, **kwargs)

    def _check_request(self, request: Any) -> None:
        url = getattr(request, "url", None)
        self._check(str(getattr(request, "method", "")), str(getattr(url, "host", "")), str(getattr(url, "path", "")))

    def _putrequest(self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        method = args[0] if args else kwargs.get("method", "")
        url = args[1] if len(args) > 1 else kwargs.get("url", "")
        host = str(getattr(instance, "host", ""))
        if "://" in str(url):  # a proxy request carries the absolute URL
            host = str(url).split("://", 1)[1].split("/", 1)[0].split(":", 1)[0]
        self._check(str(method), host, str(url))
        return wrapped(*args, **kwargs)


# One integration per HTTP client package, patched when that package is imported.
def _integration(package: str) -> Integration:
    return Integration(None, lambda guard: TripwireHook(guard, package))


INTEGRATIONS = {package: _integration(package) for package in ("http.client", "httpx", "httpx2")}
