"""canonical_json is RFC 8785: byte-identical to the rfc8785 reference, fast path included."""

from __future__ import annotations

import json
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings

from agentguard_otel.receipts import canonical_json
from agentguard_otel.receipts.canonical import _dumps, _fast_path_safe

from .strategies import receipt_values


@settings(max_examples=500)
@given(receipt_values)
def test_canonical_json_is_byte_identical_to_rfc8785(value: Any) -> None:
    assert canonical_json(value) == rfc8785.dumps(value)


@settings(max_examples=500)
@given(receipt_values)
def test_fast_path_is_taken_only_where_it_is_byte_identical(value: Any) -> None:
    if _fast_path_safe(value):
        assert _dumps(value).encode() == rfc8785.dumps(value)


def test_fast_path_covers_ordinary_receipts() -> None:
    receipt: Any = {"v": 1, "kind": "decision", "scope": {"user": "zoë", "team": "ünïcode"}, "n": -5,
               "emoji": "😀", "ctl": "\x00\x1f\x7f\u2028", "keys": {"é": 1, "😀": 2}}
    assert _fast_path_safe(receipt)
    assert canonical_json(receipt) == rfc8785.dumps(receipt)


def test_keys_that_sort_differently_in_utf16_take_the_reference_path() -> None:
    value = {"\ue000": 1, "\U0001f600": 2}
    assert not _fast_path_safe(value)
    # JCS: U+1F600 is the surrogate pair D83D DE00, which sorts before E000.
    assert canonical_json(value) == '{"\U0001f600":2,"\ue000":1}'.encode()
    assert json.dumps(value, sort_keys=True, ensure_ascii=False).startswith('{"\ue000"')


@pytest.mark.parametrize("bad", [1.5, float("nan"), (1, 2), {1: "x"}, {"a": {"b": [0.0]}}, b"bytes", {1, 2}])
def test_values_a_receipt_may_not_hold_raise_type_error(bad: Any) -> None:
    with pytest.raises(TypeError):
        canonical_json(bad)


@pytest.mark.parametrize("big", [2**53, -(2**53), 10**30])
def test_integers_beyond_the_double_safe_range_are_refused(big: int) -> None:
    with pytest.raises(TypeError, match="outside the JSON-safe range"):
        canonical_json({"n": big})


def test_lone_surrogates_are_refused() -> None:
    with pytest.raises(ValueError):
        canonical_json({"s": "\ud800"})
