"""ReceiptWriter: receipt fields, chaining, one line per receipt, segments, checkpoints, fork,
threads and disk errors."""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import re
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from agentguard_otel.receipts import ZERO_HASH, ReceiptWriter, SigningKey, segment_file_name, verify
from agentguard_otel.receipts.format import receipt_line

from .conftest import WriterFactory, decision_body, read_lines, segments
from .strategies import bodies


def test_a_receipt_carries_the_chain_fields_body_hash_and_signature(make_writer: WriterFactory,
                                                                    key: SigningKey) -> None:
    writer = make_writer()
    receipt = writer.append("decision", decision_body())
    assert list(receipt)[:6] == ["v", "kind", "chain", "seq", "prev", "ts"]
    assert list(receipt)[-3:] == ["key_id", "hash", "sig"]
    assert receipt["v"] == 1 and receipt["kind"] == "decision" and receipt["seq"] == 0
    assert receipt["prev"] == ZERO_HASH == "0" * 64
    assert receipt["chain"] == writer.chain
    assert re.fullmatch(rf"{key.key_id}:[0-9a-f]{{12}}", writer.chain)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", receipt["ts"])
    assert {k: receipt[k] for k in decision_body()} == decision_body()
    assert receipt["key_id"] == key.key_id
    unsigned = {k: v for k, v in receipt.items() if k not in ("hash", "sig")}
    digest = hashlib.sha256(rfc8785.dumps(unsigned)).digest()
    assert receipt["hash"] == digest.hex()
    key.public_key.verify(base64.b64decode(receipt["sig"], validate=True), digest)  # raises if invalid
    assert writer.head == (writer.chain, 0, receipt["hash"])


def test_receipts_chain_by_seq_and_prev_one_line_each(make_writer: WriterFactory, receipts_dir: Path) -> None:
    writer = make_writer()
    written = [writer.append("settlement" if n % 2 else "decision", decision_body(n)) for n in range(5)]
    assert [r["seq"] for r in written] == [0, 1, 2, 3, 4]
    assert [r["prev"] for r in written[1:]] == [r["hash"] for r in written[:-1]]
    (segment,) = segments(receipts_dir)
    assert segment.name == segment_file_name(writer.chain, 0)
    raw = segment.read_bytes()
    # Each line is the canonical form of the returned receipt, with its seal appended, byte for byte.
    assert raw == b"".join(receipt_line(r) for r in written)
    assert [json.loads(line) for line in raw.splitlines()] == written
    assert stat.S_IMODE(segment.stat().st_mode) & ~0o640 == 0


def test_bad_bodies_are_refused_without_consuming_a_seq(make_writer: WriterFactory) -> None:
    writer = make_writer()
    first = writer.append("decision", decision_body())
    for reserved in ("v", "seq", "prev", "hash", "sig", "key_id", "chain", "ts", "kind"):
        with pytest.raises(ValueError, match=f"reserved field.*{reserved}"):
            writer.append("decision", {**decision_body(), reserved: "x"})
    with pytest.raises(TypeError, match="float"):
        writer.append("decision", {**decision_body(), "estimated_usd": 0.5})
    with pytest.raises(ValueError, match="kind"):
        writer.append("checkpoint", decision_body())  # type: ignore[arg-type]
    second = writer.append("decision", decision_body(1))
    assert (second["seq"], second["prev"]) == (1, first["hash"])


def test_close_writes_a_final_checkpoint_and_is_idempotent(make_writer: WriterFactory,
                                                           receipts_dir: Path) -> None:
    writer = make_writer()
    last = [writer.append("decision", decision_body(n)) for n in range(3)][-1]
    writer.close()
    writer.close()
    lines = read_lines(segments(receipts_dir)[0])
    assert len(lines) == 4
    assert lines[-1]["kind"] == "checkpoint" and lines[-1]["seq"] == 3
    assert lines[-1]["head"] == {"seq": 2, "hash": last["hash"]} and lines[-1]["count"] == 3
    with pytest.raises(ValueError, match="closed"):
        writer.append("decision", decision_body())


def test_a_writer_that_wrote_nothing_leaves_no_file(make_writer: WriterFactory, receipts_dir: Path) -> None:
    writer = make_writer()
    assert writer.checkpoint() is None
    writer.close()
    assert segments(receipts_dir) == []
    assert writer.head == (writer.chain, -1, ZERO_HASH)


def test_checkpoints_every_n_receipts_carry_head_and_count(make_writer: WriterFactory,
                                                           receipts_dir: Path) -> None:
    writer = make_writer(checkpoint_every=3)
    for n in range(7):
        writer.append("decision", decision_body(n))
    assert writer.checkpoint() is not None
    assert writer.checkpoint() is None  # nothing new since
    lines = read_lines(segments(receipts_dir)[0])
    kinds = "".join("c" if r["kind"] == "checkpoint" else "d" for r in lines)
    assert kinds == "dddcdddcdc"
    assert [(r["seq"], r["count"]) for r in lines if r["kind"] == "checkpoint"] == [(3, 3), (7, 6), (9, 7)]
    checkpoints = [r for r in lines if r["kind"] == "checkpoint"]
    assert all(r["head"] == {"seq": r["seq"] - 1, "hash": r["prev"]} for r in checkpoints)


def test_segments_rotate_after_a_checkpoint_and_the_chain_continues(
        make_writer: WriterFactory, receipts_dir: Path, trusted: dict[str, Any]) -> None:
    writer = make_writer(segment_max_bytes=3000)
    for n in range(20):
        writer.append("decision", decision_body(n))
    writer.close()
    files = segments(receipts_dir)
    assert [f.name for f in files] == [segment_file_name(writer.chain, i) for i in range(len(files))]
    assert len(files) >= 3
    chained = [r for f in files for r in read_lines(f)]
    assert [r["seq"] for r in chained] == list(range(len(chained)))
    for segment in files:
        lines = read_lines(segment)
        assert lines[-1]["kind"] == "checkpoint"
        assert sum(r["kind"] == "checkpoint" for r in lines) == 1
    assert all(f.stat().st_size < 3000 + 2 * 1000 for f in files)
    report = verify([receipts_dir], trusted)
    assert report.ok, report.first_error
    assert report.chains[writer.chain]["receipts"] == len(chained)


def test_a_writer_never_appends_to_an_existing_file(make_writer: WriterFactory, receipts_dir: Path) -> None:
    writer = make_writer()
    squatter = receipts_dir / segment_file_name(writer.chain, 0)
    squatter.write_text("someone else's\n")
    with pytest.raises(FileExistsError, match=f"cannot write receipts in {receipts_dir}"):
        writer.append("decision", decision_body())
    assert squatter.read_text() == "someone else's\n"


def test_two_writers_in_one_directory_write_separate_chains_and_files(
        make_writer: WriterFactory, receipts_dir: Path, trusted: dict[str, Any]) -> None:
    first, second = make_writer(), make_writer()
    for n in range(3):
        first.append("decision", decision_body(n))
        second.append("decision", decision_body(n))
    assert first.chain != second.chain
    assert len(segments(receipts_dir)) == 2
    report = verify([receipts_dir], trusted)
    assert report.ok and set(report.chains) == {first.chain, second.chain}


def test_eight_threads_append_one_valid_chain(make_writer: WriterFactory, receipts_dir: Path,
                                             trusted: dict[str, Any]) -> None:
    writer = make_writer(checkpoint_every=100, segment_max_bytes=200_000)
    barrier = threading.Barrier(8)
    seqs: list[int] = []

    def work(worker: int) -> None:
        barrier.wait()
        for n in range(200):
            seqs.append(writer.append("decision", decision_body(worker * 1000 + n))["seq"])

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.close()
    assert len(set(seqs)) == 1600
    lines = [line for f in segments(receipts_dir) for line in f.read_bytes().splitlines(keepends=True)]
    assert all(line.endswith(b"}\n") and line.count(b"\n") == 1 for line in lines)
    report = verify([receipts_dir], trusted)
    assert report.ok, report.first_error
    assert list(report.chains) == [writer.chain]
    assert report.chains[writer.chain]["receipts"] == len(lines) > 1600


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX-only")
def test_a_forked_child_starts_its_own_chain(make_writer: WriterFactory, receipts_dir: Path,
                                            trusted: dict[str, Any]) -> None:
    writer = make_writer()
    writer.append("decision", decision_body(0))
    parent_chain = writer.chain
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            receipt = writer.append("decision", decision_body(100))
            writer.close()
            code = 0 if receipt["seq"] == 0 and receipt["chain"] != parent_chain else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    writer.append("decision", decision_body(1))
    writer.close()
    report = verify([receipts_dir], trusted)
    assert report.ok, report.first_error
    assert len(report.chains) == 2
    child_chain = next(c for c in report.chains if c != parent_chain)
    assert report.chains[parent_chain] == {"seq": 2, "hash": writer.head[2], "receipts": 3}
    assert report.chains[child_chain]["receipts"] == 2  # its decision and its final checkpoint
    parent_file = receipts_dir / segment_file_name(parent_chain, 0)
    assert [r["chain"] for r in read_lines(parent_file)] == [parent_chain] * 3


def test_a_disk_error_names_the_directory_keeps_its_class_and_consumes_no_seq(
        make_writer: WriterFactory, receipts_dir: Path, trusted: dict[str, Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    writer = make_writer()
    first = writer.append("decision", decision_body(0))

    def disk_full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(OSError, match=f"cannot write receipts in {receipts_dir}: No space left") as caught:
        writer.append("decision", decision_body(1))
    assert caught.value.errno == errno.ENOSPC
    assert writer.head == (writer.chain, 0, first["hash"])
    monkeypatch.undo()
    second = writer.append("decision", decision_body(2))
    assert (second["seq"], second["prev"]) == (1, first["hash"])
    assert verify([receipts_dir], trusted).ok


def test_permission_errors_stay_permission_errors(make_writer: WriterFactory, receipts_dir: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    writer = make_writer()

    def denied(path: Any, flags: int, mode: int = 0o777) -> int:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(PermissionError, match=f"cannot write receipts in {receipts_dir}: Permission denied"):
        writer.append("decision", decision_body())


def test_a_short_write_leaves_a_torn_line_and_appends_continue_in_a_new_segment(
        make_writer: WriterFactory, receipts_dir: Path, trusted: dict[str, Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    writer = make_writer()
    first = writer.append("decision", decision_body(0))
    real_write = os.write

    def half_write(fd: int, data: bytes) -> int:
        return real_write(fd, data[: len(data) // 2])

    monkeypatch.setattr(os, "write", half_write)
    with pytest.raises(OSError, match="short write"):
        writer.append("decision", decision_body(1))
    monkeypatch.undo()
    second = writer.append("decision", decision_body(2))
    assert (second["seq"], second["prev"]) == (1, first["hash"])
    writer.close()
    torn_file = receipts_dir / segment_file_name(writer.chain, 0)
    report = verify([receipts_dir], trusted)
    assert report.torn == [(str(torn_file), 2)]
    assert report.first_error is not None and report.first_error["reason"] == "torn last line"
    assert report.chains[writer.chain]["seq"] == 2  # the chain itself continues unbroken


@settings(max_examples=40, deadline=None)
@given(st.lists(bodies, min_size=1, max_size=8))
def test_lines_are_the_reference_serialization_signed_by_cryptography(appended: list[dict[str, Any]]) -> None:
    """The line bytes are what rfc8785 and OpenSSL's Ed25519 make of the receipt: the fast paths
    (orjson, libsodium) change no byte, so logs written before and after verify alike."""
    openssl_key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    with tempfile.TemporaryDirectory() as directory:
        writer = ReceiptWriter(Path(directory), SigningKey(openssl_key))
        for body in appended:
            writer.append("decision", body)
        writer.close()
        (path,) = segments(Path(directory))
        for line in path.read_bytes().splitlines(keepends=True):
            receipt = json.loads(line)
            unsigned = rfc8785.dumps({k: v for k, v in receipt.items() if k not in ("hash", "sig")})
            digest = hashlib.sha256(unsigned).digest()
            sig = base64.b64encode(openssl_key.sign(digest)).decode()
            assert line == unsigned[:-1] + f',"hash":"{digest.hex()}","sig":"{sig}"}}\n'.encode()
