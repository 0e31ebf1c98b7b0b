"""Fixtures for receipt tests: keys in a temp directory, a writer factory, receipt-shaped bodies."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agentguard_otel.receipts import ReceiptWriter, SigningKey, load_public_keys

WriterFactory = Callable[..., ReceiptWriter]


def decision_body(n: int = 0) -> dict[str, Any]:
    """A decision body shaped like the guard's."""
    return {
        "call_id": f"call-{n}",
        "scope": {"tenant": "acme", "team": "eng", "user": "alice", "agent": None, "task": "review",
                  "capability": "read_only"},
        "policy": {"id": "team", "version": 1, "digest": "sha256:" + "ab" * 32},
        "action": "allow", "rule_id": "code-review", "cap": None, "reason": "within caps",
        "provider": "openai", "model_requested": "gpt-4o-mini", "model_effective": "gpt-4o-mini",
        "estimated_nano": 1_234_567 + n, "hold_nano": 1_234_567 + n, "degraded": False,
    }


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.ndjson"))


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    return SigningKey.generate(tmp_path / "keys" / "signer.key")


@pytest.fixture
def trusted(tmp_path: Path, key: SigningKey) -> dict[str, Ed25519PublicKey]:
    return load_public_keys([tmp_path / "keys" / "signer.key.pub"])


@pytest.fixture
def receipts_dir(tmp_path: Path) -> Path:
    return tmp_path / "receipts"


@pytest.fixture
def make_writer(receipts_dir: Path, key: SigningKey) -> Iterator[WriterFactory]:
    """``make_writer(**options)``: a writer on the test's receipts directory, closed at teardown."""
    made: list[ReceiptWriter] = []

    def make(signing_key: SigningKey | None = None, **options: Any) -> ReceiptWriter:
        writer = ReceiptWriter(receipts_dir, signing_key or key, **options)
        made.append(writer)
        return writer

    yield make
    for writer in made:
        writer.close()
