"""The receipt format, shared by the writer and the verifier so both agree byte for byte.

A receipt is one JSON object: ``v, kind, chain, seq, prev, ts``, the body fields, ``key_id``, ``hash``
and ``sig``. ``hash`` is the hex SHA-256 of the RFC 8785 form of everything but ``hash`` and ``sig``;
``sig`` is the standard padded base64 of the Ed25519 signature over the 32 raw digest bytes. On disk a
receipt is the compact JSON of the object in that field order plus ``"\\n"`` (no whitespace, raw
UTF-8), so a line's bytes are fully determined by its signed content.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final

from agentguard_otel.receipts.canonical import canonical_json
from agentguard_otel.receipts.keys import SigningKey

VERSION: Final = 1
ZERO_HASH: Final = "0" * 64
KINDS: Final = frozenset({"decision", "settlement", "checkpoint"})
SEALED_FIELDS: Final = ("hash", "sig")
RESERVED_FIELDS: Final = frozenset({"v", "kind", "chain", "seq", "prev", "ts", "key_id", *SEALED_FIELDS})

_line_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False).encode


def digest_of(receipt: Mapping[str, Any]) -> bytes:
    """SHA-256 of the canonical form of the receipt without its seal (``hash`` and ``sig``)."""
    unsigned = {name: value for name, value in receipt.items() if name not in SEALED_FIELDS}
    return hashlib.sha256(canonical_json(unsigned)).digest()


def seal(fields: dict[str, Any], key: SigningKey) -> dict[str, Any]:
    """Add ``hash`` and ``sig`` to an unsigned receipt (which must already carry ``key_id``)."""
    digest = digest_of(fields)
    fields["hash"] = digest.hex()
    fields["sig"] = base64.b64encode(key.sign(digest)).decode("ascii")
    return fields


def receipt_line(receipt: Mapping[str, Any]) -> bytes:
    """The exact bytes of a receipt's line in a segment file, newline included."""
    return (_line_encoder(receipt) + "\n").encode("utf-8")
