"""Signed, hash-chained receipts: canonical form, keys, the per-process writer, verification."""

from agentguard_otel.receipts.canonical import canonical_json
from agentguard_otel.receipts.format import ZERO_HASH
from agentguard_otel.receipts.keys import SigningKey, key_id_of, load_public_keys
from agentguard_otel.receipts.verify import VerifyReport, verify, verify_records
from agentguard_otel.receipts.writer import ReceiptWriter, segment_file_name

__all__ = [
    "ZERO_HASH",
    "ReceiptWriter",
    "SigningKey",
    "VerifyReport",
    "canonical_json",
    "key_id_of",
    "load_public_keys",
    "segment_file_name",
    "verify",
    "verify_records",
]
