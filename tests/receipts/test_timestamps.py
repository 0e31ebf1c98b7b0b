"""Receipt timestamps: RFC 3339 UTC with microseconds, the same text datetime gives for the instant."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentguard_otel.receipts import writer


@given(st.lists(st.integers(min_value=0, max_value=4_102_444_800 * 10**9), min_size=1, max_size=8))
def test_a_timestamp_is_the_instant_in_utc_to_the_microsecond(instants: list[int]) -> None:
    with pytest.MonkeyPatch.context() as patch:
        for ns in instants:
            patch.setattr(time, "time_ns", lambda ns=ns: ns)
            expected = datetime.fromtimestamp(ns // 10**9, tz=timezone.utc).replace(microsecond=ns // 1000 % 10**6)
            assert writer._utc_timestamp() == expected.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
