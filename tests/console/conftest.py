"""Fixtures of the console tests: a ledger and receipt log filled by real guarded calls."""

from __future__ import annotations

from typing import Any

import pytest

from tests.console.support import Filled, fill


@pytest.fixture
def filled(guarded: Any, server: Any, otel: Any) -> Filled:
    return fill(guarded, server, otel.tracer_provider.get_tracer("tests.console"))
