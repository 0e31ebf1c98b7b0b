"""Receipt logs as the console reads them: streamed (memory flat in the log's size), untrusted fields
read by type, decisions joined to their settlement and adjustment."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

from agentguard_otel.console.records import Entry, Verdicts, calls, chains, entries, newest, receipt_files
from agentguard_otel.receipts import ReceiptWriter, SigningKey, load_public_keys


def _writer(tmp_path: Path) -> ReceiptWriter:
    return ReceiptWriter(tmp_path / "receipts", SigningKey.generate(tmp_path / "k.key"))


def test_a_decision_shows_its_adjusted_cost(tmp_path: Path) -> None:
    writer = _writer(tmp_path)
    writer.append("decision", {"call_id": "a", "action": "allow", "estimated_nano": 900, "scope": {"tenant": "t"}})
    writer.append("decision", {"call_id": "b", "action": "block", "estimated_nano": 800, "scope": {"tenant": "t"}})
    writer.append("settlement", {"call_id": "a", "actual_nano": 500})
    writer.append("adjustment", {"call_id": "a", "actual_nano": 650, "previous_nano": 500})
    writer.close()
    found = calls(receipt_files([tmp_path / "receipts"]), lambda e: True, 10)
    assert [(c.decision.text("call_id"), c.actual_nano) for c in found] == [("b", None), ("a", 650)]
    assert found[1].settlement is not None and found[1].settlement.nano("actual_nano") == 500


def test_fields_of_the_wrong_type_read_as_absent(tmp_path: Path) -> None:
    log = tmp_path / "x.00000.ndjson"
    log.write_bytes(b'{"kind":"decision","estimated_nano":-5,"seq":true,"scope":{"tenant":7,"team":"t"},'
                    b'"trace_id":"ABC","ts":1}\n[1,2]\n{"kind":NaN}\nnot json\n')
    read = list(entries([log]))
    first = read[0]
    assert (first.nano("estimated_nano"), first.integer("seq"), first.text("ts"), first.trace_id) == \
        (None, None, None, None)
    assert first.scope == {"tenant": None, "team": "t", "user": None, "agent": None, "task": None,
                           "capability": None}
    assert [e.receipt for e in read[1:]] == [None, None, None]
    assert newest([log], lambda e: True, 10) == [first]


def test_newest_streams_a_large_log(tmp_path: Path) -> None:
    writer = _writer(tmp_path)
    for i in range(20_000):
        writer.append("decision", {"call_id": f"{i:08d}", "action": "allow", "reason": "x" * 200})
    writer.close()
    files = receipt_files([tmp_path / "receipts"])
    size = sum(path.stat().st_size for path in files)
    assert size > 8_000_000
    tracemalloc.start()
    try:
        found = newest(files, lambda e: e.text("kind") == "decision", 5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [e.text("call_id") for e in found] == [f"{i:08d}" for i in range(19_999, 19_994, -1)]
    assert peak < size // 20  # a few lines at a time, not the log
    assert all(isinstance(e, Entry) for e in found)


def test_a_line_written_after_its_chain_was_verified_is_not_called_ok(tmp_path: Path) -> None:
    key = SigningKey.generate(tmp_path / "k.key")
    writer = ReceiptWriter(tmp_path / "receipts", key)
    writer.append("decision", {"call_id": "a", "action": "allow"})
    verdicts = Verdicts(load_public_keys([tmp_path / "k.key.pub"]))
    files = receipt_files([tmp_path / "receipts"])
    verdicts.report(chains(files)[0])  # verified (and kept) while the log holds one line
    writer.append("decision", {"call_id": "b", "action": "allow"})
    stamp = [(p, p.stat()) for p in files]
    for path, before in stamp:  # an mtime put back does not hide the change: the ctime moved
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    judge = verdicts.judge(files)
    assert [judge(e)["status"] for e in entries(files)] == ["ok", "ok"]
    cached = Verdicts(verdicts.keys)
    cached._cache = {name: (stamp_, report, {k: 1 for k in counted})  # as if the stat could not tell
                     for name, (stamp_, report, counted) in verdicts._cache.items()}
    assert [cached.judge(files)(e)["status"] for e in entries(files)] == ["ok", "unverified"]
    writer.close()
