"""The guarded call, once for every SDK: classify -> begin -> rewrite -> send -> observe -> settle.

A hook (at an SDK's choke point) hands the lifecycle an :class:`Exchange` — the one request, the
means to rewrite it and to observe what comes back — and the function that sends it. The one rule
for internal errors lives here:

* before the request leaves, a doubt blocks in enforce mode (with the reason) and changes nothing
  in shadow mode;
* once the provider has answered, nothing raises into the caller: a response that cannot be read
  settles at the reservation, marked degraded, and the caller gets the provider's response as is;
* a provider error releases the hold (or settles the reservation when the provider may have billed:
  a timeout, a reply the SDK could not parse), and is re-raised untouched.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, Protocol

from agentguard_otel.call import LLMRequest, RequestChanges, ResponseInfo, UnknownEndpoint
from agentguard_otel.guard import Guard, GuardedCall, Refusal

logger = logging.getLogger(__name__)

Arguments = tuple[tuple[Any, ...], dict[str, Any]]

# True while a request that passed a choke point is being sent: the transport tripwire lets it by.
_SENDING: ContextVar[bool] = ContextVar("agentguard_sending", default=False)


def at_choke_point() -> bool:
    """Whether the HTTP request being made now is one the lifecycle is sending."""
    return _SENDING.get()


def _send(send: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    token = _SENDING.set(True)
    try:
        return send(*args, **kwargs)
    finally:
        _SENDING.reset(token)


async def _send_async(send: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    token = _SENDING.set(True)
    try:
        return await send(*args, **kwargs)
    finally:
        _SENDING.reset(token)


class Settler(Protocol):
    """What an adapter's response observer reports to (it knows no ledger or receipt)."""

    def finish(self, info: ResponseInfo, *, complete: bool = True) -> None: ...

    def fail(self, exc: BaseException, status: int | None = None, sent: bool = True) -> None:
        """The provider answered with an error (an HTTP client that returns error statuses)."""
        ...

    def keepalive(self) -> None: ...


class Exchange(Protocol):
    """One request at an SDK's choke point, as its adapter understands it."""

    request: LLMRequest

    def outgoing(self, changes: RequestChanges) -> Arguments:
        """The arguments to send, with the guard's changes applied (the caller's stay untouched)."""
        ...

    def observe(self, result: Any, settler: Settler) -> Any:
        """Read usage from the result (now, or as its body is consumed) and report its end to
        ``settler`` exactly once; returns what the caller gets."""
        ...

    def error_status(self, exc: BaseException) -> int | None:
        """The HTTP status of a provider error, when it carries one."""
        ...

    def never_sent(self, exc: BaseException) -> bool:
        """Whether the request certainly did not reach the provider (the connection failed)."""
        ...


class FollowUp(ABC):
    """A request that fetches the result of a call settled before its usage was known (a
    background response): nothing is decided; its usage corrects that call's settlement."""

    response_id: str

    @abstractmethod
    def observe(self, result: Any, settler: Settler) -> Any:
        """As :meth:`Exchange.observe`."""


class _Correction:
    """The settler of a follow-up: what it reads corrects the deferred call's settlement."""

    def __init__(self, guard: Guard, response_id: str) -> None:
        self._guard = guard
        self._response_id = response_id

    def finish(self, info: ResponseInfo, *, complete: bool = True) -> None:
        if complete:
            self._guard.adjust(self._response_id, info)

    def fail(self, exc: BaseException, status: int | None = None, sent: bool = True) -> None:
        """A follow-up that failed corrects nothing: the reservation stands."""

    def keepalive(self) -> None:
        """Nothing is held for a follow-up."""


Classified = Exchange | FollowUp | UnknownEndpoint | None  # None: a free request (listed as such)


def run(guard: Guard | Refusal | None, classify: Callable[[], Classified], send: Callable[..., Any],
        args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Guard one synchronous SDK request."""
    if guard is None:
        return _send(send, args, kwargs)
    if isinstance(guard, Refusal):
        if _needs_guard(classify):
            guard.refuse()
        return _send(send, args, kwargs)
    begun = _begin(guard, classify)
    if isinstance(begun, FollowUp):
        return _observe(begun, _Correction(guard, begun.response_id), _send(send, args, kwargs))
    if begun is None:
        return _send(send, args, kwargs)
    exchange, call = begun
    out_args, out_kwargs = _outgoing(exchange, call, args, kwargs)
    try:
        result = _send(send, out_args, out_kwargs)
    except BaseException as exc:
        call.fail(exc, exchange.error_status(exc), sent=not exchange.never_sent(exc))
        raise
    return _observe(exchange, call, result)


async def run_async(guard: Guard | Refusal | None, classify: Callable[[], Awaitable[Classified]],
                    send: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Guard one asynchronous SDK request. A remote ledger is a network round trip: its work runs in
    a worker thread (the context, and so the scope, goes with it) so the event loop keeps serving."""
    if guard is None:
        return await _send_async(send, args, kwargs)
    try:
        exchange = await classify()
    except Exception as exc:
        if isinstance(guard, Refusal):
            guard.refuse()
        guard.unreadable(exc)  # raises in enforce mode
        exchange = None
    if isinstance(guard, Refusal):
        if exchange is not None:
            guard.refuse()
        return await _send_async(send, args, kwargs)
    if isinstance(exchange, UnknownEndpoint):
        guard.unguarded(exchange)  # raises when blocked
        return await _send_async(send, args, kwargs)
    if exchange is None:
        return await _send_async(send, args, kwargs)
    offload = guard.ledger.remote
    if isinstance(exchange, FollowUp):
        result = await _send_async(send, args, kwargs)
        correction = _Correction(guard, exchange.response_id)
        if offload:
            return await asyncio.to_thread(_observe, exchange, correction, result)
        return _observe(exchange, correction, result)
    call = await asyncio.to_thread(guard.begin, exchange.request) if offload else guard.begin(exchange.request)
    out_args, out_kwargs = _outgoing(exchange, call, args, kwargs)
    try:
        result = await _send_async(send, out_args, out_kwargs)
    except BaseException as exc:
        call.fail(exc, exchange.error_status(exc), sent=not exchange.never_sent(exc))
        raise
    if offload:
        return await asyncio.to_thread(_observe, exchange, call, result)
    return _observe(exchange, call, result)


def _needs_guard(classify: Callable[[], Classified]) -> bool:
    """Whether a request is anything but a listed free one (an unreadable one needs a guard too)."""
    try:
        return classify() is not None
    except Exception:
        return True


def _begin(guard: Guard, classify: Callable[[], Classified]) -> tuple[Exchange, GuardedCall] | FollowUp | None:
    try:
        exchange = classify()
    except Exception as exc:
        guard.unreadable(exc)  # raises in enforce mode
        return None
    if isinstance(exchange, UnknownEndpoint):
        guard.unguarded(exchange)  # raises when blocked
        return None
    if exchange is None or isinstance(exchange, FollowUp):
        return exchange
    return exchange, guard.begin(exchange.request)


def _outgoing(exchange: Exchange, call: GuardedCall, args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> Arguments:
    try:
        return exchange.outgoing(call.changes)
    except Exception as exc:
        call.unsent(exc)  # releases the hold; raises in enforce mode
        return args, kwargs


def _observe(exchange: Exchange | FollowUp, settler: Settler, result: Any) -> Any:
    try:
        return exchange.observe(result, settler)
    except Exception as exc:
        logger.error("agentguard: could not read a response (%s); its call settles at the reservation",
                     type(exc).__name__)
        settler.finish(ResponseInfo(problem=f"response unreadable: {type(exc).__name__}"))
        return result


__all__ = ["Arguments", "Exchange", "FollowUp", "Settler", "run", "run_async"]
