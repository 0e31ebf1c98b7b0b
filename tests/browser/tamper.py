"""The tamper corpus: receipt logs with every kind of damage ``verify`` detects, built with the receipt
tests' own helpers, so the CLI and the browser page are handed the very same files."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agentguard_otel.receipts import ZERO_HASH, ReceiptWriter, SigningKey
from agentguard_otel.receipts.format import receipt_line, seal
from tests.receipts.conftest import decision_body, read_lines, segments
from tests.receipts.test_verify import _resign, edit_lines, write_log


@dataclass
class Case:
    """Segment files (in the order they are handed over), trusted key files, expected heads."""

    files: list[Path]
    keys: list[Path]
    expect: list[str] = field(default_factory=list)


@dataclass
class Lab:
    """A case's directory and its trusted signer."""

    root: Path
    key: SigningKey

    def writer(self, **options: Any) -> ReceiptWriter:
        return ReceiptWriter(self.root, self.key, **options)

    def log(self, count: int = 6, **options: Any) -> tuple[ReceiptWriter, Path]:
        return write_log(self.writer, count, **options)

    def case(self, files: list[Path], expect: list[str] | None = None) -> Case:
        return Case(files, [self.root / "signer.key.pub"], expect or [])

    def edited(self, edit: Callable[[list[bytes]], list[bytes]]) -> Case:
        """The standard log (six receipts and a checkpoint) with its lines edited."""
        _, path = self.log()
        edit_lines(path, edit)
        return self.case([path])

    def replaced(self, *edits: tuple[int, bytes, bytes]) -> Case:
        """The standard log with ``old`` replaced by ``new`` in line ``index``, for each edit."""
        _, path = self.log()
        for index, old, new in edits:
            _replace(path, index, old, new)
        return self.case([path])

    def forged(self, name: str, receipts: list[dict[str, Any]]) -> Case:
        """Receipts sealed with the trusted key itself (a faulty writer): what only the later checks catch."""
        path = self.root / name
        path.write_bytes(b"".join(seal(dict(r), self.key)[1] for r in receipts))
        return self.case([path])


def _chain(lab: Lab) -> str:
    return f"{lab.key.key_id}:0123456789ab"


def _receipt(lab: Lab, seq: int, prev: str, **fields: Any) -> dict[str, Any]:
    return {"v": 1, "kind": "decision", "chain": _chain(lab), "seq": seq, "prev": prev,
            "ts": "2026-01-01T00:00:00.000000Z", **decision_body(seq), "key_id": lab.key.key_id, **fields}


def _replace(path: Path, index: int, old: bytes, new: bytes) -> None:
    def edit(lines: list[bytes]) -> list[bytes]:
        assert old in lines[index], (old, lines[index])
        return [*lines[:index], lines[index].replace(old, new, 1), *lines[index + 1:]]

    edit_lines(path, edit)


def valid(lab: Lab) -> Case:
    return lab.case([lab.log()[1]])


def multi_chain_segments(lab: Lab) -> Case:
    other = SigningKey.generate(lab.root / "other.key")
    writers = [lab.writer(segment_max_bytes=1500), ReceiptWriter(lab.root, other, segment_max_bytes=1500)]
    for n in range(10):
        writers[n % 2].append("decision", decision_body(n))
    for w in writers:
        w.close()
    keys = lab.root / "team.keys"
    keys.write_bytes(b"# the team's signers\n" + lab.key.public_key_pem() + b"\n" + other.public_key_pem())
    return Case(list(reversed(segments(lab.root))), [keys])


def missing_segment(lab: Lab) -> Case:
    writer = lab.writer(segment_max_bytes=1500)
    for n in range(8):
        writer.append("decision", decision_body(n))
    writer.close()
    files = segments(lab.root)
    assert len(files) >= 3
    return lab.case([files[0], *files[2:]])


def edited_field(lab: Lab) -> Case:
    _, path = lab.log()

    def raise_cost(lines: list[bytes]) -> list[bytes]:
        receipt = json.loads(lines[2])
        receipt["estimated_nano"] = 1
        return [*lines[:2], receipt_line(receipt), *lines[3:]]

    edit_lines(path, raise_cost)
    return lab.case([path])


def deleted(lab: Lab) -> Case:
    return lab.edited(lambda lines: lines[:2] + lines[3:])


def swapped(lab: Lab) -> Case:
    return lab.edited(lambda lines: [*lines[:2], lines[3], lines[2], *lines[4:]])


def replayed(lab: Lab) -> Case:
    return lab.edited(lambda lines: [*lines[:4], lines[2], *lines[4:]])


def deleted_first(lab: Lab) -> Case:
    return lab.edited(lambda lines: lines[1:])


def truncated(lab: Lab) -> Case:
    writer, path = lab.log()
    edit_lines(path, lambda lines: lines[:4])
    return lab.case([path], [f"{writer.chain}={writer.head[2]}"])


def earlier_head(lab: Lab) -> Case:
    writer, path = lab.log()
    return lab.case([path], [f"{writer.chain}={read_lines(path)[2]['hash']}"])


def absent_chain(lab: Lab) -> Case:
    return lab.case([lab.log()[1]], [f"ed25519:0000000000000000:000000000000={'ab' * 32}"])


def untrusted(lab: Lab) -> Case:
    _, path = lab.log()
    stranger = SigningKey.generate(lab.root / "stranger.key")
    assert stranger.key_id != lab.key.key_id
    return Case([path], [lab.root / "stranger.key.pub"])


def re_signed(lab: Lab) -> Case:
    _, path = lab.log()
    _resign(path, SigningKey(Ed25519PrivateKey.generate()))
    return lab.case([path])


def re_signed_under_trusted_id(lab: Lab) -> Case:
    _, path = lab.log()
    _resign(path, SigningKey(Ed25519PrivateKey.generate()), claim_key_id=lab.key.key_id)
    return lab.case([path])


def torn(lab: Lab) -> Case:
    _, path = lab.log()
    line = path.read_bytes().splitlines(keepends=True)[2]
    with path.open("ab") as handle:
        handle.write(line[: len(line) // 2])
    return lab.case([path])


def malformed_line(lab: Lab) -> Case:
    return lab.edited(lambda lines: [*lines[:2], b"{not json\n", *lines[2:]])


def bad_json_variants(lab: Lab) -> Case:
    return lab.edited(lambda lines: [*lines[:1], b'{"a":1,"b":[1,2,]}\n', *lines[1:]])


def empty_line(lab: Lab) -> Case:
    return lab.edited(lambda lines: [*lines[:3], b"\n", *lines[3:]])


def re_encoded(lab: Lab) -> Case:
    writer = lab.writer()
    writer.append("decision", {**decision_body(), "note": "tab\there"})
    writer.close()
    (path,) = segments(lab.root)
    _replace(path, 0, b"\\t", b"\\u0009")
    return lab.case([path])


def crlf(lab: Lab) -> Case:
    return lab.edited(lambda lines: [lines[0], lines[1][:-1] + b"\r\n", *lines[2:]])


def duplicate_key(lab: Lab) -> Case:
    return lab.replaced((1, b'"action":"allow"', b'"action":"block","action":"allow"'))


def _noted(lab: Lab, note: str, old: bytes, new: bytes) -> Case:
    """Two receipts, the second with a ``note``, then ``old`` replaced by ``new`` in its line."""
    writer = lab.writer()
    writer.append("decision", decision_body(0))
    writer.append("decision", {**decision_body(1), "note": note})
    writer.close()
    (path,) = segments(lab.root)
    _replace(path, 1, old, new)
    return lab.case([path])


def non_utf8(lab: Lab) -> Case:
    return _noted(lab, "caf\u00e9", "caf\u00e9".encode(), b"caf\xe9")


def truncated_utf8_sequence(lab: Lab) -> Case:
    return _noted(lab, "x\U0001f600y", "\U0001f600".encode(), b"\xf0\x9f\x98")


def encoded_surrogate(lab: Lab) -> Case:
    return _noted(lab, "x\u00e9y", "\u00e9".encode(), b"\xed\xa0\x80")


def escaped_lone_surrogate(lab: Lab) -> Case:
    return _noted(lab, "xy", b'"xy"', b'"x\\ud83dy"')


def byte_order_mark(lab: Lab) -> Case:
    return lab.edited(lambda lines: [lines[0], b"\xef\xbb\xbf" + lines[1], *lines[2:]])


def utf16_line(lab: Lab) -> Case:
    return lab.edited(lambda lines: [lines[0], b"\x00{}\n", *lines[1:]])


def huge_integer(lab: Lab) -> Case:
    return lab.replaced((1, b'"estimated_nano":1234568', b'"estimated_nano":123456789012345678901234567890'))


def integer_past_2_53(lab: Lab) -> Case:
    return lab.replaced((1, b'"estimated_nano":1234568', b'"estimated_nano":9007199254740993'))


def huge_seq(lab: Lab) -> Case:
    return lab.replaced((1, b'"seq":1', b'"seq":1180591620717411303424'))


def float_and_nan(lab: Lab) -> Case:
    return lab.replaced((1, b'"estimated_nano":1234568', b'"estimated_nano":1.5'),
                        (2, b'"estimated_nano":1234569', b'"estimated_nano":NaN'))


def too_deep_to_read(lab: Lab) -> Case:
    """Past orjson's 1024 levels: json.loads reads the line, and recurses too deep."""
    return lab.edited(lambda lines: [lines[0], b"[" * 1100 + b"]" * 1100 + b"\n", *lines[1:]])


def too_deep_to_serialize(lab: Lab) -> Case:
    """orjson reads 1000 levels, serializes no more than 255: verify re-reads the line with json.loads."""
    return lab.replaced((1, b'"policy":', b'"deep":' + b"[" * 1000 + b"]" * 1000 + b',"policy":'))


def not_an_object(lab: Lab) -> Case:
    return lab.edited(lambda lines: [lines[0], b'[1, "chain", {"seq": 1}]\n', *lines[1:]])


def escaped_chain(lab: Lab) -> Case:
    return lab.edited(lambda lines: [lines[0], b'{"chain":"evil\\u001b[31m\\u2028 \\u00a0x","seq":1}\n', *lines[1:]])


def missing_hash(lab: Lab) -> Case:
    return lab.edited(lambda lines: [lines[0], lines[1].split(b',"hash"')[0] + b"}\n", *lines[2:]])


def uppercase_hash(lab: Lab) -> Case:
    _, path = lab.log()
    line = path.read_bytes().splitlines(keepends=True)[1]
    digest = json.loads(line)["hash"]
    _replace(path, 1, digest.encode(), digest.upper().encode())
    return lab.case([path])


def non_canonical_signature(lab: Lab) -> Case:
    _, path = lab.log()
    sig = json.loads(path.read_bytes().splitlines()[1])["sig"]
    assert sig.endswith("==")
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".index(sig[-3])
    _replace(path, 1, sig.encode(), (sig[:-3] + "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
                                     [last ^ 1] + "==").encode())
    return lab.case([path])


def untrusted_odd_key_id(lab: Lab) -> Case:
    return lab.forged("odd.00000.ndjson", [_receipt(lab, 0, ZERO_HASH, key_id="ed25519:'\"\x07\u00e9")])


def unsupported_version(lab: Lab) -> Case:
    return lab.forged("v2.00000.ndjson", [_receipt(lab, 0, ZERO_HASH, v=2, kind="weird 'kind'")])


def version_true(lab: Lab) -> Case:
    return lab.forged("vtrue.00000.ndjson", [_receipt(lab, 0, ZERO_HASH, v=True, kind=None)])


def unhashable_kind(lab: Lab) -> Case:
    return lab.forged("kind.00000.ndjson", [_receipt(lab, 0, ZERO_HASH, kind=["decision", {"x": 1}])])


def ts_not_a_string(lab: Lab) -> Case:
    return lab.forged("ts.00000.ndjson", [_receipt(lab, 0, ZERO_HASH, ts=1767225600)])


def key_id_not_of_chain(lab: Lab) -> Case:
    return lab.forged("chain.00000.ndjson", [_receipt(lab, 0, ZERO_HASH, chain="ed25519:ffffffffffffffff:01")])


def bad_first_prev(lab: Lab) -> Case:
    return lab.forged("prev.00000.ndjson", [_receipt(lab, 0, "1" * 64)])


def _sealed_chain(lab: Lab, receipts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Receipts linked in order (each ``prev`` the hash of the one before), sealed with the trusted key."""
    prev = ZERO_HASH
    out = []
    for receipt in receipts:
        sealed, _ = seal({**receipt, "prev": prev}, lab.key)
        prev = sealed["hash"]
        out.append(sealed)
    return out


def broken_link(lab: Lab) -> Case:
    first, _ = _sealed_chain(lab, [_receipt(lab, 0, ""), _receipt(lab, 1, "")])
    path = lab.root / "link.00000.ndjson"
    second = seal(_receipt(lab, 1, "2" * 64), lab.key)[1]
    path.write_bytes(receipt_line(first) + second)
    return lab.case([path])


def _checkpoint_case(lab: Lab, name: str, head: Any, count: Any, receipts: int = 2) -> Case:
    sealed = _sealed_chain(lab, [_receipt(lab, n, "") for n in range(receipts)])
    checkpoint = {"v": 1, "kind": "checkpoint", "chain": _chain(lab), "seq": receipts, "prev": sealed[-1]["hash"],
                  "ts": "2026-01-01T00:00:01.000000Z", "head": head, "count": count, "key_id": lab.key.key_id}
    if head == "real":
        checkpoint["head"] = {"seq": receipts - 1, "hash": sealed[-1]["hash"]}
    path = lab.root / name
    path.write_bytes(b"".join(receipt_line(r) for r in sealed) + seal(checkpoint, lab.key)[1])
    return lab.case([path])


def checkpoint_wrong_count(lab: Lab) -> Case:
    return _checkpoint_case(lab, "cp.00000.ndjson", "real", 3)


def checkpoint_count_true(lab: Lab) -> Case:
    """verify compares with Python's ==, for which true is 1: a count of true after one receipt passes."""
    return _checkpoint_case(lab, "cp.00000.ndjson", "real", True, receipts=1)


def checkpoint_wrong_head(lab: Lab) -> Case:
    return _checkpoint_case(lab, "cp.00000.ndjson", {"hash": "x'y", "seq": [1, None, False, {"é": "\n"}]}, 2)


def checkpoint_head_missing(lab: Lab) -> Case:
    return _checkpoint_case(lab, "cp.00000.ndjson", None, "two")


def one_bad_chain_of_two(lab: Lab) -> Case:
    _, path_a = lab.log()
    second = lab.writer()
    for n in range(3):
        second.append("decision", decision_body(n))
    second.close()
    (path_b,) = [p for p in segments(lab.root) if p != path_a]
    edit_lines(path_b, lambda lines: lines[:1] + lines[2:])
    return lab.case([path_b, path_a])


CASES: dict[str, Callable[[Lab], Case]] = {
    fn.__name__: fn for fn in (
        valid, multi_chain_segments, missing_segment, edited_field, deleted, swapped, replayed, deleted_first,
        truncated, earlier_head, absent_chain, untrusted, re_signed, re_signed_under_trusted_id, torn,
        malformed_line, bad_json_variants, empty_line, re_encoded, crlf, duplicate_key, non_utf8,
        truncated_utf8_sequence, encoded_surrogate, escaped_lone_surrogate, byte_order_mark, utf16_line,
        huge_integer, integer_past_2_53, huge_seq, float_and_nan, too_deep_to_read, too_deep_to_serialize,
        not_an_object, escaped_chain, missing_hash, uppercase_hash, non_canonical_signature,
        untrusted_odd_key_id, unsupported_version, version_true, unhashable_kind, ts_not_a_string, key_id_not_of_chain,
        bad_first_prev, broken_link, checkpoint_wrong_count, checkpoint_count_true, checkpoint_wrong_head,
        checkpoint_head_missing, one_bad_chain_of_two,
    )
}


def build(name: str, root: Path) -> Case:
    """Build case ``name`` in the empty directory ``root`` (its trusted key is ``signer.key``)."""
    root.mkdir(parents=True, exist_ok=True)
    return CASES[name](Lab(root, SigningKey.generate(root / "signer.key")))
