"""Bounds of media a request carries: an audio file's duration read from its own header, and the
files of a multipart request. Pure functions: no SDK, no ledger."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agentguard_otel.money import ceil_div

HEAD_BYTES = 1 << 20
"""How much of a file is read for its header: a WAV's chunks before ``data`` (LIST, bext) fit."""

MP3_MIN_BITS_PER_SECOND = 8_000
"""The lowest bitrate an MP3 frame can declare (MPEG-2.5 Layer III, 8 kbit/s): an MP3 of N bytes
holds at most N x 8 / 8000 seconds of audio."""

GUESS_BITS_PER_SECOND = 6_000
"""Opus's lowest bitrate: the size-based guess for a format whose duration is not read (OGG, FLAC,
M4A, WebM...). A guess only, since a lossless or silent stream can go lower: strict refuses it."""

_PCM_FORMATS = frozenset({1, 3, 6, 7})  # integer PCM, IEEE float, A-law, mu-law: fixed bytes per frame
_G711_FORMATS = frozenset({6, 7})  # A-law, mu-law
_EXTENSIBLE = 0xFFFE


@dataclass(frozen=True)
class MediaBound:
    """What a request's media adds to its bound: audio or image tokens, input images (bounded per
    image), characters and audio seconds billed as such, and output the request fixes itself."""

    input_tokens: int = 0
    images: int = 0
    characters: int = 0
    audio_seconds: int = 0
    output_tokens: int = 0
    unproven: str | None = None  # why the bound is a guess (strict estimation refuses the call)


@dataclass(frozen=True)
class AudioLength:
    """At most ``seconds`` of audio; ``proven`` False when it is a guess from the file's size."""

    seconds: int
    proven: bool


def audio_length(head: bytes, size: int) -> AudioLength:
    """The most audio a file of ``size`` bytes starting with ``head`` can hold: a WAV of PCM frames
    read exactly (every byte after the ``data`` chunk header counted, whatever its declared size:
    a header cannot make a file longer than its bytes), an MP3 at its lowest bitrate, anything
    else guessed at :data:`GUESS_BITS_PER_SECOND`."""
    wav = _wav_seconds(head, size)
    if wav is not None:
        return AudioLength(wav, True)
    if _mpeg_audio(head):
        return AudioLength(ceil_div(size * 8, MP3_MIN_BITS_PER_SECOND), True)
    return AudioLength(ceil_div(size * 8, GUESS_BITS_PER_SECOND), False)


def _mpeg_audio(head: bytes) -> bool:
    """Whether the file is MPEG audio (MP3, or Layer I/II) after its ID3v2 tags: the first frame
    header has a valid version, layer, sample rate and a listed bitrate. An ID3 tag can precede
    anything (FLAC, AAC), ADTS AAC shares the sync bits (layer 00), and a free-format frame has no
    bitrate floor: none of them is bounded at 8 kbit/s."""
    offset = 0
    while head[offset:offset + 3] == b"ID3" and len(head) >= offset + 10:
        size = head[offset + 6:offset + 10]
        if any(byte & 0x80 for byte in size):
            return False  # not a syncsafe size: not an ID3v2 tag
        footer = 10 if head[offset + 5] & 0x10 else 0
        offset += 10 + footer + sum(byte << (7 * (3 - i)) for i, byte in enumerate(size))
    frame = head[offset:offset + 4]
    if len(frame) < 4 or frame[0] != 0xFF or frame[1] & 0xE0 != 0xE0:
        return False
    version, layer = (frame[1] >> 3) & 3, (frame[1] >> 1) & 3
    bitrate, rate = frame[2] >> 4, (frame[2] >> 2) & 3
    return version != 1 and layer != 0 and bitrate not in (0, 15) and rate != 3


def _wav_seconds(head: bytes, size: int) -> int | None:
    """A RIFF/WAVE file of fixed-size frames: ceil(frames / rate); None for anything else."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    offset = 12
    frame_bytes_per_second: int | None = None
    while offset + 8 <= len(head):
        chunk, length = head[offset:offset + 4], struct.unpack_from("<I", head, offset + 4)[0]
        body = offset + 8
        if chunk == b"fmt ":
            if frame_bytes_per_second is not None:
                return None  # decoders differ on which format chunk they take
            frame_bytes_per_second = _pcm_rate(head[body:body + min(length, 40)])
            if frame_bytes_per_second is None:
                return None
        elif chunk == b"data":
            if frame_bytes_per_second is None:
                return None
            return ceil_div(max(size - body, 0), frame_bytes_per_second)
        offset = body + length + (length & 1)  # chunks are padded to an even length
    return None


def _pcm_rate(fmt: bytes) -> int | None:
    """Bytes of one second of frames, from a ``fmt `` chunk of a fixed-frame format (None otherwise):
    the least of what its fields make of it (frames of its sample size, of its block alignment, its
    declared byte rate), so a decoder trusting any one of them hears no more than the bound. A-law
    and mu-law samples are a byte whatever the bits field says."""
    if len(fmt) < 16:
        return None
    tag, channels, rate, byte_rate, align, bits = (int(field) for field in struct.unpack_from("<HHIIHH", fmt))
    if tag == _EXTENSIBLE:
        if len(fmt) < 26:
            return None
        tag = int(struct.unpack_from("<H", fmt, 24)[0])  # the sub-format GUID starts with the format tag
    if tag not in _PCM_FORMATS or channels == 0 or rate == 0 or bits == 0:
        return None
    frame = channels * (1 if tag in _G711_FORMATS else ceil_div(bits, 8))
    return min(rate * frame, rate * (align or frame), byte_rate or rate * frame)


def read_head(content: Any) -> tuple[bytes, int] | None:
    """(the first :data:`HEAD_BYTES`, the size) of a file's content as the SDK will send it: bytes,
    or a seekable binary file, read from its start and left where it was. None when it cannot be
    read without consuming it."""
    if isinstance(content, (bytes, bytearray, memoryview)):
        data = bytes(content)
        return data[:HEAD_BYTES], len(data)
    with contextlib.suppress(Exception):
        if content.seekable():
            start = content.tell()
            try:  # from the start: httpx seeks a file to 0 before it sends it, whatever its position
                content.seek(0)
                head = content.read(HEAD_BYTES)
                content.seek(0, 2)
                size = content.tell()  # not seek's return: a hand-written file object may return None
            finally:
                content.seek(start)
            if isinstance(head, bytes):
                return head, size
    return None


def request_files(files: Any, field: str) -> Iterable[Any]:
    """The contents of a multipart request's files named ``field`` (or ``field[]``), from the
    mapping or list of (name, file) the SDK sends; a file is its content or (filename, content, ...)."""
    pairs = files.items() if isinstance(files, Mapping) else files or ()
    for name, file in pairs:
        if name in (field, f"{field}[]"):
            yield file[1] if isinstance(file, tuple) else file
