"""Images, speech, transcription and translation through the real ``openai`` SDK, guarded: each
is bounded before it leaves (the bound >= what the local server bills), settles at the exact billed
cost, is blocked unsent when the cap is spent, and an audio file whose length lies or cannot be read
is bounded by its bytes or refused, never unbounded.

Expected costs are written out from OpenAI's published rates (USD per million tokens, per million
characters, per hour) as the bundled price data has them: USD x 1000 per token = nano-USD."""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import Callable
from typing import Any

import openai
import pytest

from agentguard_otel import AgentGuardBlocked
from tests.conftest import GuardFactory
from tests.servers.base import OMIT_USAGE
from tests.servers.openai_media import AUDIO_TOKENS_PER_SECOND, INPUT_IMAGE_TOKENS, wav
from tests.servers.openai_server import LocalOpenAIServer

CAP = {"version": 1, "id": "media", "mode": "enforce",
       "rules": [{"id": "all", "caps": [{"limit_usd": 100, "window": "day", "action": "block"}]}]}


def policy(limit_usd: str = "100", **extra: Any) -> dict[str, Any]:
    return {**CAP, **extra, "rules": [{"id": "all", "caps": [{"limit_usd": limit_usd, "window": "day",
                                                              "action": "block"}]}]}


def client(server: LocalOpenAIServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="sk-test-secret", max_retries=0)


def text_tokens(text: str) -> int:
    return (len(text.encode()) + 3) // 4


def receipts(handle: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    decision, settlement = handle.receipts()
    assert (decision["kind"], settlement["kind"]) == ("decision", "settlement")
    return decision, settlement


def settled_exactly(handle: Any, expected_nano: int, **usage: int) -> dict[str, Any]:
    decision, settlement = receipts(handle)
    assert decision["action"] == "allow"
    assert (settlement["actual_nano"], settlement["cost_source"], settlement["problem"]) == \
        (expected_nano, "local", None)
    assert settlement["actual_nano"] <= decision["estimated_nano"]
    assert {k: settlement["usage"][k] for k in usage} == usage
    return decision


PROMPT = "a watercolour lighthouse at dusk"


def test_image_generation_settles_at_the_billed_tokens(guarded: GuardFactory, server: LocalOpenAIServer) -> None:
    handle = guarded(CAP)
    result = client(server).images.generate(model="gpt-image-1", prompt=PROMPT, size="1024x1024", quality="low", n=2)
    assert len(result.data or []) == 2
    text = text_tokens(PROMPT)
    decision = settled_exactly(handle, text * 5_000 + 2 * 272 * 40_000, input_tokens=text, output_tokens=544,
                               output_image_tokens=544)
    # the bound: the prompt's bytes as tokens at the dearest input rate ($10 image), 2 x 272 at $40
    assert decision["estimated_nano"] >= 2 * 272 * 40_000


def test_image_generation_auto_is_bounded_by_the_dearest_entry(guarded: GuardFactory,
                                                                server: LocalOpenAIServer) -> None:
    handle = guarded(CAP)
    client(server).images.generate(model="gpt-image-1.5", prompt=PROMPT)  # the server bills high 1024x1536
    text = text_tokens(PROMPT)
    decision = settled_exactly(handle, text * 5_000 + 6240 * 32_000, output_image_tokens=6240)
    assert decision["estimated_nano"] >= 6240 * 32_000


def test_streamed_image_partials_are_bounded_and_settled(guarded: GuardFactory, server: LocalOpenAIServer) -> None:
    handle = guarded(CAP)
    events = list(client(server).images.generate(model="gpt-image-1", prompt=PROMPT, quality="medium",
                                                 size="1536x1024", stream=True, partial_images=2))
    assert [e.type for e in events][-1] == "image_generation.completed"
    settled_exactly(handle, text_tokens(PROMPT) * 5_000 + (1568 + 200) * 40_000, output_tokens=1768)


def test_image_edit_bounds_its_input_images(guarded: GuardFactory, server: LocalOpenAIServer) -> None:
    handle = guarded(CAP)
    client(server).images.edit(model="gpt-image-1", prompt=PROMPT, quality="low", size="1024x1024",
                               image=[("a.png", b"\x89PNG-one"), ("b.png", b"\x89PNG-two")])
    text = text_tokens(PROMPT)
    images = 2 * INPUT_IMAGE_TOKENS
    decision = settled_exactly(handle, text * 5_000 + images * 10_000 + 272 * 40_000, input_image_tokens=images)
    assert decision["estimated_nano"] >= 2 * 48_169 * 10_000  # each input image at the image-token ceiling


def test_image_size_outside_the_table_is_refused_in_strict(guarded: GuardFactory, server: LocalOpenAIServer) -> None:
    guarded(CAP)
    with pytest.raises(AgentGuardBlocked, match="1792x1024"):
        client(server).images.generate(model="gpt-image-1", prompt=PROMPT, size="1792x1024")  # type: ignore[arg-type]
    assert server.requests == []


def test_dall_e_is_an_unknown_model(guarded: GuardFactory, server: LocalOpenAIServer) -> None:
    guarded(policy(unknown_model="block"))
    with pytest.raises(AgentGuardBlocked, match="unknown model dall-e-3"):
        client(server).images.generate(model="dall-e-3", prompt=PROMPT)
    assert server.requests == []


SPOKEN = "Guarded speech, priced per character: ünïcode counts once per character."


def test_tts_settles_per_character_exactly(guarded: GuardFactory, server: LocalOpenAIServer) -> None:
    handle = guarded(CAP)
    audio = client(server).audio.speech.create(model="tts-1-hd", input=SPOKEN, voice="alloy")
    assert audio.content.startswith(b"ID3")
    decision = settled_exactly(handle, len(SPOKEN) * 30_000, input_characters=len(SPOKEN))
    assert decision["estimated_nano"] == len(SPOKEN) * 30_000  # exact before it leaves, too


def test_token_speech_is_refused_in_strict_and_settled_from_its_stream(guarded: GuardFactory,
                                                                        server: LocalOpenAIServer) -> None:
    guarded(CAP)
    with pytest.raises(AgentGuardBlocked, match="speech model"):
        client(server).audio.speech.create(model="gpt-4o-mini-tts", input=SPOKEN, voice="alloy")
    assert server.requests == []


def test_token_speech_in_expected_estimation_settles_its_reported_usage(guarded: GuardFactory,
                                                                          server: LocalOpenAIServer) -> None:
    handle = guarded(policy(estimation="expected"))
    with client(server).audio.speech.with_streaming_response.create(
            model="gpt-4o-mini-tts", input=SPOKEN, voice="alloy", stream_format="sse") as response:
        response.read()
    tokens = text_tokens(SPOKEN)
    decision, settlement = receipts(handle)
    assert (settlement["actual_nano"], settlement["cost_source"]) == (tokens * 600 + len(SPOKEN) * 12_000, "local")
    assert settlement["actual_nano"] <= decision["estimated_nano"]


def test_whisper_settles_per_second_of_the_wav(guarded: GuardFactory, server: LocalOpenAIServer) -> None:
    handle = guarded(CAP)
    result = client(server).audio.transcriptions.create(model="whisper-1", file=("a.wav", wav(40_000)))
    assert result.text
    # 2.5 s, billed as 3 s at $0.36 an hour = 100,000 nano-USD a second
    decision = settled_exactly(handle, 300_000, input_audio_seconds=3)
    assert decision["estimated_nano"] == 300_000  # the WAV's header told the duration exactly


def test_translation_bounds_the_file_like_a_transcription(guarded: GuardFactory, server: LocalOpenAIServer,
                                                           tmp_path: Any) -> None:
    handle = guarded(CAP)
    path = tmp_path / "speech.wav"
    path.write_bytes(wav(8_000 * 61, rate=8_000))
    with path.open("rb") as file:
        client(server).audio.translations.create(model="whisper-1", file=file)
    settled_exactly(handle, 61 * 100_000, input_audio_seconds=61)


def test_gpt4o_transcribe_settles_audio_tokens_at_their_rate(guarded: GuardFactory, server: LocalOpenAIServer) -> None:
    handle = guarded(CAP)
    client(server).audio.transcriptions.create(model="gpt-4o-transcribe", file=("a.wav", wav(16_000 * 7)),
                                               prompt="names: Ada, Grace")
    audio = 7 * AUDIO_TOKENS_PER_SECOND
    prompt = text_tokens("names: Ada, Grace")
    decision = settled_exactly(handle, prompt * 2_500 + audio * 6_000 + 24 * 10_000, input_audio_tokens=audio,
                               output_tokens=24)
    assert decision["estimated_nano"] >= 7 * 20 * 6_000 + 2_000 * 10_000


def test_streamed_transcription_settles_from_the_done_event(guarded: GuardFactory, server: LocalOpenAIServer) -> None:
    handle = guarded(CAP)
    events = list(client(server).audio.transcriptions.create(model="gpt-4o-mini-transcribe", stream=True,
                                                             file=("a.wav", wav(16_000 * 3))))
    assert events[-1].type == "transcript.text.done"
    settled_exactly(handle, 30 * 3_000 + 24 * 5_000, input_audio_tokens=30)


def test_text_transcription_without_usage_settles_at_the_bound(guarded: GuardFactory,
                                                                server: LocalOpenAIServer) -> None:
    handle = guarded(CAP)
    text = client(server).audio.transcriptions.create(model="whisper-1", file=("a.wav", wav(16_000 * 4)),
                                                      response_format="text")
    assert "deterministic" in str(text)
    decision, settlement = receipts(handle)
    assert (settlement["actual_nano"], settlement["cost_source"]) == (400_000, "estimated")
    assert decision["estimated_nano"] == 400_000


CALLS: dict[str, Callable[[openai.OpenAI], Any]] = {
    "images": lambda c: c.images.generate(model="gpt-image-1", prompt=PROMPT),
    "speech": lambda c: c.audio.speech.create(model="tts-1", input=SPOKEN, voice="alloy"),
    "transcription": lambda c: c.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav(16_000))),
    "translation": lambda c: c.audio.translations.create(model="whisper-1", file=("a.wav", wav(16_000))),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_blocked_unsent_when_the_cap_is_spent(guarded: GuardFactory, server: LocalOpenAIServer, name: str) -> None:
    handle = guarded(policy(limit_usd="0.000001"))
    with pytest.raises(AgentGuardBlocked):
        CALLS[name](client(server))
    assert server.requests == []
    (decision,) = handle.receipts()
    assert decision["action"] == "block" and decision["estimated_nano"] > 1_000


def _riff(chunks: bytes, declared: int | None = None) -> bytes:
    return b"RIFF" + struct.pack("<I", declared if declared is not None else 4 + len(chunks)) + b"WAVE" + chunks


def _fmt(rate: int = 16_000, channels: int = 1, bits: int = 16, tag: int = 1) -> bytes:
    block = channels * bits // 8
    return b"fmt " + struct.pack("<IHHIIHH", 16, tag, channels, rate, rate * block, block, bits)


def test_a_huge_declared_wav_duration_is_bounded_by_its_bytes(guarded: GuardFactory,
                                                              server: LocalOpenAIServer) -> None:
    handle = guarded(CAP)
    lying = _riff(_fmt() + b"data" + struct.pack("<I", 0xFFFFFFF0) + b"\0" * 32_000 * 2, declared=0xFFFFFFF0)
    client(server).audio.transcriptions.create(model="whisper-1", file=("a.wav", lying))
    decision, settlement = receipts(handle)
    assert decision["estimated_nano"] == 2 * 100_000  # the 64,000 bytes there are, not the 37 hours declared
    assert settlement["actual_nano"] == 2 * 100_000


def test_a_truncated_wav_header_is_refused_in_strict(guarded: GuardFactory, server: LocalOpenAIServer) -> None:
    guarded(CAP)
    with pytest.raises(AgentGuardBlocked, match="duration of an audio file"):
        client(server).audio.transcriptions.create(model="whisper-1", file=("a.wav", wav(16_000)[:30]))
    assert server.requests == []


def test_unreadable_audio_is_bounded_by_its_size_in_expected_estimation(guarded: GuardFactory,
                                                                        server: LocalOpenAIServer) -> None:
    handle = guarded(policy(estimation="expected"))
    noise = bytes(range(256)) * 30  # 7,680 bytes, not audio: the server refuses it (400), billing nothing
    with pytest.raises(openai.BadRequestError):
        client(server).audio.transcriptions.create(model="whisper-1", file=("a.bin", noise))
    decision, settlement = receipts(handle)
    assert decision["estimated_nano"] == 11 * 100_000  # ceil(7,680 x 8 / 6,000 bit/s) = 11 s
    assert settlement["actual_nano"] == 0 and len(server.requests) == 1


def test_an_mp3_is_bounded_at_the_lowest_mp3_bitrate(guarded: GuardFactory, server: LocalOpenAIServer) -> None:
    handle = guarded(CAP)
    mp3 = b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x00" * 4_000  # 16,010 bytes
    client(server).audio.transcriptions.create(model="whisper-1", file=("a.mp3", mp3))
    decision, settlement = receipts(handle)
    assert decision["estimated_nano"] == 17 * 100_000  # ceil(16,010 x 8 / 8,000 bit/s) = 17 s
    assert settlement["actual_nano"] == 2 * 100_000  # the server hears 1.0006 s (128 kbit/s), billed as 2 s


def _audio_chat(c: openai.OpenAI, audio: bytes, fmt: str) -> Any:
    part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(audio).decode(), "format": fmt}}
    return c.chat.completions.create(model="gpt-audio", max_completion_tokens=50,
                                     messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}, part]}])


def test_chat_input_audio_is_bounded_by_its_duration_not_its_bytes(guarded: GuardFactory,
                                                                   server: LocalOpenAIServer) -> None:
    handle = guarded(CAP)
    for seconds in (1, 60):
        _audio_chat(client(server), wav(8_000 * seconds, rate=8_000), "wav")
    _audio_chat(client(server), bytes(range(256)) * 8, "wav")  # not a WAV: measured by its bytes, as text is
    one, sixty, unread = (r["estimated_nano"] for r in handle.receipts() if r["kind"] == "decision")
    # 59 s more at 20 audio tokens a second, each at gpt-audio's dearest input rate ($32 per MTok)
    assert sixty - one == 59 * 20 * 32_000
    assert unread - one >= (len(base64.b64encode(bytes(range(256)) * 8)) - 20) * 32_000
    assert len(server.requests) == 3


def test_an_image_reply_without_usage_settles_at_the_reservation(guarded: GuardFactory,
                                                                 server: LocalOpenAIServer) -> None:
    handle = guarded(CAP)
    server.usage_next(OMIT_USAGE)
    client(server).images.generate(model="gpt-image-1", prompt=PROMPT, size="1024x1024", quality="low")
    decision, settlement = receipts(handle)
    assert (settlement["actual_nano"], settlement["cost_source"]) == (decision["estimated_nano"], "estimated")


def test_a_transcription_duration_that_is_not_one_settles_at_the_reservation(guarded: GuardFactory,
                                                                             server: LocalOpenAIServer) -> None:
    handle = guarded(CAP)
    server.usage_next({"type": "duration", "seconds": -5})
    client(server).audio.transcriptions.create(model="whisper-1", file=("a.wav", wav(16_000 * 2)))
    decision, settlement = receipts(handle)
    assert (settlement["actual_nano"], settlement["problem"]) == (200_000, "usage.seconds is not a duration")
    assert decision["estimated_nano"] == 200_000


def test_async_transcription_of_a_file_on_disk(guarded: GuardFactory, server: LocalOpenAIServer,
                                               tmp_path: Any) -> None:
    handle = guarded(CAP)
    path = tmp_path / "speech.wav"
    path.write_bytes(wav(16_000 * 5))

    async def transcribe() -> Any:
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-test-secret", max_retries=0) as c:
            return await c.audio.transcriptions.create(model="whisper-1", file=path)

    assert asyncio.run(transcribe()).text
    settled_exactly(handle, 500_000, input_audio_seconds=5)


def test_shadow_mode_sends_an_unprovable_call_unchanged_and_records_the_refusal(guarded: GuardFactory,
                                                                                server: LocalOpenAIServer) -> None:
    handle = guarded(policy(mode="shadow"))
    client(server).audio.speech.create(model="gpt-4o-mini-tts", input=SPOKEN, voice="alloy")
    assert [r.path for r in server.requests] == ["/v1/audio/speech"]
    decision, settlement = receipts(handle)
    assert (decision["action"], decision["would"]) == ("shadow", "block")
    assert settlement["actual_nano"] == decision["estimated_nano"] > 0
