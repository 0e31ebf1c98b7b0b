"""RFC 8785 (JCS) canonical JSON for receipts.

Receipts hold only strings, integers, booleans, null, lists and objects. For those, the C-accelerated
``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` produces exactly the JCS
bytes, with two exceptions that this module rules out before taking the fast path:

* numbers: JCS writes numbers as IEEE doubles, so floats (whose JCS text differs from Python's) are
  refused and integers must lie within +-(2**53 - 1), where the double and the integer print alike;
* key order: JCS sorts keys by UTF-16 code units, Python by code points. Two keys compare at their
  first differing character; the orders disagree only when one of those is in U+E000..U+FFFF and the
  other is non-BMP (>= U+10000, a surrogate pair in UTF-16 whose lead unit 0xD800..0xDBFF sorts
  *below* U+E000). So an object sorts identically unless its keys contain both a U+E000..U+FFFF
  character and a non-BMP character; such objects (vanishingly rare in receipts) go to ``rfc8785``.

String escaping agrees: both escape ``"``, ``\\`` and U+0000..U+001F (``\\b \\t \\n \\f \\r`` short,
the rest as lowercase ``\\u00xx``) and write everything else as raw UTF-8. A property test proves the
byte identity against ``rfc8785.dumps``.
"""

from __future__ import annotations

import json
import re
from typing import Any

import rfc8785

MAX_SAFE_INTEGER = 2**53 - 1
_HIGH_BMP = re.compile("[\ue000-\uffff]")
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")
_dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                         check_circular=False).encode


def canonical_json(obj: Any) -> bytes:
    """The RFC 8785 bytes of ``obj``; TypeError for values a receipt may not hold.

    Strings must be valid Unicode (a lone surrogate raises ``UnicodeEncodeError``, a ValueError)."""
    if _fast_path_safe(obj):
        return _dumps(obj).encode("utf-8")
    return rfc8785.dumps(obj)


def _fast_path_safe(obj: Any) -> bool:
    """Validate the value's types; True when no object key could sort differently under JCS."""
    kind = type(obj)
    if kind is str or kind is bool or obj is None:
        return True
    if kind is dict:
        safe = True
        high_bmp = astral = False
        for key, value in obj.items():
            if type(key) is not str:
                raise TypeError(f"object keys must be strings, got {type(key).__name__} {key!r}")
            if not key.isascii():
                high_bmp = high_bmp or _HIGH_BMP.search(key) is not None
                astral = astral or _ASTRAL.search(key) is not None
            if not _fast_path_safe(value):
                safe = False
        return safe and not (high_bmp and astral)
    if kind is list:
        return all([_fast_path_safe(item) for item in obj])  # a list, not a generator: check every item
    if isinstance(obj, str):  # str subclasses (StrEnum) serialize as their text in both encoders
        return True
    if isinstance(obj, int) and not isinstance(obj, bool):
        if -MAX_SAFE_INTEGER <= obj <= MAX_SAFE_INTEGER:
            return True
        raise TypeError(f"integer {obj} is outside the JSON-safe range +-(2**53-1) that RFC 8785 allows")
    raise TypeError(f"receipts hold only str, int, bool, None, list and dict; got {kind.__name__}")
