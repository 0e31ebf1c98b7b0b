"""The transport tripwire: a request to a known LLM host that did not come through an SDK choke point.

Frameworks that send their own HTTP (LiteLLM's raw Anthropic and Bedrock routes, a hand-written
``httpx`` or ``requests`` call) never pass an adapter's hook. The HTTP clients of the process see
every request; one to a known LLM host (or a host of ``AGENTGUARD_GUARDED_HOSTS``) that the
lifecycle is not sending right now is

* on ``httpx`` / ``httpx2`` (each hop a client sends, after its event hooks and redirects, whatever
  transport carries it, LiteLLM's aiohttp one included, and the default transports called
  directly): guarded through the adapter of its wire format
  (:mod:`~agentguard_otel.providers.raw`), like the SDK's own call; a request no adapter reads is
  an unknown endpoint;
* on ``http.client`` (which carries ``urllib``, ``urllib3``, ``requests`` and ``botocore``) and
  ``aiohttp`` (``ClientRequest.send``: each hop, redirects included): only its method and path are
  seen there, before the body is written, so anything but a free request (a WebSocket's opening GET
  included) is an unknown endpoint: refused in enforce mode, recorded as degraded otherwise.

The host a request is for is the one its URL, its ``Host`` header or its proxy tunnel names: an IP
literal carrying ``Host: api.openai.com`` is watched like the name.

A request the lifecycle sends (an SDK call, or an httpx request guarded here and carried on by an
aiohttp transport) is not looked at again: one decision, one span. An httpx request sent while
another one is being carried (a transport that asks another LLM on the side) is a request of its
own, watched even under an SDK's choke point.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib
import inspect
import weakref
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any
from urllib.parse import urlsplit

from agentguard_otel.guard import Guard, Refusal
from agentguard_otel.lifecycle import Classified, at_choke_point, run, run_async
from agentguard_otel.providers import GuardRef, Integration
from agentguard_otel.providers.raw import classify, target, unknown
from agentguard_otel.providers.stream import observe_async, observe_sync

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


# The httpx request a client hop or transport is carrying now: any other one sent meanwhile is nested.
_HOP: ContextVar[Any] = ContextVar("agentguard_httpx_hop", default=None)


def _hop_request(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[0] if args else kwargs["request"]


def _carrying(send: Callable[..., Any]) -> Callable[..., Any]:
    """``send`` (a hop or transport), marking the request it carries while it runs."""
    def carry(*args: Any, **kwargs: Any) -> Any:
        token = _HOP.set(_hop_request(args, kwargs))
        try:
            return send(*args, **kwargs)
        finally:
            _HOP.reset(token)
    return carry


def _acarrying(send: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def carry(*args: Any, **kwargs: Any) -> Any:
        token = _HOP.set(_hop_request(args, kwargs))
        try:
            return await send(*args, **kwargs)
        finally:
            _HOP.reset(token)
    return carry


def _text(value: Any) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else str(value or "")


def header_host(value: Any) -> str:
    """The host name of a ``Host`` header's value (``name``, ``name:port``, ``[v6]:port``)."""
    return urlsplit(f"//{_text(value).strip()}").hostname or ""


def _patch_method(owner: type, name: str, wrapper: Callable[..., Any]) -> Callable[..., Any]:
    """Replace a method of an HTTP client class by a plain function calling ``wrapper(wrapped,
    instance, args, kwargs)``, as wrapt does, but one that is the same object each time it is read
    from the class (a wrapt wrapper is rebound on every read, and code that checks by identity that
    nothing replaced a client's dispatch while it sends would see a change). ``__wrapped__`` keeps
    the original; returns the function put in its place."""
    original = vars(owner)[name]
    patched: Callable[..., Any]
    if inspect.iscoroutinefunction(original):
        async def patched(self: Any, *args: Any, **kwargs: Any) -> Any:
            return await wrapper(original.__get__(self), self, args, kwargs)
    else:
        def patched(self: Any, *args: Any, **kwargs: Any) -> Any:
            return wrapper(original.__get__(self), self, args, kwargs)
    patched = functools.wraps(original)(patched)
    setattr(owner, name, patched)
    return patched


class TripwireHook:
    """Wraps each hop an ``httpx``/``httpx2`` client sends and its default transports,
    ``http.client``'s ``putrequest`` and ``putheader``, or ``aiohttp``'s ``ClientRequest.send``."""

    def __init__(self, guard: GuardRef, package: str) -> None:
        self._guard = guard
        self._package = package
        self._patched: list[tuple[type, str, Callable[..., Any]]] = []
        # http.client: the (method, path, host checked) of a connection's request being written
        self._writing: weakref.WeakKeyDictionary[Any, tuple[str, str, str]] = weakref.WeakKeyDictionary()

    def instrument(self) -> None:
        module = importlib.import_module(self._package)
        targets: list[tuple[Any, str, Callable[..., Any]]]
        if self._package == "http.client":
            targets = [(module.HTTPConnection, "putrequest", self._putrequest),
                       (module.HTTPConnection, "putheader", self._putheader)]
        elif self._package == "aiohttp":
            targets = [(module.ClientRequest, "send", self._arequest)]
        else:  # a client's every hop (after hooks, redirects), and its transports used on their own
            targets = [(module.Client, "_send_single_request", self._send),
                       (module.AsyncClient, "_send_single_request", self._asend),
                       (module.HTTPTransport, "handle_request", self._send),
                       (module.AsyncHTTPTransport, "handle_async_request", self._asend)]
        for owner, name, wrapper in targets:
            self._patched.append((owner, name, _patch_method(owner, name, wrapper)))

    def uninstrument(self) -> None:
        for owner, name, patched in reversed(self._patched):
            if vars(owner).get(name) is patched:  # another patch on top of ours stays in place
                setattr(owner, name, patched.__wrapped__)
        self._patched = []

    def _watching(self, *hosts: str, nested: bool = False) -> tuple[Guard | Refusal, str] | None:
        """The guard and the LLM host (the first of ``hosts`` that is one), for a request that
        bypassed every choke point (or is ``nested`` in a request being carried); else None."""
        if at_choke_point() and not nested:
            return None
        guard = self._guard()
        if guard is None:
            return None
        extra = guard.guarded_hosts if isinstance(guard, Guard) else ()
        host = next((host for host in hosts if guarded_host(host, extra)), None)
        return None if host is None else (guard, host)

    def _check(self, method: str, path: str, *hosts: str) -> None:
        """Refuse (raise) or record a request this client cannot be guarded through; a free one passes."""
        watching = self._watching(*hosts)
        if watching is None or target(method, path) is None:
            return
        guard, host = watching
        if isinstance(guard, Refusal):
            guard.refuse()
        guard.unguarded(unknown(method, host, path))

    # httpx / httpx2: guarded through the adapter of the request's wire format
    def _httpx_watching(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Guard | Refusal | None]:
        """The request a hop or transport sends (bound to the URL's host, or the ``Host`` header's)."""
        request = _hop_request(args, kwargs)
        carried = _HOP.get()
        if carried is request:  # the hop's own transport, carrying it on
            return request, None
        watching = self._watching(str(request.url.host), header_host(request.headers.get("host")),
                                  nested=carried is not None)
        return request, None if watching is None else watching[0]

    def _send(self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        request, guard = self._httpx_watching(args, kwargs)
        send = _carrying(wrapped)
        if guard is None:
            return send(*args, **kwargs)
        return run(guard, lambda: classify(request, args, kwargs, observe_sync), send, args, kwargs)

    async def _asend(self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> Any:
        request, guard = self._httpx_watching(args, kwargs)
        send = _acarrying(wrapped)
        if guard is None:
            return await send(*args, **kwargs)

        async def classified() -> Classified:
            return classify(request, args, kwargs, observe_async)

        return await run_async(guard, classified, send, args, kwargs)

    # http.client and aiohttp: only method and path are seen, so an LLM call is an unknown endpoint
    def _putrequest(self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        method = str(args[0] if args else kwargs.get("method", ""))
        url = str(args[1] if len(args) > 1 else kwargs.get("url", ""))
        host = str(getattr(instance, "_tunnel_host", None) or getattr(instance, "host", ""))  # a proxy's tunnel
        if "://" in url:  # a proxy request carries the absolute URL
            parts = urlsplit(url)
            host, url = parts.hostname or "", parts.path
        self._writing[instance] = (method, url, host)
        self._check(method, url, host)
        return wrapped(*args, **kwargs)

    def _putheader(self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> Any:
        """A ``Host`` header naming another host than the connection's is checked for that host."""
        writing = self._writing.get(instance)
        if writing is not None and len(args) > 1 and _text(args[0]).lower() == "host":  # (header, *values)
            method, path, checked = writing
            host = header_host(args[1])
            if host != checked.lower():
                self._check(method, path, host)
        return wrapped(*args, **kwargs)

    async def _arequest(self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                        kwargs: dict[str, Any]) -> Any:
        """One hop of an aiohttp request (its URL resolved, redirects followed), before it is written.
        A WebSocket session (OpenAI Realtime) is not a call the guard can price: never free."""
        method, url, headers = str(instance.method), instance.url, instance.headers
        if method != "CONNECT":  # a proxy's tunnel: the request it carries is checked
            if str(headers.get("upgrade", "")).lower() == "websocket":
                method = "WEBSOCKET"
            self._check(method, url.raw_path, url.host or "", header_host(headers.get("host")))
        return await wrapped(*args, **kwargs)


# One integration per HTTP client package, patched when that package is imported.
def _integration(package: str) -> Integration:
    return Integration(None, lambda guard: TripwireHook(guard, package))


INTEGRATIONS = {package: _integration(package) for package in ("http.client", "httpx", "httpx2", "aiohttp")}
