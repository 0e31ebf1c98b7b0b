"""Fixtures for the local OpenAI-compatible server tests: servers on free ports and real SDK clients."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from tests.servers.openai_server import LocalOpenAIServer

from .support import sdk_client


@pytest.fixture(scope="module")
def shared_server() -> Iterator[LocalOpenAIServer]:
    with LocalOpenAIServer() as server:
        yield server


@pytest.fixture
def local(shared_server: LocalOpenAIServer) -> LocalOpenAIServer:
    """The module's default server, with no requests, failures or cuts left from earlier tests."""
    shared_server.reset()
    return shared_server


@pytest.fixture
def make_server() -> Iterator[Callable[..., LocalOpenAIServer]]:
    """Starts a server with custom settings; every one is stopped after the test."""
    started: list[LocalOpenAIServer] = []

    def make(**kwargs: Any) -> LocalOpenAIServer:
        server = LocalOpenAIServer(**kwargs).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def client(local: LocalOpenAIServer) -> Iterator[openai.OpenAI]:
    with sdk_client(local) as sdk:
        yield sdk
