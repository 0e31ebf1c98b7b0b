"""The Anthropic-wire server beside the shared OpenAI-wire ``server`` (fresh for every test) and
the session's event loop."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from tests.servers.anthropic_server import LocalAnthropicServer

pytest.register_assert_rewrite("tests.frameworks.support")

T = TypeVar("T")
Run = Callable[[Coroutine[Any, Any, T]], T]


@pytest.fixture(scope="session")
def _anthropic_server() -> Iterator[LocalAnthropicServer]:
    with LocalAnthropicServer() as srv:
        yield srv


@pytest.fixture
def anthropic_server(_anthropic_server: LocalAnthropicServer) -> LocalAnthropicServer:
    _anthropic_server.reset()
    return _anthropic_server


@pytest.fixture(scope="session")
def run() -> Iterator[Run[Any]]:
    """``run(coro)`` on one event loop for the whole session, as an application has (the frameworks
    cache their async HTTP clients per ``base_url``; a client cannot outlive its loop), in the
    caller's context, as ``asyncio.run`` would, so the caller's scope applies."""
    with asyncio.Runner() as runner:
        yield lambda coro: runner.run(coro, context=contextvars.copy_context())
