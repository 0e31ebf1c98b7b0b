"""Adversarial media calls through the real ``openai`` SDK: requests shaped to cost more than their
strict reservation (a file object left part-way, an MP3-looking file that is not an MP3, characters
outside the BMP, an absurd image count) are bounded conservatively or refused unsent, and a
reply that cannot be read never raises into the caller."""

from __future__ import annotations

import base64
import io
import struct
from typing import Any

import pytest

from agentguard_otel import AgentGuardBlocked
from tests.conftest import GuardFactory
from tests.integration.test_media_pricing import CAP, client, policy, receipts
from tests.servers.openai_media import wav
from tests.servers.openai_server import LocalOpenAIServer

MP3_FRAMES = b"\xff\xfb\x90\x00" * 64
ID3_EMPTY = b"ID3\x04\x00\x00\x00\x00\x00\x00"  # an ID3v2.4 tag of no frames: 10 bytes


def test_a_file_object_left_part_way_is_bounded_from_its_start(guarded: GuardFactory,
                                                               server: LocalOpenAIServer) -> None:
    """httpx seeks a file object to 0 before it sends it: the whole minute leaves, so the bound
    must count the whole file, not what follows the caller's position."""
    handle = guarded(CAP)
    minute = wav(8_000 * 60, rate=8_000)
    file = io.BytesIO(minute + ID3_EMPTY + MP3_FRAMES)
    file.seek(len(minute))  # what is left looks like a 266-byte MP3 (1 s at 8 kbit/s)
    client(server).audio.transcriptions.create(model="whisper-1", file=("a.wav", file))
    decision, settlement = receipts(handle)
    assert settlement["usage"]["input_audio_seconds"] == 60  # the server heard the whole minute
    assert settlement["actual_nano"] == 60 * 100_000 <= decision["estimated_nano"]


@pytest.mark.parametrize("audio", [
    ID3_EMPTY + b"fLaC" + bytes(64),  # an ID3 tag before a FLAC stream (lossless: no bitrate floor)
    b"\xff\xf1\x50\x80" + bytes(64),  # an ADTS AAC frame header: the 12-bit sync, layer 00
    b"ID3\x04\x00\x00\x00\x00\x10\x00" + bytes(64),  # an ID3 tag longer than the file holds
], ids=["id3-flac", "adts", "id3-past-the-end"])
def test_a_file_that_only_looks_like_an_mp3_is_refused_in_strict(guarded: GuardFactory, server: LocalOpenAIServer,
                                                                   audio: bytes) -> None:
    guarded(CAP)
    with pytest.raises(AgentGuardBlocked, match="duration of an audio file"):
        client(server).audio.transcriptions.create(model="whisper-1", file=("a.mp3", audio))
    assert server.requests == []


def test_an_mp3_after_its_id3_tag_is_still_bounded_at_the_lowest_bitrate(guarded: GuardFactory,
                                                                         server: LocalOpenAIServer) -> None:
    handle = guarded(CAP)
    tag = b"ID3\x04\x00\x00\x00\x00\x00\x14" + b"TIT2" + bytes(16)  # a 20-byte tag body
    mp3 = tag + b"\xff\xfb\x90\x00" * 4_000  # 16,030 bytes
    client(server).audio.transcriptions.create(model="whisper-1", file=("a.mp3", mp3))
    decision, _ = receipts(handle)
    assert decision["estimated_nano"] == 17 * 100_000  # ceil(16,030 x 8 / 8,000) = 17 s


def test_speech_characters_outside_the_bmp_are_bounded_by_utf16_units(guarded: GuardFactory,
                                                                      server: LocalOpenAIServer) -> None:
    """OpenAI does not say what a character is: a UTF-16 code unit count is at least the code
    points and the grapheme clusters, so the bound takes it."""
    handle = guarded(CAP)
    text = "\U0001F642" * 100 + "e\u0301" * 50  # 100 emoji (2 units each), 50 e + combining acute
    client(server).audio.speech.create(model="tts-1", input=text, voice="alloy").read()
    decision, settlement = receipts(handle)
    assert settlement["usage"]["input_characters"] == 300
    assert settlement["actual_nano"] == 300 * 15_000 <= decision["estimated_nano"]


@pytest.mark.parametrize("n", [10**6, 10**30])
def test_an_absurd_image_count_is_refused_unsent(guarded: GuardFactory, server: LocalOpenAIServer, n: int) -> None:
    guarded(CAP)
    with pytest.raises(AgentGuardBlocked):
        client(server).images.generate(model="gpt-image-1", prompt="a lighthouse", n=n)
    assert server.requests == []


@pytest.mark.parametrize(("model", "usage"), [
    ("whisper-1", {"type": "tokens", "input_tokens": 50, "output_tokens": 9, "total_tokens": 59}),
    ("gpt-4o-transcribe", {"type": "duration", "seconds": 2}),
], ids=["tokens-for-a-per-hour-model", "seconds-for-a-token-model"])
def test_usage_in_a_unit_the_model_has_no_rate_for_settles_at_the_reservation(
        guarded: GuardFactory, server: LocalOpenAIServer, model: str, usage: dict[str, object]) -> None:
    """Priced as reported, such a usage would cost $0 for audio the provider heard."""
    handle = guarded(CAP)
    server.usage_next(usage)
    text = client(server).audio.transcriptions.create(model=model, file=("a.wav", wav(16_000 * 2))).text
    assert text
    decision, settlement = receipts(handle)
    assert settlement["actual_nano"] == decision["estimated_nano"] > 0
    assert (settlement["cost_source"], settlement["problem"]) == ("estimated", "pricing the usage failed: ValueError")


def test_a_chunked_transcription_is_refused_in_strict(guarded: GuardFactory, server: LocalOpenAIServer) -> None:
    """Each chunk is transcribed up to the model's most output, and the server picks the cuts."""
    guarded(CAP)
    with pytest.raises(AgentGuardBlocked, match="chunking_strategy"):
        client(server).audio.transcriptions.create(model="gpt-4o-transcribe", file=("a.wav", wav(16_000 * 90)),
                                                   chunking_strategy="auto")
    assert server.requests == []


def test_a_chunked_transcription_is_guessed_per_chunk_in_expected_estimation(guarded: GuardFactory,
                                                                             server: LocalOpenAIServer) -> None:
    handle = guarded(policy(estimation="expected"))
    audio = wav(16_000 * 90)
    c = client(server)
    c.audio.transcriptions.create(model="gpt-4o-transcribe", file=("a.wav", audio))
    c.audio.transcriptions.create(model="gpt-4o-transcribe", file=("a.wav", audio), chunking_strategy="auto")
    whole, chunked = (r["estimated_nano"] for r in handle.receipts() if r["kind"] == "decision")
    assert chunked - whole == 2 * 2_000 * 10_000  # 3 chunks of 30 s: 2 more x 2,000 output tokens at $10


def test_a_json_edit_counts_its_mask_as_an_input_image(guarded: GuardFactory, server: LocalOpenAIServer) -> None:
    handle = guarded(policy("0.000001"))
    image = {"image_url": "https://example.test/a.png"}
    for extra in ({}, {"mask": image}):
        with pytest.raises(AgentGuardBlocked):
            client(server).post("/images/edits", cast_to=object, body={
                "model": "gpt-image-1", "prompt": "add a boat", "images": [image], "size": "1024x1024",
                "quality": "low", **extra})
    plain, masked = (r["estimated_nano"] for r in handle.receipts() if r["kind"] == "decision")
    assert masked - plain == 48_169 * 10_000  # one more image at the per-image ceiling, at $10 image input
    assert server.requests == []


def _riff(*chunks: tuple[bytes, bytes]) -> bytes:
    body = b"WAVE" + b"".join(name + struct.pack("<I", len(data)) + data for name, data in chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _fmt(tag: int, channels: int, rate: int, bits: int) -> tuple[bytes, bytes]:
    frame = channels * -(-bits // 8)
    return b"fmt ", struct.pack("<HHIIHH", tag, channels, rate, rate * frame, frame, bits)


def _bound_of(guarded: GuardFactory, server: LocalOpenAIServer, audio: bytes) -> int:
    """The reservation of a whisper-1 transcription of ``audio``, blocked unsent by a spent cap."""
    handle = guarded(policy("0.000001"))
    with pytest.raises(AgentGuardBlocked):
        client(server).audio.transcriptions.create(model="whisper-1", file=("a.wav", audio))
    assert server.requests == []
    (decision,) = handle.receipts()
    return int(decision["estimated_nano"])


@pytest.mark.parametrize("tag", [6, 7])
def test_a_law_and_mu_law_are_one_byte_a_sample_whatever_the_header_says(
        guarded: GuardFactory, server: LocalOpenAIServer, tag: int) -> None:
    """A decoder reads G.711 a byte a sample: a header claiming 16 bits would halve the bound."""
    audio = _riff(_fmt(tag, 1, 8_000, 16), (b"data", bytes(16_000)))
    assert _bound_of(guarded, server, audio) == 2 * 100_000  # 16,000 samples at 8 kHz: 2 s


def test_a_wav_with_two_format_chunks_is_refused_in_strict(guarded: GuardFactory, server: LocalOpenAIServer) -> None:
    """Decoders differ on which ``fmt `` they take (ffmpeg the first, Python's wave the last): the
    first here makes 2 s of the data, the second 1/24 s."""
    guarded(CAP)
    audio = _riff(_fmt(1, 1, 8_000, 8), _fmt(1, 2, 48_000, 32), (b"data", bytes(16_000)))
    with pytest.raises(AgentGuardBlocked, match="duration of an audio file"):
        client(server).audio.transcriptions.create(model="whisper-1", file=("a.wav", audio))
    assert server.requests == []


@pytest.mark.parametrize(("byte_rate", "align"), [(8_000, 2), (16_000, 1)], ids=["byte-rate", "block-align"])
def test_a_wav_field_that_makes_the_audio_longer_sets_the_bound(guarded: GuardFactory, server: LocalOpenAIServer,
                                                                byte_rate: int, align: int) -> None:
    """16-bit mono at 8 kHz is 16,000 bytes a second, but a decoder trusting the declared byte rate
    (or block alignment) of 8,000 hears 16,000 bytes as 2 s: the bound takes the longest reading."""
    fmt = b"fmt ", struct.pack("<HHIIHH", 1, 1, 8_000, byte_rate, align, 16)
    assert _bound_of(guarded, server, _riff(fmt, (b"data", bytes(16_000)))) == 2 * 100_000


def test_an_unknown_transcription_model_is_blocked_unsent(guarded: GuardFactory, server: LocalOpenAIServer) -> None:
    guarded(CAP)
    with pytest.raises(AgentGuardBlocked, match="whisper-9"):
        client(server).audio.transcriptions.create(model="whisper-9", file=("a.wav", wav(16_000)))
    assert server.requests == []


def test_a_service_tier_in_odd_case_or_extra_body_is_reserved_at_the_dearest_tier(
        guarded: GuardFactory, server: LocalOpenAIServer) -> None:
    handle = guarded(policy("0.000001"))
    c = client(server)
    for extra in ({}, {"service_tier": "priority"}, {"extra_body": {"service_tier": "Priority"}}):
        with pytest.raises(AgentGuardBlocked):
            c.chat.completions.create(model="gpt-5", max_completion_tokens=100,
                                      messages=[{"role": "user", "content": "hi"}], **extra)
    standard, priority, odd = (r["estimated_nano"] for r in handle.receipts() if r["kind"] == "decision")
    assert priority > standard and odd >= priority
    assert server.requests == []


def test_transcription_keywords_and_speaker_references_are_bounded_as_input(
        guarded: GuardFactory, server: LocalOpenAIServer) -> None:
    """Keywords, speaker names and reference clips (data URLs of audio) are what the model reads
    beside the file: each of their bytes a token at the dearest input rate ($6 audio)."""
    handle = guarded(policy("0.000001"))
    reference = "data:audio/wav;base64," + base64.b64encode(wav(16_000 * 2)).decode()
    extra: dict[str, Any] = {"keywords": ["Ada", "Grace"], "known_speaker_names": ["agent"],
                             "known_speaker_references": [reference]}
    for fields in ({}, extra):
        with pytest.raises(AgentGuardBlocked):
            client(server).audio.transcriptions.create(model="gpt-4o-transcribe-diarize",
                                                       file=("a.wav", wav(16_000)), **fields)
    plain, referenced = (r["estimated_nano"] for r in handle.receipts() if r["kind"] == "decision")
    assert referenced - plain >= (len(reference) + len("AdaGraceagent")) * 6_000
    assert server.requests == []


def test_a_responses_image_generation_tool_is_refused_in_strict(guarded: GuardFactory,
                                                                server: LocalOpenAIServer) -> None:
    """Its images are billed at the image model's rates, beyond max_output_tokens."""
    guarded(CAP)
    with pytest.raises(AgentGuardBlocked, match="image_generation"):
        client(server).responses.create(model="gpt-5", input="draw a boat", max_output_tokens=100,
                                        tools=[{"type": "image_generation"}])
    assert server.requests == []


def test_a_responses_image_generation_tool_is_guessed_in_expected_estimation(guarded: GuardFactory,
                                                                             server: LocalOpenAIServer) -> None:
    handle = guarded(policy(estimation="expected"))
    c = client(server)
    c.responses.create(model="gpt-5", input="draw a boat", max_output_tokens=100)
    c.responses.create(model="gpt-5", input="draw a boat", max_output_tokens=100,
                       tools=[{"type": "image_generation", "partial_images": 2}])
    plain, drawn = (r["estimated_nano"] for r in handle.receipts() if r["kind"] == "decision")
    assert drawn - plain >= (6_240 + 2 * 100) * 10_000  # one high 1024x1536 image + 2 partials at gpt-5's $10

