"""RFC 8785 (JCS) canonical JSON for receipts.

The fastest path is ``orjson`` with sorted keys and the 53-bit integer limit: taken when the value is
made only of exact ``dict``/``list``/``str``/``int``/``bool``/``None`` and every object key is ASCII (so
UTF-8 byte order, orjson's, is UTF-16 code unit order, JCS's). orjson escapes strings exactly as JCS
does (the short escapes, ``\\u00xx`` for the other C0 controls, everything else raw UTF-8). Whatever
orjson refuses (an integer past 2**53 - 1, a lone surrogate, deep nesting) and every other value takes
the path below, which also raises the precise error; a property test proves the bytes identical to
``rfc8785.dumps``.

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
from itertools import compress
from typing import Any

import orjson
import rfc8785

MAX_SAFE_INTEGER = 2**53 - 1
_HIGH_BMP = re.compile("[\ue000-\uffff]")
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")
_dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                         check_circular=False).encode
_ORJSON_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER
_SCALARS = frozenset({str, int, bool, type(None)})
_CONTAINERS = frozenset({dict, list})
_PLAIN = _SCALARS | _CONTAINERS


def canonical_json(obj: Any) -> bytes:
    """The RFC 8785 bytes of ``obj``; TypeError for values a receipt may not hold.

    Strings must be valid Unicode (a lone surrogate raises ``UnicodeEncodeError``, a ValueError)."""
    fast = _orjson_form(obj)
    return fast if fast is not None else _reference_json(obj)


def _orjson_form(obj: Any) -> bytes | None:
    """orjson's bytes where they are the JCS bytes, else None (the reference path then says exactly
    what is wrong, or serializes it). ASCII output proves every key ASCII without looking at one."""
    if not _plain(obj):
        return None
    try:
        out = orjson.dumps(obj, option=_ORJSON_OPTIONS)
    except orjson.JSONEncodeError:  # a key that is not a str, an integer past 2**53 - 1, a lone surrogate
        return None
    return out if out.isascii() or _ascii_keys(obj) else None


def _plain(obj: Any) -> bool:
    """Only exact receipt types, checked a container at a time (``set(map(type, ...))`` runs in C: a
    check per node in Python would cost more than orjson's whole serialization)."""
    if type(obj) not in _CONTAINERS:
        return type(obj) in _SCALARS
    stack = [obj]
    while stack:
        item = stack.pop()
        values = item.values() if type(item) is dict else item
        kinds = set(map(type, values))
        if not kinds <= _SCALARS:
            if not kinds <= _PLAIN:
                return False
            stack.extend(compress(values, map(_CONTAINERS.__contains__, map(type, values))))
    return True


def _ascii_keys(obj: Any) -> bool:
    """Every key of every object in a plain value is ASCII."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if type(item) is dict:
            if not "".join(item).isascii():
                return False
            stack.extend(item.values())
        elif type(item) is list:
            stack.extend(item)
    return True


def _reference_json(obj: Any) -> bytes:
    """The stdlib encoder where it equals JCS, ``rfc8785`` otherwise; the precise TypeError."""
    if _fast_path_safe(obj):
        return _dumps(obj).encode("utf-8")
    return rfc8785.dumps(obj)


def _fast_path_safe(obj: Any) -> bool:
    """Validate the value's types; True when no object key could sort differently under JCS.

    One loop over an explicit stack: this runs on every receipt, and a call per node would cost more
    than the serialization itself."""
    safe = True
    stack = [obj]
    pop, push, extend = stack.pop, stack.append, stack.extend
    while stack:
        item = pop()
        kind = type(item)
        if kind is str or kind is bool or item is None:
            continue
        if kind is int:
            if -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                continue
            raise TypeError(f"integer {item} is outside the JSON-safe range +-(2**53-1) that RFC 8785 allows")
        if kind is dict:
            high_bmp = astral = False
            for key, value in item.items():
                if type(key) is not str:
                    raise TypeError(f"object keys must be strings, got {type(key).__name__} {key!r}")
                if not key.isascii():
                    high_bmp = high_bmp or _HIGH_BMP.search(key) is not None
                    astral = astral or _ASTRAL.search(key) is not None
                push(value)
            if high_bmp and astral:
                safe = False
        elif kind is list:
            extend(item)
        elif isinstance(item, str):  # str subclasses (StrEnum) serialize as their text in both encoders
            continue
        elif isinstance(item, int) and not isinstance(item, bool):
            push(int(item))
        else:
            raise TypeError(f"receipts hold only str, int, bool, None, list and dict; got {kind.__name__}")
    return safe
