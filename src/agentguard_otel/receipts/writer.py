"""Append-only, hash-chained, signed receipt segments: one chain per process.

Each append is one ``os.write`` of one whole line on an ``O_APPEND`` descriptor, so concurrent
writers never interleave bytes, and a crash can at worst leave one torn last line, which ``verify``
reports. Segment files are named ``<chain with ":" as "_">.<segment:05d>.ndjson`` and created with
``O_EXCL``: a writer never appends to a file it did not create.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from agentguard_otel.receipts.format import RESERVED_FIELDS, VERSION, ZERO_HASH, Sealed, seal
from agentguard_otel.receipts.keys import SigningKey, StrPath

logger = logging.getLogger(__name__)

DEFAULT_SEGMENT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_CHECKPOINT_EVERY = 1000
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def segment_file_name(chain: str, segment: int) -> str:
    """File name of one segment of a chain (chain ids are ``ed25519:<hex>:<hex>``, so ``_`` is free)."""
    return f"{chain.replace(':', '_')}.{segment:05d}.ndjson"


def _utc_timestamp() -> str:
    """RFC 3339 UTC with microseconds, e.g. ``2026-11-23T10:20:02.123456Z`` (cheaper than datetime)."""
    seconds, fraction = divmod(time.time_ns() // 1000, 1_000_000)
    return f"{_utc_second(seconds)}.{fraction:06d}Z"


@functools.lru_cache(maxsize=4)  # receipts come many to a second: its text is formatted once
def _utc_second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


class ReceiptWriter:
    """Writes this process's receipt chain.

    Thread-safe. Fork-safe: a forked child that uses the writer starts its own chain in its own files
    (the parent's descriptor is dropped in the child, never written). Checkpoint receipts
    (``kind: checkpoint``, body ``{"head": {"seq", "hash"} of the receipt before it, "count": decision,
    settlement and adjustment receipts in the chain so far}``) are written every ``checkpoint_every`` receipts, as
    the last line of a segment that reached ``segment_max_bytes`` (the chain continues in the next
    segment) and at ``close()``. Nothing is registered globally; the owner calls ``close()``.

    ``on_checkpoint`` is called with each checkpoint receipt once it is written, so an owner exporting
    receipts (e.g. as log records) can export checkpoints too: without them an exported chain has gaps.
    """

    def __init__(self, directory: StrPath, key: SigningKey, *,
                 segment_max_bytes: int = DEFAULT_SEGMENT_MAX_BYTES,
                 checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
                 on_checkpoint: Callable[[Sealed], None] | None = None) -> None:
        if segment_max_bytes <= 0 or checkpoint_every <= 0:
            raise ValueError("segment_max_bytes and checkpoint_every must be positive")
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _disk_error(exc, self.directory) from exc
        self.key = key
        self.segment_max_bytes = segment_max_bytes
        self.checkpoint_every = checkpoint_every
        self.on_checkpoint = on_checkpoint
        self._locks: dict[int, threading.Lock] = {}
        self._closed = False
        self._fd: int | None = None
        self._start_chain()

    # -- public ---------------------------------------------------------------------------------

    @property
    def chain(self) -> str:
        """``key_id + ":" + instance``: this process's chain id."""
        with self._lock():
            self._adopt()
            return self._chain

    @property
    def head(self) -> tuple[str, int, str]:
        """(chain, seq, hash) of the last receipt written; (chain, -1, 64 zeros) before the first."""
        with self._lock():
            self._adopt()
            return self._chain, self._seq - 1, self._prev

    def append(self, kind: Literal["decision", "settlement", "adjustment"], body: Mapping[str, Any]) -> Sealed:
        """Sign, chain and write one receipt; returns it (its key order is the line's key order).

        Raises ValueError for a bad kind or a body using a reserved field, TypeError for a value a
        receipt may not hold, OSError (naming the directory) when the disk refuses the line. A failed
        append consumes no ``seq``: the chain stays gapless."""
        if kind not in ("decision", "settlement", "adjustment"):
            raise ValueError(f"receipt kind must be 'decision', 'settlement' or 'adjustment', got {kind!r}")
        clash = RESERVED_FIELDS.intersection(body)
        if clash:
            raise ValueError(f"receipt body uses reserved field(s): {', '.join(sorted(clash))}")
        with self._lock():
            self._adopt()
            self._require_open()
            receipt = self._write(kind, body)
            self._count += 1
            self._since_checkpoint += 1
            if self._since_checkpoint >= self.checkpoint_every or self._size >= self.segment_max_bytes:
                try:
                    self._checkpoint()
                except OSError as exc:  # the receipt itself is written; the checkpoint is retried next time
                    logger.warning("agentguard: receipt checkpoint deferred: %s", exc)
            return receipt

    def checkpoint(self) -> Sealed | None:
        """Write a checkpoint now; None when no receipt was written since the last one."""
        with self._lock():
            self._adopt()
            self._require_open()
            return self._checkpoint() if self._since_checkpoint else None

    def close(self) -> None:
        """Write the final checkpoint and close the segment. Idempotent."""
        with self._lock():
            self._adopt()
            if self._closed:
                return
            self._closed = True
            try:
                if self._since_checkpoint:
                    self._checkpoint()
            finally:
                self._end_segment()

    def __repr__(self) -> str:
        return f"ReceiptWriter({str(self.directory)!r}, chain={self._chain!r}, next seq={self._seq})"

    # -- internals (called with the lock held) --------------------------------------------------

    def _lock(self) -> threading.Lock:
        """This process's lock. A child must not inherit a lock some parent thread held at fork time;
        ``dict.setdefault`` is atomic, so a child's threads all agree on one fresh lock."""
        pid = os.getpid()
        lock = self._locks.get(pid)
        return lock if lock is not None else self._locks.setdefault(pid, threading.Lock())

    def _adopt(self) -> None:
        """In a forked child: forget the parent's chain and descriptor, start a chain of our own."""
        pid = os.getpid()
        if self._pid == pid:
            return
        self._locks = {pid: self._locks[pid]}
        if self._fd is not None:
            os.close(self._fd)  # the child's copy only; the parent's stays open
            self._fd = None
        self._start_chain()

    def _start_chain(self) -> None:
        self._pid = os.getpid()
        self._chain = f"{self.key.key_id}:{secrets.token_hex(6)}"
        self._seq = 0
        self._prev = ZERO_HASH
        self._segment = 0
        self._size = 0
        self._count = 0
        self._since_checkpoint = 0

    def _require_open(self) -> None:
        if self._closed:
            raise ValueError(f"receipt writer for {self.directory} is closed")

    def _checkpoint(self) -> Sealed:
        receipt = self._write("checkpoint", {"head": {"seq": self._seq - 1, "hash": self._prev},
                                             "count": self._count})
        self._since_checkpoint = 0
        if self._size >= self.segment_max_bytes:
            self._end_segment()
            self._segment += 1
        if self.on_checkpoint is not None:
            try:
                self.on_checkpoint(receipt)
            except Exception:  # the checkpoint is on disk; an exporter's failure must not undo that
                logger.exception("agentguard: on_checkpoint callback failed")
        return receipt

    def _write(self, kind: str, body: Mapping[str, Any]) -> Sealed:
        fields: dict[str, Any] = {
            "v": VERSION, "kind": kind, "chain": self._chain, "seq": self._seq, "prev": self._prev,
            "ts": _utc_timestamp(),
            **body, "key_id": self.key.key_id,
        }
        receipt, line = seal(fields, self.key)
        fd = self._segment_fd()
        try:
            written = os.write(fd, line)
        except OSError as exc:  # nothing was written: the segment is intact, retry later is safe
            raise _disk_error(exc, self.directory) from exc
        if written != len(line):
            # A torn line is now the segment's tail. Never patch it with a second write: verify must see
            # it. Later appends go to a fresh segment; this receipt's seq is reused there.
            self._end_segment()
            self._segment += 1
            raise OSError(f"short write in {self.directory}: {written} of {len(line)} bytes of a receipt "
                          "(disk full?); the torn line is left for verify to report, appends continue "
                          "in a new segment")
        self._size += written
        self._seq += 1
        self._prev = receipt["hash"]
        return receipt

    def _segment_fd(self) -> int:
        if self._fd is None:
            path = self.directory / segment_file_name(self._chain, self._segment)
            try:
                self._fd = os.open(path, _OPEN_FLAGS, 0o640)
            except OSError as exc:
                raise _disk_error(exc, self.directory) from exc
            self._size = 0
        return self._fd

    def _end_segment(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.fsync(fd)
        except OSError as exc:
            logger.warning("agentguard: fsync of a receipt segment in %s failed: %s", self.directory, exc)
        finally:
            os.close(fd)


def _disk_error(exc: OSError, directory: Path) -> OSError:
    """The same OSError class and errno, with a message that names the receipts directory."""
    message = f"cannot write receipts in {directory}: {exc.strerror or exc}"
    try:
        return type(exc)(exc.errno, message) if exc.errno is not None else type(exc)(message)
    except TypeError:
        return OSError(exc.errno, message)
