"""Provider JSON is read fast (orjson) only where that reading is the stdlib's exact-decimal one."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from agentguard_otel.providers.stream import loads

LIMITS = [2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**19, -(10**19)]
numbers = st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.sampled_from(LIMITS),
                    st.floats(allow_nan=False), st.decimals(allow_nan=False, allow_infinity=False).map(float))
values = st.recursive(
    st.none() | st.booleans() | numbers | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)


def _stdlib(raw: bytes | str) -> Any:
    return json.loads(raw, parse_float=Decimal)


def _same_reading(raw: bytes | str) -> None:
    try:
        expected = _stdlib(raw)
    except ValueError as exc:
        try:
            loads(raw)
        except ValueError as ours:
            assert type(ours) is type(exc)
            return
        raise AssertionError(f"{raw!r} is refused by the stdlib but read by loads") from None
    got = loads(raw)
    assert got == expected
    assert repr(got) == repr(expected)  # the same types throughout: Decimal, never float


@given(values)
def test_any_json_value_reads_exactly_as_the_stdlib_reads_it(value: Any) -> None:
    _same_reading(json.dumps(value).encode())
    _same_reading(json.dumps(value, ensure_ascii=False))


@given(st.binary(max_size=64))
def test_any_bytes_are_read_or_refused_as_the_stdlib_does(raw: bytes) -> None:
    _same_reading(raw)


def test_costs_stay_decimal_and_what_orjson_refuses_is_read_by_the_stdlib() -> None:
    event = loads(b'{"model":"gpt-4o","usage":{"prompt_tokens":3,"cost":0.000012345678901234567891}}')
    assert event["usage"]["cost"] == Decimal("0.000012345678901234567891")
    assert loads(b'{"n": 123456789012345678901234567890}') == {"n": 123456789012345678901234567890}
    assert repr(loads(b'{"x": NaN}')) == repr(_stdlib(b'{"x": NaN}')) == "{'x': nan}"
    assert loads(b'{"s": "\\ud800"}') == {"s": "\ud800"}
    assert loads(b'{"model":"gpt-4.1","n":2}') == {"model": "gpt-4.1", "n": 2}
    for limit in LIMITS:
        assert repr(loads(json.dumps({"n": [limit]}))) == repr({"n": [limit]})
