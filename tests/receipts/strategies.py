"""Hypothesis strategies for receipt-shaped values."""

from __future__ import annotations

from hypothesis import strategies as st

from agentguard_otel.receipts.canonical import MAX_SAFE_INTEGER
from agentguard_otel.receipts.format import RESERVED_FIELDS

# Every code point but surrogates (UTF-8 cannot carry them), C0 controls and DEL included.
text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
# Keys biased towards the code points where UTF-16 and code-point order disagree.
key_text = st.one_of(
    text,
    st.text(st.sampled_from(["a", "\x00", "\x7f", "\u00e9", "\ud7ff", "\ue000", "\uffff", "\U00010000",
                             "\U0001f600", "\U0010ffff"]), max_size=4),
)
scalars = st.one_of(st.none(), st.booleans(), text,
                    st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER),
                    st.sampled_from([0, -1, MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER, 2**31, 10**15]))
receipt_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=5),
                               st.dictionaries(key_text, children, max_size=6)),
    max_leaves=30,
)
bodies = st.dictionaries(key_text.filter(lambda k: k not in RESERVED_FIELDS), receipt_values, max_size=6)
# Receipt-shaped values whose keys are ASCII (as the guard's are): the values orjson serializes.
ascii_key = st.text(st.characters(max_codepoint=0x7F), max_size=8)
ascii_key_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=5), st.dictionaries(ascii_key, children, max_size=6)),
    max_leaves=30,
)
# What a caller might wrongly hand over: floats, integers past the limits, lone surrogates, tuples,
# non-str keys, subclasses; mixed into receipt-shaped values.
wrong = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([2**53, -(2**53), 2**63, 2**64, -(2**63) - 1, 10**30, (1, 2), b"x", {1: 2}, {None: 1}]),
    st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3),
)
any_values = st.recursive(
    st.one_of(scalars, wrong),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(ascii_key, children, max_size=4),
                               st.dictionaries(key_text, children, max_size=4)),
    max_leaves=20,
)
