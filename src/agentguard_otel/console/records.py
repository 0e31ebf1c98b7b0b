"""Receipt logs read for people: streamed line by line, never trusted, each line with its verdict.

A receipt's fields are whatever its file says until ``verify`` has checked it: every value is read
with its type checked (a wrong type reads as absent), and the verdict shown beside it comes from the
verifier, run over the whole chain (all segment files of one chain's file stem) with the trusted keys.
A line is ``ok`` when its chain verifies through it, ``bad`` at the chain's first failure (with the
verifier's reason) and ``unverified`` after it: once a chain breaks, nothing after it is vouched for.
"""

from __future__ import annotations

import heapq
import json
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agentguard_otel.console.usage import usd
from agentguard_otel.ledger.report import printable
from agentguard_otel.money import format_usd
from agentguard_otel.receipts import VerifyReport, verify
from agentguard_otel.receipts.verify import segment_files, segment_order
from agentguard_otel.scope import SCOPE_FIELDS

TRACE_ID = re.compile(r"[0-9a-f]{32}")
Status = dict[str, str | None]


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


@dataclass(frozen=True)
class Entry:
    """One line of a receipt log: where it is, its bytes, and the object it parses to (or None)."""

    file: str
    line: int
    raw: bytes
    receipt: Mapping[str, Any] | None

    def text(self, name: str) -> str | None:
        value = self.receipt.get(name) if self.receipt is not None else None
        return value if isinstance(value, str) else None

    def nano(self, name: str) -> int | None:
        value = self.receipt.get(name) if self.receipt is not None else None
        return value if type(value) is int and value >= 0 else None

    def integer(self, name: str) -> int | None:
        value = self.receipt.get(name) if self.receipt is not None else None
        return value if type(value) is int else None

    @property
    def scope(self) -> dict[str, str | None]:
        """The receipt's scope values (text only, known fields only)."""
        found = self.receipt.get("scope") if self.receipt is not None else None
        if not isinstance(found, Mapping):
            return {}
        return {name: found[name] if isinstance(found.get(name), str) else None for name in SCOPE_FIELDS}

    @property
    def trace_id(self) -> str | None:
        value = self.text("trace_id")
        return value if value is not None and TRACE_ID.fullmatch(value) else None

    @property
    def order(self) -> tuple[str, str, int]:
        """Newest-first order: the receipt's timestamp text (RFC 3339 UTC sorts as text), then its place."""
        return self.text("ts") or "", self.file, self.line


def entries(files: Iterable[Path]) -> Iterator[Entry]:
    """Every line of the files, in file order, one at a time (memory does not grow with the log)."""
    for path in files:
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, 1):
                yield Entry(str(path), number, raw, _parse(raw))


def _parse(raw: bytes) -> Mapping[str, Any] | None:
    try:
        value = json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def chains(files: Iterable[Path]) -> list[list[Path]]:
    """The files grouped by chain (directory and file stem), each group in segment order."""
    groups: dict[tuple[str, str], list[Path]] = {}
    for path in files:
        groups.setdefault(segment_order(path)[:2], []).append(path)
    return list(groups.values())


class Verdicts:
    """Verification of receipt logs, chain by chain, cached until a chain's files change (a live log
    grows: only its chain is verified again)."""

    def __init__(self, keys: Mapping[str, Ed25519PublicKey]) -> None:
        self.keys = dict(keys)
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, ...], tuple[tuple[tuple[int, ...], ...], VerifyReport, dict[str, int]]] = {}

    def report(self, group: list[Path]) -> tuple[VerifyReport, dict[str, int]]:
        """The verifier's report on one chain's files, and how many lines of each file it vouches
        for: those counted before it ran (a line appended since is not verified yet)."""
        name = tuple(str(path) for path in group)
        # ctime too: utime can put an mtime back after an edit in place, nothing puts a ctime back
        stamp = tuple((s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns) for s in (path.stat() for path in group))
        with self._lock:
            cached = self._cache.get(name)
        if cached is not None and cached[0] == stamp:
            return cached[1], cached[2]
        counted = {str(path): _whole_lines(path) for path in group}
        report = verify(group, self.keys)
        with self._lock:
            self._cache[name] = (stamp, report, counted)
        return report, counted

    def judge(self, files: Iterable[Path]) -> Callable[[Entry], Status]:
        """A function giving each line of ``files`` its status (see the module's text)."""
        places: dict[str, tuple[int, VerifyReport, list[Path], int]] = {}
        for group in chains(files):
            report, counted = self.report(group)
            for index, path in enumerate(group):
                places[str(path)] = (index, report, group, counted[str(path)])

        def status(entry: Entry) -> Status:
            place = places.get(entry.file)
            if place is None:
                return {"status": "unverified", "reason": "not in the verified files"}
            index, report, group, vouched = place
            if entry.line > vouched:
                return {"status": "unverified", "reason": "written after its chain was verified"}
            error = report.first_error
            if error is None:
                return {"status": "ok", "reason": None}
            failed = (next((i for i, p in enumerate(group) if str(p) == error["file"]), -1), error["line"] or 0)
            if (index, entry.line) < failed:
                return {"status": "ok", "reason": None}
            if (index, entry.line) == failed:
                return {"status": "bad", "reason": str(error["reason"])}
            return {"status": "unverified", "reason": f"after the chain's failure at {error['file']}:{error['line']}"}

        return status


def _whole_lines(path: Path) -> int:
    """The lines of a file as it is now (a torn last line counts: verify reports it)."""
    with open(path, "rb") as handle:
        return sum(1 for _ in handle)


def newest(files: list[Path], match: Callable[[Entry], bool], limit: int) -> list[Entry]:
    """The ``limit`` newest receipts that ``match``, newest first (one pass, ``limit`` kept in memory)."""
    return heapq.nlargest(limit, (e for e in entries(files) if e.receipt is not None and match(e)),
                          key=lambda e: e.order)


@dataclass(frozen=True)
class Call:
    """A decision with the settlement and adjustment of its call, joined by ``call_id``."""

    decision: Entry
    settlement: Entry | None
    adjustment: Entry | None

    @property
    def actual_nano(self) -> int | None:
        """The call's cost: the adjustment's correction, else the settlement's, else None (blocked,
        or not settled yet)."""
        for entry in (self.adjustment, self.settlement):
            if entry is not None and entry.nano("actual_nano") is not None:
                return entry.nano("actual_nano")
        return None


def calls(files: list[Path], match: Callable[[Entry], bool], limit: int) -> list[Call]:
    """The ``limit`` newest decisions that ``match``, each with its call's settlement and adjustment
    (a second pass picks up only those: memory stays ``limit`` calls)."""
    decisions = newest(files, lambda e: e.text("kind") == "decision" and match(e), limit)
    wanted = {call_id for e in decisions if (call_id := e.text("call_id")) is not None}
    settled: dict[str, Entry] = {}
    adjusted: dict[str, Entry] = {}
    for entry in entries(files):
        call_id, kind = entry.text("call_id"), entry.text("kind")
        if call_id in wanted and kind in ("settlement", "adjustment"):
            (settled if kind == "settlement" else adjusted)[call_id] = entry
    return [Call(d, settled.get(d.text("call_id") or ""), adjusted.get(d.text("call_id") or "")) for d in decisions]


def latest_trace(files: list[Path]) -> str | None:
    """The trace of the newest receipt that carries a trace id."""
    found = newest(files, lambda e: e.trace_id is not None, 1)
    return found[0].trace_id if found else None


def of_trace(files: list[Path], trace_id: str) -> list[Entry]:
    """The receipts of one trace, in log order."""
    return [e for e in entries(files) if e.trace_id == trace_id]


def receipt_files(paths: Iterable[Path]) -> list[Path]:
    """The segment files below ``paths``, in the verifier's order (a missing directory has none)."""
    return segment_files([path for path in paths if path.exists()])


def view(entry: Entry, status: Status | None = None) -> dict[str, Any]:
    """A receipt's fields as the console and ``verify --trace --json`` show them (checked types;
    USD from nano-USD exactly), its place, its line and its verdict."""
    estimated, actual = entry.nano("estimated_nano"), entry.nano("actual_nano")
    shown: dict[str, Any] = {"file": entry.file, "line": entry.line}
    for name in ("kind", "chain", "ts", "call_id", "trace_id", "span_id", "action", "reason", "rule_id",
                 "model_requested", "model_effective", "response_model", "outcome"):
        shown[name] = entry.text(name)
    shown.update(seq=entry.integer("seq"), scope=entry.scope,
                 estimated_usd=None if estimated is None else usd(estimated),
                 actual_usd=None if actual is None else usd(actual),
                 receipt_line=entry.raw.decode("utf-8", "replace").rstrip("\n"))
    if status is not None:
        shown["verification"] = status
    return shown


def trace_table(found: list[Entry]) -> str:
    """A trace's receipts as a text table: when, what, which model, estimated or actual cost, why."""
    rows: list[tuple[str, ...]] = [("time", "receipt", "action", "model", "cost", "seq", "reason")]
    for entry in found:
        kind = entry.text("kind") or "?"
        model = entry.text("model_requested") or entry.text("response_model") or ""
        effective = entry.text("model_effective")
        if effective and effective != model:
            model = f"{model} -> {effective}" if model else effective
        estimated = kind == "decision"
        cost = entry.nano("estimated_nano" if estimated else "actual_nano")
        priced = "" if cost is None else f"{'est. ' if estimated else ''}{format_usd(cost)}"
        # Receipt text is untrusted: control characters are shown escaped, never sent to the terminal.
        rows.append(tuple(printable(cell) for cell in (
            entry.text("ts") or "-", kind, entry.text("action") or entry.text("outcome") or "", model, priced,
            str(entry.integer("seq")), entry.text("reason") or "")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)
