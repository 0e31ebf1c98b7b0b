"""The media endpoints of the local OpenAI-wire server: images, speech, transcription, translation.

They bill the way OpenAI documents, deterministically, so tests can assert exact costs:

- ``images/generations`` and ``images/edits`` (multipart, ``image``/``image[]`` files and a
  ``mask``): input tokens are the prompt's ``text_tokens`` plus :data:`INPUT_IMAGE_TOKENS` per input
  image (``input_tokens_details.text_tokens`` / ``image_tokens``); output tokens are OpenAI's
  per-image table by quality and size (``auto`` quality: high; ``auto`` size: 1024x1536) x ``n``,
  plus 100 per streamed partial image. ``gpt-image-1.5`` also itemises ``output_tokens_details``.
  ``stream: true``: ``image_generation.partial_image`` events, then ``*.completed`` with the usage.
- ``audio/speech``: the audio as a binary body (no usage); ``stream_format: "sse"``:
  ``speech.audio.delta`` events and a ``speech.audio.done`` with ``usage`` (input tokens of
  ``input`` + ``instructions``, :data:`SPEECH_TOKENS_PER_CHARACTER` output audio tokens a character).
- ``audio/transcriptions`` / ``audio/translations`` (multipart ``file``): the audio's duration is
  read with the stdlib ``wave`` module (a WAV: the frames it holds), or is its size at 128 kbit/s (an MP3); anything
  else is a 400. ``whisper-1`` reports ``usage: {type: "duration", seconds}`` (whole seconds,
  rounded up); other models ``{type: "tokens"}`` with :data:`AUDIO_TOKENS_PER_SECOND` audio tokens
  per second (rounded up), the prompt's text tokens, and the reply's words as output tokens.
  ``response_format: "text"`` answers plain text (no usage); ``stream: true`` sends
  ``transcript.text.delta`` events and a ``transcript.text.done`` with the usage.

``usage_next`` replaces the usage of each of these replies.
"""

from __future__ import annotations

import base64
import io
import math
import wave
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from typing import TYPE_CHECKING, Any

from agentguard_otel.demo.server import reply_text, text_tokens
from tests.servers.base import ApiError, JSONObject, Reply, sse

if TYPE_CHECKING:
    from tests.servers.openai_server import LocalOpenAIServer

IMAGE_TOKENS = {
    "low": {"1024x1024": 272, "1024x1536": 408, "1536x1024": 400},
    "medium": {"1024x1024": 1056, "1024x1536": 1584, "1536x1024": 1568},
    "high": {"1024x1024": 4160, "1024x1536": 6240, "1536x1024": 6208},
}
PARTIAL_IMAGE_TOKENS = 100
INPUT_IMAGE_TOKENS = 1_000
SPEECH_TOKENS_PER_CHARACTER = 1
AUDIO_TOKENS_PER_SECOND = 10  # OpenAI: 1 token per 100 ms of input audio
MP3_BITS_PER_SECOND = 128_000
PNG_PIXEL = base64.b64encode(b"\x89PNG\r\n\x1a\n-local-image-").decode()
SPEECH_AUDIO = b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x00" * 64


def wav(frames: int, rate: int = 16_000, channels: int = 1, width: int = 2) -> bytes:
    """A PCM WAV of ``frames`` frames (every sample byte 1), written by the stdlib: what the tests send."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(b"\x01" * frames * channels * width)
    return out.getvalue()


def multipart_json(raw: bytes, content_type: str) -> JSONObject | None:
    """A multipart/form-data body as one JSON object: each text field as its value, each file as
    ``{"filename", "content_type", "base64"}`` (several under one name: a list)."""
    head = b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n"
    message = BytesParser(policy=HTTP).parsebytes(head + raw)
    if not message.is_multipart():
        return None
    fields: JSONObject = {}
    for part in message.iter_parts():
        assert isinstance(part, Message)
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if not isinstance(name, str) or not isinstance(payload, bytes):
            continue
        filename = part.get_filename()
        value: Any = payload.decode("utf-8") if filename is None else {
            "filename": filename, "content_type": part.get_content_type(), "base64": base64.b64encode(payload).decode()}
        name = name.removesuffix("[]")
        if name in fields:
            previous = fields[name]
            fields[name] = [*(previous if isinstance(previous, list) else [previous]), value]
        else:
            fields[name] = value
    return fields


def _number(body: JSONObject, name: str, default: int) -> int:
    value = body.get(name, default)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ApiError(400, f"'{name}' must be an integer.", param=name) from None


def _files(body: JSONObject, name: str) -> list[bytes]:
    value = body.get(name)
    listed = value if isinstance(value, list) else [] if value is None else [value]
    return [base64.b64decode(f["base64"]) for f in listed if isinstance(f, dict)]


def images(server: LocalOpenAIServer, body: JSONObject, kind: str) -> Reply:
    """``images/generations`` (kind ``image_generation``) and ``images/edits`` (``image_edit``)."""
    model = str(body.get("model") or "")
    if not model.startswith("gpt-image"):
        raise ApiError(400, f"The model '{model}' is not served here.", param="model")
    quality = body.get("quality") or "auto"
    size = body.get("size") or "auto"
    row = IMAGE_TOKENS["high" if quality == "auto" else str(quality)] if quality in (*IMAGE_TOKENS, "auto") else None
    if row is None or (size != "auto" and size not in row):
        raise ApiError(400, "Invalid quality or size.", param="size")
    n, partial = _number(body, "n", 1), _number(body, "partial_images", 0)
    per_image = row["1024x1536" if size == "auto" else str(size)] + partial * PARTIAL_IMAGE_TOKENS
    text = text_tokens(str(body.get("prompt") or ""))
    image_tokens = INPUT_IMAGE_TOKENS * (len(_files(body, "image")) + len(_files(body, "mask")))
    output = n * per_image
    usage: JSONObject = {"input_tokens": text + image_tokens, "output_tokens": output,
                         "total_tokens": text + image_tokens + output,
                         "input_tokens_details": {"text_tokens": text, "image_tokens": image_tokens}}
    if model.startswith("gpt-image-1.5"):
        usage["output_tokens_details"] = {"image_tokens": output, "text_tokens": 0}
    reported = server.take_usage()(usage)
    data = [{"b64_json": PNG_PIXEL} for _ in range(n)]
    done = {"created": 1_700_000_000, "data": data, "usage": reported, "quality": quality, "size": size}
    if body.get("stream") not in (True, "true"):
        return Reply(200, done)
    events = [sse({"type": f"{kind}.partial_image", "b64_json": PNG_PIXEL, "partial_image_index": i},
                  f"{kind}.partial_image") for i in range(partial)]
    completed = {"type": f"{kind}.completed", "b64_json": PNG_PIXEL, "created_at": 1_700_000_000, "usage": reported}
    return Reply.stream([*events, sse(completed, f"{kind}.completed")])


def speech(server: LocalOpenAIServer, body: JSONObject) -> Reply:
    text = body.get("input")
    if not isinstance(text, str) or not body.get("voice"):
        raise ApiError(400, "'input' and 'voice' are required.", param="input")
    if body.get("stream_format") != "sse":
        return Reply.stream([SPEECH_AUDIO], content_type="audio/mpeg")
    input_tokens = text_tokens(text) + text_tokens(str(body.get("instructions") or ""))
    output = SPEECH_TOKENS_PER_CHARACTER * len(text)
    usage = {"input_tokens": input_tokens, "output_tokens": output, "total_tokens": input_tokens + output}
    audio = base64.b64encode(SPEECH_AUDIO).decode()
    return Reply.stream([sse({"type": "speech.audio.delta", "audio": audio}),
                         sse({"type": "speech.audio.done", "usage": server.take_usage()(usage)})])


def audio_seconds(data: bytes) -> float:
    """The duration the server hears: a WAV's frames there are (not the count its header claims) /
    rate, an MP3's size at 128 kbit/s."""
    try:
        with wave.open(io.BytesIO(data)) as wav:
            frame = wav.getsampwidth() * wav.getnchannels()
            return len(wav.readframes(wav.getnframes())) // frame / wav.getframerate()
    except (wave.Error, EOFError):
        pass
    if data.startswith(b"ID3") or data[:2] == b"\xff\xfb":
        return len(data) * 8 / MP3_BITS_PER_SECOND
    raise ApiError(400, "Audio file might be corrupted or unsupported.", param="file", code="invalid_value")


def transcription(server: LocalOpenAIServer, body: JSONObject) -> Reply:
    files = _files(body, "file")
    if len(files) != 1:
        raise ApiError(400, "'file' is required.", param="file")
    seconds = audio_seconds(files[0])
    model = str(body.get("model") or "")
    text = reply_text(server.reply_words)
    usage: JSONObject
    if model == "whisper-1":
        usage = {"type": "duration", "seconds": math.ceil(seconds)}
    else:
        prompt = text_tokens(str(body.get("prompt") or ""))
        audio = math.ceil(seconds * AUDIO_TOKENS_PER_SECOND)
        words = len(text.split())
        usage = {"type": "tokens", "input_tokens": prompt + audio, "output_tokens": words,
                 "total_tokens": prompt + audio + words,
                 "input_token_details": {"text_tokens": prompt, "audio_tokens": audio}}
    reported = server.take_usage()(usage)
    if body.get("response_format") == "text":
        return Reply.stream([text.encode()], content_type="text/plain")
    if body.get("stream") not in (True, "true"):
        return Reply(200, {"text": text, "usage": reported})
    deltas = [sse({"type": "transcript.text.delta", "delta": word + " "}) for word in text.split()]
    return Reply.stream([*deltas, sse({"type": "transcript.text.done", "text": text, "usage": reported})])
