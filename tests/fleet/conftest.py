"""Fleet fixtures: the session's real redis-server (shared with the ledger tests)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.redis_server import RedisServer, shared_server, stop_shared_server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    yield shared_server()
    stop_shared_server()
