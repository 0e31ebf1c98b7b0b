"""Read usage from a response body as it passes to the caller, and settle when it ends.

The hook sits on the HTTP response object (``iter_bytes`` / ``aiter_bytes`` and ``close`` /
``aclose`` of that one instance) rather than on an SDK stream class: every way an SDK lets a caller
consume a body (its ``Stream``, ``.stream()`` helpers, ``with_raw_response``,
``with_streaming_response`` with ``iter_lines``/``read``/``parse``) goes through those methods,
so no consumption style slips past. The observer

* parses server-sent events (or the whole JSON body) and hands them to the adapter's reader,
* drops events the caller did not ask for (a usage-only chunk we requested on their behalf),
* settles exactly once: at the end of the body, when the caller closes it, or when the response
  is garbage-collected half-read (an abandoned stream).
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from typing import Any, Protocol

import orjson

from agentguard_otel.call import MalformedResponse, ResponseInfo

_SEPARATORS = (b"\r\n\r\n", b"\n\n", b"\r\r")
_LF_ONLY = (b"\n\n",)  # a buffer without a carriage return can hold no other separator

# Splits a binary event body read so far into its whole events (parsed) and the incomplete rest.
Frames = Callable[[bytes], tuple[list[Any], bytes]]


def _unread(buffer: bytes) -> tuple[list[Any], bytes]:
    return [], b""


class BodyReader(Protocol):
    """What an adapter knows about one endpoint's response body."""

    info: ResponseInfo
    complete: bool  # the body reached its natural end (final usage / [DONE] / parsed JSON)

    def on_body(self, body: Any) -> None: ...

    def on_event(self, event: str | None, data: Any) -> bool:
        """Digest one SSE event; return True to hide it from the caller."""
        ...


def read_whole(reader: BodyReader, body: Any) -> None:
    """Hand a whole body to the reader; one it cannot read leaves its reason in ``reader.info.problem``."""
    try:
        reader.on_body(body)
    except Exception as exc:
        reader.info.problem = _problem(exc)


def _problem(exc: Exception) -> str:
    """Why a body's usage cannot be trusted: the adapter's own words, or the error's type (never a
    message that might quote the body)."""
    return str(exc) if isinstance(exc, MalformedResponse) else f"response unreadable: {type(exc).__name__}"


def loads(raw: bytes | str) -> Any:
    """Parse provider JSON with exact decimals (a reported cost must not pass through a float).

    orjson reads most events several times faster; its reading is kept only when it is the
    stdlib's: no float in it (a text that may hold one is checked, and one that does is re-read
    with decimals), and anything orjson refuses (integers beyond 64 bits, NaN, lone surrogates, bad
    UTF-8) is read, or refused, by the stdlib."""
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw, parse_float=Decimal)
    text = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if _FLOAT_HINT.search(text) is not None and _has_float(parsed):
        return json.loads(raw, parse_float=Decimal)
    return parsed


# Where orjson may read a float: a digit followed by a fraction or an exponent, or an integer too
# long for 64 bits (which it reads as a float). Text without either holds none.
_FLOAT_HINT = re.compile(rb"[0-9][.eE]|[0-9]{19}")


def _has_float(value: Any) -> bool:
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, float):
            return True
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


class BodyObserver:
    """Parses a body incrementally and reports its end once."""

    def __init__(self, reader: BodyReader, *, sse: bool, on_progress: Callable[[], None],
                 on_end: Callable[[ResponseInfo, bool], None], frames: Frames | None = None) -> None:
        self.reader = reader
        self.sse = sse
        self.frames = frames  # a binary event framing (Bedrock's event stream): events read as they pass
        self._on_progress = on_progress
        self._on_end = on_end
        self._buffer = b""
        self._ended = False
        self._lock = threading.Lock()
        self.pulling = False  # True while the underlying transport is being read

    def feed(self, chunk: bytes) -> bytes:
        """Take bytes from the wire; return the bytes the caller may see."""
        self._buffer += chunk
        if self.frames is not None:
            self._split(self.frames)
            self._on_progress()
            return chunk
        if not self.sse:
            return chunk
        out = []
        separators = _SEPARATORS if b"\r" in self._buffer else _LF_ONLY
        while True:
            cut = -1
            sep_len = 0
            for sep in separators:
                index = self._buffer.find(sep)
                if index != -1 and (cut == -1 or index < cut):
                    cut, sep_len = index, len(sep)
            if cut == -1:
                break
            block = self._buffer[: cut + sep_len]
            self._buffer = self._buffer[cut + sep_len:]
            if not self._digest(block[:cut]):
                out.append(block)
        self._on_progress()
        return out[0] if len(out) == 1 else b"".join(out)

    def _split(self, frames: Frames) -> None:
        """Read the whole framed events buffered; a body that cannot be framed stops the reading."""
        try:
            events, self._buffer = frames(self._buffer)
        except Exception as exc:
            self.reader.info.problem = _problem(exc)
            self.frames = _unread  # the rest passes to the caller unread
            self._buffer = b""
            return
        for parsed in events:
            self.event(parsed)

    def flush(self) -> bytes:
        """The body ended: digest what is left (a JSON body, or an unterminated last event)."""
        rest, self._buffer = self._buffer, b""
        if self.frames is not None:
            return b""  # an incomplete last message: nothing to read
        if not self.sse:
            if rest:
                try:
                    body = loads(rest)
                except ValueError:  # not JSON (an error page): no usage to read
                    return b""
                read_whole(self.reader, body)
            return b""
        if rest.strip() and self._digest(rest):
            return b""
        return rest

    def _digest(self, block: bytes) -> bool:
        """Read one event; True to hide it. An event the reader cannot digest is shown as it is and
        leaves its reason in ``info.problem`` (the call then settles at its reservation)."""
        try:
            return self._read_event(block)
        except Exception as exc:
            self.reader.info.problem = _problem(exc)
            return False

    def _read_event(self, block: bytes) -> bool:
        event: str | None = None
        if block.startswith(b"data: ") and b"\n" not in block and b"\r" not in block:
            data = block[6:]  # the common event: one data line
        else:
            data_lines = []
            for line in block.splitlines():
                if line.startswith(b"data:"):
                    data_lines.append(line[5:].lstrip(b" "))
                elif line.startswith(b"event:"):
                    event = line[6:].strip().decode("utf-8", "replace")
            if not data_lines:
                return False
            data = b"\n".join(data_lines)
        if data == b"[DONE]":
            self.reader.complete = True
            return False
        try:
            parsed = loads(data)
        except ValueError:
            return False
        return self.reader.on_event(event, parsed)

    def event(self, data: Any) -> None:
        """One event already parsed by the SDK (botocore's EventStream), read as a wire event is."""
        try:
            self.reader.on_event(None, data)
        except Exception as exc:
            self.reader.info.problem = _problem(exc)

    def end(self) -> None:
        """Report the end once, however it came about."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
        self._on_end(self.reader.info, self.reader.complete)


def _observed(source: Iterator[bytes], observer: BodyObserver) -> Iterator[bytes]:
    """The bytes of ``source`` the caller may see, each fed to ``observer``; its end reported once."""
    try:
        while True:
            observer.pulling = True
            try:
                chunk = next(source)
            except StopIteration:
                break
            finally:
                observer.pulling = False
            visible = observer.feed(chunk)
            if visible:
                yield visible
        tail = observer.flush()
        if tail:
            yield tail
    finally:
        observer.end()


async def _aobserved(source: AsyncIterator[bytes], observer: BodyObserver) -> AsyncIterator[bytes]:
    """:func:`_observed` for an async body."""
    try:
        while True:
            observer.pulling = True
            try:
                chunk = await source.__anext__()
            except StopAsyncIteration:
                break
            finally:
                observer.pulling = False
            visible = observer.feed(chunk)
            if visible:
                yield visible
        tail = observer.flush()
        if tail:
            yield tail
    finally:
        observer.end()


def observe_sync(response: Any, observer: BodyObserver) -> None:
    """Route an unread sync response body through ``observer``."""
    ref = weakref.ref(response)  # no cycle: the response must stay collectable when dropped
    cls = type(response)

    # The source is made when the method is called (the caller holds the response then), not when
    # iteration starts: like httpx's own iterator it holds the response while it lives, for a
    # caller that keeps only the iterator.
    def iter_bytes(chunk_size: int | None = None) -> Iterator[bytes]:
        return _observed(cls.iter_bytes(ref(), chunk_size), observer)

    def close() -> None:
        resp = ref()
        try:
            if resp is not None:
                cls.close(resp)
        finally:
            if not observer.pulling:  # the caller closed it; not the transport finishing a read
                observer.end()

    response.iter_bytes = iter_bytes
    response.close = close
    weakref.finalize(response, observer.end)


def observe_async(response: Any, observer: BodyObserver) -> None:
    """Route an unread async response body through ``observer``."""
    ref = weakref.ref(response)
    cls = type(response)

    def aiter_bytes(chunk_size: int | None = None) -> AsyncIterator[bytes]:
        return _aobserved(cls.aiter_bytes(ref(), chunk_size), observer)

    async def aclose() -> None:
        resp = ref()
        try:
            if resp is not None:
                await cls.aclose(resp)
        finally:
            if not observer.pulling:
                observer.end()

    response.aiter_bytes = aiter_bytes
    response.aclose = aclose
    weakref.finalize(response, observer.end)
