"""verify with jobs > 1 reports exactly what jobs=1 reports; lines parse as the stdlib reads them;
memory stays flat in the log's size."""

from __future__ import annotations

import json
import shutil
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from agentguard_otel.cli import main
from agentguard_otel.receipts import ZERO_HASH, ReceiptWriter, SigningKey, verify
from agentguard_otel.receipts.format import receipt_line, seal, unsigned_form
from agentguard_otel.receipts.verify import _batches, _merged, _parallel, _parse, _Ticker, _unsigned, segment_files

from .conftest import decision_body, read_lines
from .strategies import any_values

KEY = SigningKey(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
KEYS = {KEY.key_id: KEY.public_key}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """Four chains, one of them over several segments; returns the directory and each chain's head."""
    directory = tmp_path_factory.mktemp("corpus")
    writers = [ReceiptWriter(directory, KEY, checkpoint_every=4) for _ in range(3)]
    writers.append(ReceiptWriter(directory, KEY, segment_max_bytes=3000))
    for n in range(40):
        writers[n % 4].append("settlement" if n % 3 else "decision",
                              {**decision_body(n), "note": "tab\there é"} if n % 5 == 0 else decision_body(n))
    for writer in writers:
        writer.close()
    return directory, {writer.head[0]: writer.head[2] for writer in writers}


def chain_files(directory: Path) -> list[Path]:
    """The first segment of each chain, in verify's file order, except that the chain over several
    segments is last: a tamper of the first three sees a chain's whole file (chain ids are random,
    so verify's order alone would put the long chain anywhere)."""
    first = [path for path in segment_files([directory]) if path.name.endswith(".00000.ndjson")]
    return sorted(first, key=lambda path: path.with_name(path.name.replace(".00000.", ".00001.")).exists())


def edit(path: Path, change: Callable[[list[bytes]], list[bytes]]) -> None:
    path.write_bytes(b"".join(change(path.read_bytes().splitlines(keepends=True))))


def _edited_field(directory: Path) -> None:
    def change(lines: list[bytes]) -> list[bytes]:
        receipt = json.loads(lines[1])
        receipt["estimated_nano"] = 1
        return [lines[0], receipt_line(receipt), *lines[2:]]
    edit(chain_files(directory)[2], change)


def _deleted(directory: Path) -> None:
    edit(chain_files(directory)[1], lambda lines: lines[:2] + lines[3:])


def _swapped(directory: Path) -> None:
    edit(chain_files(directory)[3], lambda lines: [lines[0], lines[2], lines[1], *lines[3:]])


def _first_deleted(directory: Path) -> None:
    edit(chain_files(directory)[2], lambda lines: lines[1:])


def _torn(directory: Path) -> None:
    edit(chain_files(directory)[0], lambda lines: [*lines, lines[-1][:40]])


def _malformed(directory: Path) -> None:
    edit(chain_files(directory)[3], lambda lines: [lines[0], b"{not json\n", *lines[1:]])


def _re_encoded(directory: Path) -> None:
    for path in chain_files(directory):
        edit(path, lambda lines: [line.replace(b"\\t", b"\\u0009") for line in lines])


def _re_signed(directory: Path) -> None:
    """One chain rewritten consistently under a stranger's key, still claiming the trusted key id."""
    stranger = SigningKey(Ed25519PrivateKey.from_private_bytes(bytes(32)))
    path = chain_files(directory)[1]
    prev = ZERO_HASH
    lines = []
    for receipt in read_lines(path):
        fields = {k: v for k, v in receipt.items() if k not in ("hash", "sig")}
        fields["prev"] = prev
        if fields["kind"] == "checkpoint":
            fields["head"]["hash"] = prev
        sealed, line = seal(fields, stranger)
        prev = sealed["hash"]
        lines.append(line)
    path.write_bytes(b"".join(lines))


def _moved_across_chains(directory: Path) -> None:
    """A receipt of one chain appended to another chain's file: the chains' checks interleave."""
    first, second = chain_files(directory)[:2]
    edit(second, lambda lines: [*lines, first.read_bytes().splitlines(keepends=True)[3]])


def _segment_deleted(directory: Path) -> None:
    segments = [path for path in segment_files([directory]) if path.name.endswith(".00001.ndjson")]
    segments[0].unlink()


def _truncated(directory: Path) -> None:
    edit(chain_files(directory)[2], lambda lines: lines[:3])


def _two_errors(directory: Path) -> None:
    _deleted(directory)
    _swapped(directory)


TAMPERS: dict[str, Callable[[Path], None] | None] = {
    "untouched": None, "edited field": _edited_field, "deleted receipt": _deleted, "swapped": _swapped,
    "first deleted": _first_deleted, "torn": _torn, "malformed": _malformed, "re-encoded": _re_encoded,
    "re-signed": _re_signed, "moved across chains": _moved_across_chains,
    "segment deleted": _segment_deleted, "truncated": _truncated, "two errors": _two_errors,
}
REASONS = {
    "untouched": None, "edited field": "hash mismatch: the receipt was edited",
    "deleted receipt": "out of order", "swapped": "out of order", "first deleted": "missing start",
    "torn": "torn last line", "malformed": "malformed line", "re-encoded": "edited line",
    "re-signed": "bad signature", "moved across chains": "out of order", "segment deleted": "out of order",
    "truncated": "truncated", "two errors": "out of order",
}


@pytest.mark.parametrize("tamper", TAMPERS)
def test_jobs_2_gives_the_verdicts_and_reasons_of_jobs_1(corpus: tuple[Path, dict[str, str]], tmp_path: Path,
                                                         tamper: str) -> None:
    source, heads = corpus
    directory = tmp_path / "log"
    shutil.copytree(source, directory)
    change = TAMPERS[tamper]
    if change is not None:
        change(directory)
    one = verify([directory], KEYS, expect_heads=heads).as_dict()
    two = verify([directory], KEYS, expect_heads=heads, jobs=2).as_dict()
    assert two == one
    assert one["ok"] is (tamper == "untouched")
    reason = REASONS[tamper]
    if reason is None:
        assert one["first_error"] is None and one["receipts"] == 40 + 3 * 3 + 3  # checkpoints included
    else:
        assert one["first_error"]["reason"].startswith(reason), one["first_error"]
    assert len(one["chains"]) == 4


def test_the_parallel_merge_is_the_one_pass_report(corpus: tuple[Path, dict[str, str]]) -> None:
    """The workers really split the files, and their merged report is the serial one, error included."""
    directory, heads = corpus
    files = segment_files([directory])
    batches = _batches(files, 2)
    assert len(batches) >= 4 and [path for batch, _ in batches for path in batch] == files
    merged = _merged(_parallel(batches, {KEY.key_id: KEY.public_key.public_bytes_raw()}, heads, 2,
                               _Ticker(None, 0)))
    assert merged is not None
    assert merged.report().as_dict() == verify([directory], KEYS, expect_heads=heads).as_dict()


def test_a_chain_split_over_two_batches_is_checked_again_in_one_pass(corpus: tuple[Path, dict[str, str]],
                                                                     tmp_path: Path) -> None:
    directory = tmp_path / "log"
    shutil.copytree(corpus[0], directory)
    _moved_across_chains(directory)
    batches = _batches(segment_files([directory]), 2)
    assert _merged(_parallel(batches, {KEY.key_id: KEY.public_key.public_bytes_raw()}, {}, 2,
                             _Ticker(None, 0))) is None
    report = verify([directory], KEYS, jobs=2)
    assert report.first_error is not None and report.first_error["reason"].startswith("out of order")


def test_progress_with_jobs_climbs_to_the_total(corpus: tuple[Path, dict[str, str]]) -> None:
    directory, _ = corpus
    total = sum(path.stat().st_size for path in segment_files([directory]))
    calls: list[tuple[int, int]] = []
    assert verify([directory], KEYS, progress=lambda done, all_: calls.append((done, all_)), jobs=2).ok
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_the_cli_takes_jobs_and_prints_the_same_report(corpus: tuple[Path, dict[str, str]], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "log"
    shutil.copytree(corpus[0], directory)
    _swapped(directory)
    public = tmp_path / "signer.pub"
    public.write_bytes(KEY.public_key_pem())
    outputs = []
    for jobs in ("1", "2"):
        assert main(["verify", str(directory), "--public-key", str(public), "--jobs", jobs]) == 1
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and "FAILED: " in outputs[0] and "out of order" in outputs[0]
    assert main(["verify", str(directory), "--public-key", str(public), "--jobs", "0"]) == 2
    assert "jobs must be at least 1" in capsys.readouterr().err


def test_memory_stays_flat_in_the_log_size(tmp_path: Path) -> None:
    """Lines are streamed: the peak of Python allocations while verifying is a small fraction of the log."""
    writer = ReceiptWriter(tmp_path, KEY, segment_max_bytes=4 << 20)
    for n in range(6000):
        writer.append("decision", decision_body(n))
    writer.close()
    size = sum(path.stat().st_size for path in tmp_path.glob("*.ndjson"))
    assert size > 5_000_000
    tracemalloc.start()
    try:
        report = verify([tmp_path], KEYS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report.ok and report.receipts == writer.head[1] + 1 > 6000
    assert peak < size // 40, (peak, size)


# -- parsing: orjson reads what json.loads reads ---------------------------------------------------

def _outcome(read: Callable[[], Any]) -> Any:
    try:
        return read()
    except (TypeError, ValueError, RecursionError) as exc:
        return type(exc).__name__, str(exc)


def _fast(raw: bytes) -> Any:
    receipt = _parse(raw)
    if not isinstance(receipt, dict):
        return receipt
    receipt.pop("hash", None)
    receipt.pop("sig", None)
    return _unsigned(receipt, raw)


def _reference(raw: bytes) -> Any:
    receipt = json.loads(raw)
    return unsigned_form(receipt) if isinstance(receipt, dict) else receipt


texts = st.one_of(
    any_values.map(lambda value: json.dumps({"v": value}, ensure_ascii=False, default=str)),
    any_values.map(lambda value: json.dumps({"v": value}, ensure_ascii=True, default=str)),
    st.sampled_from(['{"a":1,"a":2}', '{"a":{"b":1},"a":{"c":2}}', '{"s":"\\ud800"}', '{"s":"\\ud83d\\ude00"}',
                     '{"n":NaN}', '{"n":1e400}', '{"n":-0}', '{"n":1.0}', '{"n":18446744073709551616}',
                     '{"n":-9223372036854775809}', '{"n":9007199254740993}', '\ufeff{"a":1}', '{"a":"\x01"}',
                     '{"a":"\x7f"}', '[1]', '"x"', '{"a":1} ', ' {"a":1}', '{"a":1}\x0c', '{"é":1,"\U0001f600":2}']),
)


@settings(max_examples=500)
@given(texts, st.sampled_from(["utf-8", "utf-16", "utf-8-surrogates"]), st.data())
def test_a_line_reads_and_canonicalizes_as_the_stdlib_reads_it(text: str, encoding: str,
                                                               data: st.DataObject) -> None:
    raw = (text.encode("utf-8", "surrogatepass") if encoding == "utf-8-surrogates" else
           text.encode(encoding, "surrogatepass"))
    if data.draw(st.booleans(), label="flip a byte") and raw:
        position = data.draw(st.integers(0, len(raw) - 1), label="position")
        raw = raw[:position] + bytes([raw[position] ^ data.draw(st.integers(1, 255), label="xor")]) + raw[position + 1:]
    raw += b"\n"
    assert _outcome(lambda: _fast(raw)) == _outcome(lambda: _reference(raw))
