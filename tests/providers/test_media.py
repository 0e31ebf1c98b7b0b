"""The audio-length reader: a WAV's duration from its own header, exactly (property-tested against
WAVs the stdlib writes), never below what the file holds, and any bytes at all read without error."""

from __future__ import annotations

import io
import math
import struct
import wave

from hypothesis import given, settings
from hypothesis import strategies as st

from agentguard_otel.providers.media import (
    GUESS_BITS_PER_SECOND,
    HEAD_BYTES,
    AudioLength,
    audio_length,
    read_head,
    request_files,
)
from tests.servers.openai_media import wav


def length_of(data: bytes) -> AudioLength:
    return audio_length(data[:1 << 20], len(data))


@settings(max_examples=200)
@given(frames=st.integers(0, 200_000), rate=st.integers(1, 96_000), channels=st.integers(1, 4),
       width=st.integers(1, 4))
def test_a_wav_of_n_frames_at_rate_r_lasts_ceil_n_over_r(frames: int, rate: int, channels: int, width: int) -> None:
    assert length_of(wav(frames, rate, channels, width)) == AudioLength(math.ceil(frames / rate), True)


@settings(max_examples=200)
@given(frames=st.integers(1, 50_000), rate=st.integers(1, 48_000), junk=st.binary(max_size=64),
       chunks=st.lists(st.tuples(st.sampled_from([b"LIST", b"bext", b"JUNK"]), st.binary(max_size=40)), max_size=3))
def test_extra_chunks_and_trailing_bytes_never_shorten_a_wav(frames: int, rate: int, junk: bytes,
                                                              chunks: list[tuple[bytes, bytes]]) -> None:
    """Chunks before ``data`` are skipped (padded to even lengths); bytes after it only lengthen."""
    plain = wav(frames, rate)
    extra = b"".join(name + struct.pack("<I", len(body)) + body + b"\0" * (len(body) & 1) for name, body in chunks)
    data_at = plain.index(b"data")
    assert data_at == 36
    dressed = plain[:data_at] + extra + plain[data_at:] + junk
    found = length_of(dressed)
    assert found.proven and found.seconds >= math.ceil(frames / rate)


@settings(max_examples=500)
@given(data=st.binary(max_size=4_096))
def test_any_bytes_are_read_without_error_and_never_as_nothing(data: bytes) -> None:
    found = length_of(data)
    assert found.seconds >= 0
    if not found.proven:
        assert found.seconds == math.ceil(len(data) * 8 / GUESS_BITS_PER_SECOND)


@settings(max_examples=300)
@given(data=st.binary(min_size=4, max_size=2_048), fmt=st.binary(min_size=16, max_size=40))
def test_whatever_a_riff_header_declares_its_length_is_at_most_one_second_a_byte(data: bytes, fmt: bytes) -> None:
    """A lying header (any format fields, any chunk sizes) cannot make the length exceed the file's
    bytes at the slowest frame rate there is (one byte a second)."""
    riff = b"RIFF" + data[:4] + b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + data
    found = length_of(riff)
    assert found.seconds <= max(len(riff), math.ceil(len(riff) * 8 / GUESS_BITS_PER_SECOND))


def test_a_compressed_wav_is_not_read_as_pcm() -> None:
    adpcm = bytearray(wav(16_000, 16_000))
    adpcm[20:22] = struct.pack("<H", 2)  # format tag 2: MS ADPCM, not fixed-size frames
    assert not length_of(bytes(adpcm)).proven


def test_a_seekable_file_is_read_from_its_start_and_left_where_it_was() -> None:
    """httpx sends a file object from 0 whatever its position, so that is what is measured."""
    file = io.BytesIO(wav(8_000, 8_000) + b"xx")
    file.seek(2)
    head = read_head(file)
    assert head is not None and head[1] == len(wav(8_000, 8_000)) + 2 and file.tell() == 2
    assert audio_length(*head) == AudioLength(2, True)  # the 2 bytes after the 1 s of frames count too


def test_a_stream_that_cannot_seek_is_not_read() -> None:
    class Pipe(io.RawIOBase):
        def readable(self) -> bool:
            return True

    assert read_head(Pipe()) is None
    assert read_head("not a file") is None


def test_request_files_by_name_from_a_list_or_a_mapping() -> None:
    files = [("file", ("a.wav", b"one", "audio/wav")), ("image[]", b"two"), ("mask", b"three")]
    assert list(request_files(files, "file")) == [b"one"]
    assert list(request_files(files, "image")) == [b"two"]
    assert list(request_files({"mask": b"three"}, "mask")) == [b"three"]
    assert list(request_files(None, "file")) == []


def test_a_file_whose_seek_returns_nothing_is_measured_by_its_position() -> None:
    """A hand-written file object may return None from ``seek``: its size is read with ``tell``."""

    class QuietSeeks(io.BytesIO):
        def seek(self, offset: int, whence: int = 0) -> None:  # type: ignore[override]
            super().seek(offset, whence)

    head = read_head(QuietSeeks(wav(8_000, 8_000)))
    assert head is not None and head[1] == len(wav(8_000, 8_000))
    assert audio_length(*head) == AudioLength(1, True)


@settings(max_examples=200)
@given(channels=st.integers(1, 8), rate=st.integers(1, 192_000), width=st.integers(1, 4),
       frames=st.integers(0, 4_000), tail=st.binary(max_size=64))
def test_a_wav_bound_is_never_below_the_frames_a_decoder_reads(channels: int, rate: int, width: int, frames: int,
                                                               tail: bytes) -> None:
    """Whatever its format and whatever follows its frames, a PCM WAV is bounded at no less than
    the seconds of frames Python's wave module reads from it."""
    data = wav(frames, rate, channels, width) + tail
    with wave.open(io.BytesIO(data)) as heard:
        seconds = math.ceil(heard.getnframes() / heard.getframerate())
    bound = audio_length(data[:HEAD_BYTES], len(data))
    assert bound.proven and bound.seconds >= seconds
