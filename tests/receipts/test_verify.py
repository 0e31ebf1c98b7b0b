"""verify / verify_records: every kind of tampering is detected, with its reason, file, line and seq."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentguard_otel.errors import ConfigError
from agentguard_otel.receipts import (
    ZERO_HASH,
    ReceiptWriter,
    SigningKey,
    load_public_keys,
    segment_file_name,
    verify,
    verify_records,
)
from agentguard_otel.receipts.format import receipt_line, seal

from .conftest import WriterFactory, decision_body, read_lines, segments
from .strategies import bodies

Keys = dict[str, Ed25519PublicKey]


def write_log(make_writer: WriterFactory, count: int = 6, **options: Any) -> tuple[ReceiptWriter, Path]:
    """``count`` receipts plus the final checkpoint in one segment."""
    writer = make_writer(**options)
    for n in range(count):
        writer.append("settlement" if n % 2 else "decision", decision_body(n))
    writer.close()
    (path,) = segments(writer.directory)
    return writer, path


def edit_lines(path: Path, edit: Callable[[list[bytes]], list[bytes]]) -> None:
    path.write_bytes(b"".join(edit(path.read_bytes().splitlines(keepends=True))))


def error(report: Any) -> tuple[int | None, int | None, str]:
    assert not report.ok
    assert report.first_error is not None
    return report.first_error["line"], report.first_error["seq"], report.first_error["reason"]


def test_a_valid_multi_chain_directory_verifies(make_writer: WriterFactory, receipts_dir: Path,
                                                tmp_path: Path, key: SigningKey) -> None:
    other = SigningKey.generate(tmp_path / "other.key")
    writers = [make_writer(), make_writer(), make_writer(other, segment_max_bytes=2000)]
    for n in range(12):
        writers[n % 3].append("decision", decision_body(n))
    for writer in writers:
        writer.close()
    keys_file = tmp_path / "team.keys"
    keys_file.write_bytes(key.public_key_pem() + other.public_key_pem())
    report = verify([receipts_dir], load_public_keys([keys_file]))
    assert report.ok and report.first_error is None and report.torn == []
    assert set(report.chains) == {w.chain for w in writers}
    for writer in writers:
        assert report.chains[writer.chain] == {"seq": writer.head[1], "hash": writer.head[2],
                                               "receipts": writer.head[1] + 1}
    assert report.receipts == sum(w.head[1] + 1 for w in writers)
    assert report.as_dict()["ok"] is True


def test_an_edited_field_is_a_hash_mismatch(make_writer: WriterFactory, trusted: Keys) -> None:
    _, path = write_log(make_writer)

    def raise_cost(lines: list[bytes]) -> list[bytes]:
        receipt = json.loads(lines[2])
        receipt["estimated_nano"] = 1
        return [*lines[:2], receipt_line(receipt), *lines[3:]]

    edit_lines(path, raise_cost)
    report = verify([path], trusted)
    assert error(report) == (3, 2, "hash mismatch: the receipt was edited")
    assert report.first_error is not None and report.first_error["file"] == str(path)


def test_a_deleted_receipt_breaks_the_sequence(make_writer: WriterFactory, trusted: Keys) -> None:
    _, path = write_log(make_writer)
    edit_lines(path, lambda lines: lines[:2] + lines[3:])
    assert error(verify([path], trusted)) == (
        3, 3, "out of order: seq 3 follows seq 1 (receipt missing, reordered or repeated)")


def test_two_swapped_receipts_are_detected(make_writer: WriterFactory, trusted: Keys) -> None:
    _, path = write_log(make_writer)
    edit_lines(path, lambda lines: [*lines[:2], lines[3], lines[2], *lines[4:]])
    assert error(verify([path], trusted)) == (
        3, 3, "out of order: seq 3 follows seq 1 (receipt missing, reordered or repeated)")


def test_a_deleted_first_receipt_is_a_missing_start(make_writer: WriterFactory, trusted: Keys) -> None:
    _, path = write_log(make_writer)
    edit_lines(path, lambda lines: lines[1:])
    assert error(verify([path], trusted)) == (1, 1, "missing start: chain begins at seq 1")


def test_a_truncated_tail_is_caught_by_the_expected_head(make_writer: WriterFactory, trusted: Keys) -> None:
    writer, path = write_log(make_writer)
    chain, head_seq, head_hash = writer.head
    assert verify([path], trusted, expect_heads={chain: head_hash}).ok
    kept = read_lines(path)[:4]
    edit_lines(path, lambda lines: lines[:4])
    assert verify([path], trusted).ok  # without the head, a clean cut is undetectable
    report = verify([path], trusted, expect_heads={chain: head_hash})
    assert error(report) == (4, 3, f"truncated: head is 3 {kept[-1]['hash']}, expected {head_hash}")
    assert head_seq == 6


def test_an_earlier_expected_head_passes_while_the_chain_grew(make_writer: WriterFactory,
                                                              trusted: Keys) -> None:
    writer = make_writer()
    early = writer.append("decision", decision_body(0))
    writer.append("decision", decision_body(1))
    assert verify(segments(writer.directory), trusted, expect_heads={writer.chain: early["hash"]}).ok


def test_an_expected_chain_that_is_absent_is_an_error(make_writer: WriterFactory, trusted: Keys) -> None:
    _, path = write_log(make_writer)
    absent = "ed25519:0000000000000000:000000000000"
    report = verify([path], trusted, expect_heads={absent: "ab" * 32})
    assert report.first_error == {"file": None, "line": None, "chain": absent, "seq": None,
                                  "reason": f"missing chain: no receipts found, expected head {'ab' * 32}"}


def test_a_signer_outside_the_trusted_keys_is_untrusted(make_writer: WriterFactory, tmp_path: Path,
                                                        key: SigningKey) -> None:
    _, path = write_log(make_writer)
    SigningKey.generate(tmp_path / "stranger.key")
    report = verify([path], load_public_keys([tmp_path / "stranger.key.pub"]))
    assert error(report) == (1, 0, f"untrusted key {key.key_id}")


def _resign(path: Path, attacker: SigningKey, *, claim_key_id: str | None = None) -> None:
    """The attacker rewrites the whole log consistently under their own key (and embeds it)."""
    prev = ZERO_HASH
    out = []
    for receipt in read_lines(path):
        receipt = {k: v for k, v in receipt.items() if k not in ("hash", "sig")}
        receipt["key_id"] = claim_key_id or attacker.key_id
        receipt["chain"] = f"{receipt['key_id']}:{receipt['chain'].rsplit(':', 1)[1]}"
        receipt["public_key"] = attacker.public_key_pem().decode()
        receipt["prev"] = prev
        if receipt["kind"] == "checkpoint":
            receipt["head"]["hash"] = prev
        receipt["estimated_nano"] = 0
        sealed, line = seal(receipt, attacker)
        prev = sealed["hash"]
        out.append(line)
    path.write_bytes(b"".join(out))


def test_a_log_re_signed_with_another_key_is_untrusted(make_writer: WriterFactory, tmp_path: Path,
                                                       trusted: Keys) -> None:
    _, path = write_log(make_writer)
    attacker = SigningKey(Ed25519PrivateKey.generate())
    _resign(path, attacker)
    assert error(verify([path], trusted)) == (1, 0, f"untrusted key {attacker.key_id}")


def test_a_log_re_signed_under_the_trusted_key_id_has_bad_signatures(make_writer: WriterFactory,
                                                                     key: SigningKey, trusted: Keys) -> None:
    _, path = write_log(make_writer)
    _resign(path, SigningKey(Ed25519PrivateKey.generate()), claim_key_id=key.key_id)
    assert error(verify([path], trusted)) == (1, 0, "bad signature")


def test_a_torn_last_line_is_reported_and_a_new_writer_continues_cleanly(
        make_writer: WriterFactory, receipts_dir: Path, trusted: Keys) -> None:
    crashed = make_writer()
    for n in range(3):
        crashed.append("decision", decision_body(n))
    torn_file = receipts_dir / segment_file_name(crashed.chain, 0)
    line = receipt_line(read_lines(torn_file)[-1])
    with torn_file.open("ab") as handle:  # the crash: half a line, no newline
        handle.write(line[: len(line) // 2])
    restarted = make_writer()
    for n in range(3):
        restarted.append("decision", decision_body(n))
    restarted.close()
    report = verify([receipts_dir], trusted)
    assert report.torn == [(str(torn_file), 4)]
    assert report.first_error == {"file": str(torn_file), "line": 4, "chain": None, "seq": None,
                                  "reason": "torn last line"}
    assert report.chains[crashed.chain]["receipts"] == 3
    new_files = [f for f in segments(receipts_dir) if f != torn_file]
    assert new_files == [receipts_dir / segment_file_name(restarted.chain, 0)]
    alone = verify(new_files, trusted)
    assert alone.ok and alone.chains[restarted.chain]["receipts"] == 4


def test_a_malformed_line_in_the_middle(make_writer: WriterFactory, trusted: Keys) -> None:
    _, path = write_log(make_writer)
    edit_lines(path, lambda lines: [*lines[:2], b"{not json\n", *lines[2:]])
    line, seq, reason = error(verify([path], trusted))
    assert (line, seq) == (3, None) and reason.startswith("malformed line: ")


def test_a_re_encoded_line_is_an_edited_line(make_writer: WriterFactory, trusted: Keys) -> None:
    writer = make_writer()
    writer.append("decision", {**decision_body(), "note": "tab\there"})
    writer.close()
    (path,) = segments(writer.directory)
    edit_lines(path, lambda lines: [lines[0].replace(b"\\t", b"\\u0009"), *lines[1:]])
    assert error(verify([path], trusted)) == (
        1, 0, "edited line: its bytes are not the serialization of the signed receipt")


@pytest.mark.parametrize("kind", [["decision"], {"decision": 1}])
def test_a_signed_receipt_whose_kind_is_not_a_string_is_malformed(kind: Any, tmp_path: Path, key: SigningKey,
                                                                    trusted: Keys) -> None:
    """Not a crash: an unhashable kind is reported like any other unsupported kind."""
    receipt = {"v": 1, "kind": kind, "chain": f"{key.key_id}:0", "seq": 0, "prev": ZERO_HASH, "ts": "t",
               "key_id": key.key_id}
    path = tmp_path / "kind.00000.ndjson"
    path.write_bytes(seal(receipt, key)[1])
    assert error(verify([path], trusted)) == (1, 0, f"malformed receipt: unsupported version 1 or kind {kind!r}")


def test_progress_is_reported_in_steps_up_to_the_total(make_writer: WriterFactory, receipts_dir: Path,
                                                       trusted: Keys) -> None:
    write_log(make_writer, count=3000)
    total = sum(f.stat().st_size for f in segments(receipts_dir))
    calls: list[tuple[int, int]] = []
    report = verify([receipts_dir], trusted, progress=lambda done, all_: calls.append((done, all_)))
    assert report.ok and report.receipts == 3003  # with checkpoints after 1000, 2000 and 3000
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert 10 <= len(calls) <= 110  # about every 1 %, never per line


def test_a_missing_path_is_a_clear_error(tmp_path: Path, trusted: Keys) -> None:
    with pytest.raises(ConfigError, match="no such receipts file or directory"):
        verify([tmp_path / "nowhere"], trusted)


def test_exported_records_verify_in_any_order_and_gaps_are_caught(make_writer: WriterFactory,
                                                                  trusted: Keys) -> None:
    writer, path = write_log(make_writer)
    records = read_lines(path)
    shuffled = records[3:] + records[:3]
    report = verify_records(shuffled, trusted, expect_heads={writer.chain: writer.head[2]})
    assert report.ok and report.receipts == 7
    gap = verify_records(records[:2] + records[3:], trusted)
    assert error(gap) == (3, 3, "out of order: seq 3 follows seq 1 (receipt missing, reordered or repeated)")
    edited = [dict(r) for r in records]
    edited[4]["model_effective"] = "gpt-5"
    assert error(verify_records(edited, trusted)) == (5, 4, "hash mismatch: the receipt was edited")
    assert error(verify_records(["not a receipt", *records], trusted)) == (
        1, None, "malformed receipt: not an object with a string chain and an integer seq")


def test_receipts_and_checkpoints_exported_together_verify_as_records(make_writer: WriterFactory,
                                                                      trusted: Keys) -> None:
    exported: list[dict[str, Any]] = []
    writer = make_writer(checkpoint_every=3, on_checkpoint=exported.append)
    for n in range(8):
        exported.append(writer.append("decision", decision_body(n)))
    writer.close()
    assert [r["kind"] for r in exported].count("checkpoint") == 3
    report = verify_records(exported, trusted, expect_heads={writer.chain: writer.head[2]})
    assert report.ok, report.first_error
    assert report.chains[writer.chain]["receipts"] == 11


# -- properties ----------------------------------------------------------------------------------

PROPERTY_KEY = SigningKey(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
PROPERTY_KEYS = {PROPERTY_KEY.key_id: PROPERTY_KEY.public_key}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["decision", "settlement"]), bodies), max_size=25),
       st.sampled_from([400, 3000, 1 << 20]), st.sampled_from([1, 4, 1000]))
def test_any_append_sequence_verifies(appends: list[tuple[Any, dict[str, Any]]], segment_max_bytes: int,
                                      checkpoint_every: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        writer = ReceiptWriter(Path(directory), PROPERTY_KEY, segment_max_bytes=segment_max_bytes,
                               checkpoint_every=checkpoint_every)
        for kind, body in appends:
            writer.append(kind, body)
        writer.close()
        chain, seq, head = writer.head
        report = verify([directory], PROPERTY_KEYS, expect_heads={chain: head} if appends else None)
        assert report.ok, report.first_error
        assert report.receipts == seq + 1
        if appends:
            assert report.chains[chain] == {"seq": seq, "hash": head, "receipts": seq + 1}


@pytest.fixture(scope="module")
def small_log(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """A short log whose lines hold escapes, non-ASCII and nested values, as lines of bytes."""
    directory = tmp_path_factory.mktemp("flip-source")
    writer = ReceiptWriter(directory, PROPERTY_KEY, checkpoint_every=2)
    writer.append("decision", {**decision_body(0), "note": "ctl \x01\x1f \" \\ é 😀 \u2028"})
    writer.append("settlement", {"decision": "ab" * 32, "usage": {"input_tokens": 12, "output": [1, None]}})
    writer.append("decision", decision_body(2))
    writer.close()
    (path,) = directory.glob("*.ndjson")
    return path.read_bytes().splitlines(keepends=True)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_flipping_any_byte_of_any_line_is_detected(small_log: list[bytes], tmp_path: Path,
                                                   data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(small_log) - 1), label="line")
    position = data.draw(st.integers(0, len(small_log[index]) - 1), label="byte")
    mask = data.draw(st.integers(1, 255), label="xor")
    line = bytearray(small_log[index])
    line[position] ^= mask
    path = tmp_path / "flipped.00000.ndjson"
    path.write_bytes(b"".join([*small_log[:index], bytes(line), *small_log[index + 1:]]))
    report = verify([path], PROPERTY_KEYS)
    assert not report.ok, (index, position, mask)
