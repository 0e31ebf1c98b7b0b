"""The receipt format, shared by the writer and the verifier so both agree byte for byte.

A receipt is one JSON object: ``v, kind, chain, seq, prev, ts``, the body fields, ``key_id``, ``hash``
and ``sig``. ``hash`` is the hex SHA-256 of the RFC 8785 form of everything but ``hash`` and ``sig``;
``sig`` is the standard padded base64 of the Ed25519 signature over the 32 raw digest bytes. On disk a
receipt is its canonical (hashed) form with ``hash`` and ``sig`` appended as the last two members, plus
``"\\n"``: the receipt is serialized once, and a line's bytes are fully determined by its signed content.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from typing import Any, Final

from agentguard_otel.receipts.canonical import canonical_json
from agentguard_otel.receipts.keys import SigningKey

VERSION: Final = 1
ZERO_HASH: Final = "0" * 64
KINDS: Final = frozenset({"decision", "settlement", "adjustment", "checkpoint"})
SEALED_FIELDS: Final = ("hash", "sig")
RESERVED_FIELDS: Final = frozenset({"v", "kind", "chain", "seq", "prev", "ts", "key_id", *SEALED_FIELDS})

def unsigned_form(receipt: Mapping[str, Any]) -> bytes:
    """The canonical form of the receipt without its seal: what ``hash`` is the digest of."""
    return canonical_json({name: value for name, value in receipt.items() if name not in SEALED_FIELDS})


def digest_of(receipt: Mapping[str, Any]) -> bytes:
    """SHA-256 of the canonical form of the receipt without its seal (``hash`` and ``sig``)."""
    return hashlib.sha256(unsigned_form(receipt)).digest()


def line_of(unsigned: bytes, hash_hex: str, sig: str) -> bytes:
    """A segment file line from the unsigned form and the seal."""
    return b"%s,\"hash\":\"%s\",\"sig\":\"%s\"}\n" % (unsigned[:-1], hash_hex.encode(), sig.encode())


class Sealed(dict[str, Any]):
    """A receipt as it was written: its fields, and ``line``, the exact bytes that carry them (so
    whoever passes it on — a log record — need not serialize it again)."""

    line: bytes


def seal(fields: dict[str, Any], key: SigningKey) -> tuple[Sealed, bytes]:
    """Add ``hash`` and ``sig`` to an unsigned receipt (which must already carry ``key_id``); returns
    the sealed receipt and its line, from one serialization."""
    unsigned = canonical_json(fields)
    digest = hashlib.sha256(unsigned).digest()
    receipt = Sealed(fields)
    receipt["hash"] = digest.hex()
    receipt["sig"] = base64.b64encode(key.sign(digest)).decode("ascii")
    receipt.line = line_of(unsigned, receipt["hash"], receipt["sig"])
    return receipt, receipt.line


def receipt_line(receipt: Mapping[str, Any]) -> bytes:
    """The exact bytes of a receipt's line in a segment file, newline included."""
    return line_of(unsigned_form(receipt), str(receipt["hash"]), str(receipt["sig"]))
