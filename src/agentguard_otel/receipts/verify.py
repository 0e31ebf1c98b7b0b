"""Receipt verification: from segment files, or from already-parsed receipts (e.g. exported logs).

Both entry points feed one ``_Checker``, which checks each receipt in order: its hash (an edited
field), the signature with a *trusted* key (keys embedded in or named by receipts are never trusted),
the line's bytes (file input only: a line must be exactly the writer's serialization of its content,
so no edit hides in escapes, whitespace or duplicate keys), then the chain link (``seq`` one more than
the previous receipt's, ``prev`` its hash, a chain starts at seq 0 with 64 zeros) and checkpoints.

Files are streamed line by line (memory does not grow with a log's size). Each receipt is serialized
once; lines are parsed with orjson, and with the stdlib wherever orjson refuses a line or reads it
differently, so every verdict and reason is the stdlib reading's. ``jobs`` > 1 checks the chains of
different segment files on that many processes and merges the results in file order.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import multiprocessing
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agentguard_otel.errors import ConfigError
from agentguard_otel.receipts.canonical import canonical_json
from agentguard_otel.receipts.format import KINDS, VERSION, ZERO_HASH, line_of, unsigned_form
from agentguard_otel.receipts.keys import StrPath, signature_valid

Progress = Callable[[int, int], None]

_SEGMENT = re.compile(r"(?P<stem>.+)\.(?P<segment>\d+)\.ndjson")
_PROGRESS_MIN_STEP = 64 * 1024
_PROGRESS_MAX_STEP = 1024 * 1024


@dataclass
class VerifyReport:
    """Outcome of a verification. ``chains`` maps each chain to its head (``seq``, ``hash``) and its
    receipt count; ``first_error`` is ``{file, line, chain, seq, reason}`` of the first problem found
    (``file`` is None for parsed records, whose ``line`` is the 1-based position in the input)."""

    ok: bool
    receipts: int
    chains: dict[str, dict[str, Any]]
    first_error: dict[str, Any] | None
    torn: list[tuple[str, int]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (for ``agentguard verify --json``)."""
        return {"ok": self.ok, "receipts": self.receipts, "chains": self.chains,
                "first_error": self.first_error, "torn": [{"file": f, "line": n} for f, n in self.torn]}


def verify(paths: StrPath | Iterable[StrPath], public_keys: Mapping[str, Ed25519PublicKey],
           expect_heads: Mapping[str, str] | None = None, progress: Progress | None = None,
           jobs: int = 1) -> VerifyReport:
    """Verify receipt files and directories (every ``*.ndjson`` below them), each file read once.

    Segments are taken in order of their segment number. A final line without its newline is a torn
    append: reported in ``torn`` and as an error, never skipped. ``expect_heads`` maps a chain to a head
    hash recorded elsewhere (span, log backend): the chain must reach that receipt, or it was truncated.
    Receipts written after the expected head are accepted (they are chained to it). ``progress(done,
    total)`` is called with byte counts about every 1 MiB (or 1 %, if smaller) and at the end.
    ``jobs`` processes check the files of different chains at once; the report is the one ``jobs=1``
    gives (should one chain's receipts turn up in files of another, they are checked again in one pass).
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    files = segment_files([paths] if isinstance(paths, (str, os.PathLike)) else paths)
    total = sum(path.stat().st_size for path in files)
    keys = {key_id: key.public_bytes_raw() for key_id, key in public_keys.items()}
    expect = dict(expect_heads or {})
    ticker = _Ticker(progress, total)
    batches = _batches(files, jobs)
    checker = _merged(_parallel(batches, keys, expect, jobs, ticker)) if len(batches) > 1 else None
    if checker is None:
        if len(batches) > 1:
            ticker = _Ticker(progress, total)
        checker = _Checker(keys, expect)
        for path in files:
            _check_file(checker, path, ticker if progress is not None else None)
    ticker.finish()
    return checker.report()


class _Ticker:
    """Calls ``progress`` as bytes are checked: at 0, about every 1 MiB (or 1 %) and at the total."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0
        self.step = min(_PROGRESS_MAX_STEP, max(_PROGRESS_MIN_STEP, total // 100))
        self.next = self.step
        if progress is not None:
            progress(0, total)

    def add(self, count: int) -> None:
        self.done += count
        if self.progress is not None and self.done >= self.next:
            self.progress(min(self.done, self.total), self.total)
            self.next = self.done + self.step

    def finish(self) -> None:
        if self.progress is not None:
            self.progress(self.total, self.total)


def _check_file(checker: _Checker, path: Path, ticker: _Ticker | None = None) -> None:
    name = str(path)
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, 1):
            if ticker is not None:
                ticker.add(len(raw))
            if not raw.endswith(b"\n"):
                checker.torn_line(name, line_no)
                continue
            try:
                receipt = _parse(raw)
            except (ValueError, RecursionError) as exc:
                checker.fail(name, line_no, None, None, f"malformed line: {exc}")
                continue
            checker.check(receipt, name, line_no, raw)


def _parse(raw: bytes) -> Any:
    """The line's value as ``json.loads`` reads it (orjson reads the same, faster, or refuses: then
    the stdlib reads it, or raises its own error). The one difference, integers beyond 64 bits that
    orjson reads as floats, fails canonicalization either way and is re-read in ``_unsigned``."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def _batches(files: list[Path], jobs: int) -> list[tuple[list[Path], int]]:
    """Consecutive runs of whole chains (all segments of one file stem) with their byte size, about a
    quarter of a process's share each, so ``jobs`` processes stay busy; one batch when ``jobs`` is 1."""
    sizes = [path.stat().st_size for path in files]
    if jobs == 1:
        return [(files, sum(sizes))]
    target = max(1, sum(sizes) // (4 * jobs))
    batches: list[tuple[list[Path], int]] = []
    stem = None
    for path, size in zip(files, sizes, strict=True):
        match = _SEGMENT.fullmatch(path.name)
        file_stem = (path.parent, match["stem"] if match else path.name)
        if not batches or (file_stem != stem and batches[-1][1] >= target):
            batches.append(([], 0))
        batch, batch_size = batches[-1]
        batch.append(path)
        batches[-1] = (batch, batch_size + size)
        stem = file_stem
    return batches


def _parallel(batches: list[tuple[list[Path], int]], keys: dict[str, bytes], expect: dict[str, str],
              jobs: int, ticker: _Ticker) -> list[_Checker]:
    """Each batch checked in a worker process: forked when this process runs one thread on Linux (no
    other thread can hold a lock mid-update; no re-import), spawned otherwise."""
    fork = sys.platform == "linux" and threading.active_count() == 1
    context = multiprocessing.get_context("fork" if fork else "spawn")
    results: list[_Checker] = []
    with ProcessPoolExecutor(max_workers=min(jobs, len(batches)), mp_context=context) as pool:
        checked = pool.map(_check_batch, [files for files, _ in batches], [keys] * len(batches),
                           [expect] * len(batches))
        for (_, size), checker in zip(batches, checked, strict=True):
            ticker.add(size)
            results.append(checker)
    return results


def _check_batch(files: list[Path], keys: dict[str, bytes], expect: dict[str, str]) -> _Checker:
    checker = _Checker(keys, expect)
    for path in files:
        _check_file(checker, path)
    return checker


def _merged(parts: Iterable[_Checker]) -> _Checker | None:
    """The batches' results as one pass over all files would have found them, in file order; None
    when one chain has receipts in two batches (its checks depend on each other)."""
    merged: _Checker | None = None
    for part in parts:
        if merged is None:
            merged = part
            continue
        if not merged.chains.keys().isdisjoint(part.chains):
            return None
        merged.chains.update(part.chains)
        merged.receipts += part.receipts
        merged.torn.extend(part.torn)
        merged.first_error = merged.first_error or part.first_error
    return merged


def verify_records(records: Iterable[Any], public_keys: Mapping[str, Ed25519PublicKey],
                   expect_heads: Mapping[str, str] | None = None) -> VerifyReport:
    """Verify parsed receipts, e.g. log record bodies from a log backend.

    A log backend does not keep write order, so each chain's records are checked in ``seq`` order; the
    ``prev`` links, not the arrival order, prove the sequence. Errors name the record's 1-based position
    in ``records``."""
    checker = _Checker({key_id: key.public_bytes_raw() for key_id, key in public_keys.items()}, expect_heads)
    chained: list[tuple[str, int, int, Mapping[str, Any]]] = []
    for position, record in enumerate(records, 1):
        chain = record.get("chain") if isinstance(record, Mapping) else None
        seq = record.get("seq") if isinstance(record, Mapping) else None
        if isinstance(chain, str) and type(seq) is int:
            chained.append((chain, seq, position, record))
        else:
            checker.check(record, None, position)
    chained.sort(key=lambda item: item[:3])
    for _chain, _seq, position, record in chained:
        checker.check(dict(record), None, position)
    return checker.report()


@dataclass(slots=True)
class _ChainState:
    seq: int = -1
    hash: str = ZERO_HASH
    receipts: int = 0
    counted: int = 0          # decision and settlement receipts, what checkpoints count
    file: str | None = None
    line: int = 0
    reached: bool = False     # the expected head (if any) was seen


class _Checker:
    """The one implementation of the per-receipt and per-chain checks."""

    def __init__(self, public_keys: Mapping[str, bytes], expect_heads: Mapping[str, str] | None) -> None:
        self.keys = dict(public_keys)  # raw 32-byte Ed25519 public keys (picklable, for workers)
        self.expect = dict(expect_heads or {})
        self.chains: dict[str, _ChainState] = {}
        self.receipts = 0
        self.first_error: dict[str, Any] | None = None
        self.torn: list[tuple[str, int]] = []

    def fail(self, file: str | None, line: int | None, chain: str | None, seq: int | None,
             reason: str) -> None:
        if self.first_error is None:
            self.first_error = {"file": file, "line": line, "chain": chain, "seq": seq, "reason": reason}

    def torn_line(self, file: str, line: int) -> None:
        self.torn.append((file, line))
        self.fail(file, line, None, None, "torn last line")

    def check(self, receipt: Any, file: str | None, line: int, raw: bytes | None = None) -> None:
        """Check one receipt against its chain so far; ``raw`` is its line when read from a file.

        The receipt is the checker's to keep: its seal is popped off, leaving the unsigned receipt."""
        chain = receipt.get("chain") if isinstance(receipt, dict) else None
        seq = receipt.get("seq") if isinstance(receipt, dict) else None
        if not isinstance(chain, str) or type(seq) is not int:
            self.fail(file, line, chain if isinstance(chain, str) else None, None,
                      "malformed receipt: not an object with a string chain and an integer seq")
            return
        state = self.chains.get(chain)
        if state is None:
            state = self.chains[chain] = _ChainState()
        self.receipts += 1
        state.receipts += 1
        claimed, sig = receipt.pop("hash", None), receipt.pop("sig", None)
        reason = self._problem(receipt, claimed, sig, chain, seq, state, raw)
        if reason is not None:
            self.fail(file, line, chain, seq, reason)
        # Follow the receipt's own claims so one bad receipt is reported once, not at every later one.
        state.seq, state.hash = seq, claimed if isinstance(claimed, str) else ""
        state.file, state.line = file, line
        state.counted += receipt.get("kind") != "checkpoint"
        state.reached = state.reached or self.expect.get(chain) == claimed

    def _problem(self, receipt: dict[str, Any], claimed: Any, sig: Any, chain: str, seq: int,
                 state: _ChainState, raw: bytes | None) -> str | None:
        key_id = receipt.get("key_id")
        if not isinstance(claimed, str) or not isinstance(sig, str) or not isinstance(key_id, str):
            return "malformed receipt: hash, sig and key_id must be strings"
        try:
            unsigned = _unsigned(receipt, raw)
        except (TypeError, ValueError, RecursionError) as exc:
            return f"malformed receipt: {exc}"
        digest = hashlib.sha256(unsigned).digest()
        if digest.hex() != claimed:
            return "hash mismatch: the receipt was edited"
        public = self.keys.get(key_id)
        if public is None:
            return f"untrusted key {key_id}"
        if not _signature_valid(public, sig, digest):
            return "bad signature"
        if raw is not None and line_of(unsigned, claimed, sig) != raw:
            return "edited line: its bytes are not the serialization of the signed receipt"
        kind = receipt.get("kind")
        if receipt.get("v") != VERSION or not isinstance(kind, str) or kind not in KINDS:  # a list is unhashable
            return (f"malformed receipt: unsupported version {receipt.get('v')!r} "
                    f"or kind {receipt.get('kind')!r}")
        if not isinstance(receipt.get("ts"), str):
            return "malformed receipt: ts must be a string"
        if not chain.startswith(key_id + ":"):
            return f"key_id {key_id} does not match chain"
        return self._link_problem(receipt, seq, state)

    @staticmethod
    def _link_problem(receipt: dict[str, Any], seq: int, state: _ChainState) -> str | None:
        prev = receipt.get("prev")
        if state.receipts == 1:
            if seq != 0:
                return f"missing start: chain begins at seq {seq}"
            if prev != ZERO_HASH:
                return "broken link: seq 0 must have prev of 64 zeros"
        elif seq != state.seq + 1:
            return f"out of order: seq {seq} follows seq {state.seq} (receipt missing, reordered or repeated)"
        elif prev != state.hash:
            return f"broken link: prev is not the hash of seq {state.seq}"
        if receipt["kind"] == "checkpoint":
            head = {"seq": seq - 1, "hash": prev}
            if receipt.get("head") != head or receipt.get("count") != state.counted:
                return (f"bad checkpoint: expected head {head} and count {state.counted}, "
                        f"found {receipt.get('head')} and {receipt.get('count')}")
        return None

    def report(self) -> VerifyReport:
        for chain, expected in self.expect.items():
            state = self.chains.get(chain)
            if state is None:
                self.fail(None, None, chain, None,
                          f"missing chain: no receipts found, expected head {expected}")
            elif not state.reached:
                self.fail(state.file, state.line, chain, state.seq,
                          f"truncated: head is {state.seq} {state.hash}, expected {expected}")
        chains = {chain: {"seq": s.seq, "hash": s.hash, "receipts": s.receipts}
                  for chain, s in self.chains.items()}
        return VerifyReport(ok=self.first_error is None, receipts=self.receipts, chains=chains,
                            first_error=self.first_error, torn=self.torn)


def _unsigned(receipt: dict[str, Any], raw: bytes | None) -> bytes:
    """The canonical form of the unsigned receipt; for a value that form refuses, the error is the one
    for the stdlib's reading of the line (which keeps integers beyond 64 bits that orjson made floats)."""
    try:
        return canonical_json(receipt)
    except (TypeError, ValueError, RecursionError):
        if raw is None:
            raise
    return unsigned_form(json.loads(raw))


def _signature_valid(public: bytes, sig: str, digest: bytes) -> bool:
    try:
        signature = binascii.a2b_base64(sig)
    except (binascii.Error, ValueError):
        return False
    if binascii.b2a_base64(signature, newline=False) != sig.encode("ascii"):  # one signature, one spelling
        return False
    return signature_valid(public, signature, digest)


def segment_order(path: Path) -> tuple[str, str, int]:
    """Where a receipt file sorts: its directory, its chain's file stem, its segment number (-1 for a
    file not named as a segment). Files with the same first two hold one chain."""
    match = _SEGMENT.fullmatch(path.name)
    if match is None:
        return str(path.parent), path.name, -1
    return str(path.parent), match["stem"], int(match["segment"])


def segment_files(paths: Iterable[StrPath]) -> list[Path]:
    """Every receipt file named (each once, as the caller spelled it), ordered by directory, chain
    file stem, then segment number."""
    found: dict[Path, Path] = {}
    for given in paths:
        path = Path(given)
        if path.is_dir():
            for file in path.rglob("*.ndjson"):
                if file.is_file():
                    found.setdefault(file.resolve(), file)
        elif path.is_file():
            found.setdefault(path.resolve(), path)
        else:
            raise ConfigError(f"{path}: no such receipts file or directory")
    return sorted(found.values(), key=segment_order)
