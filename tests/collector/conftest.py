"""Session fixtures for the real collector and the real Phoenix (each obtained once, then cached)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.collector.support import obtain_otelcol, obtain_phoenix


@pytest.fixture(scope="session")
def otelcol() -> Path:
    return obtain_otelcol()


@pytest.fixture(scope="session")
def phoenix_command() -> Path:
    return obtain_phoenix()
