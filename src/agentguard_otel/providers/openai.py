"""OpenAI SDK adapter (also OpenRouter and any OpenAI-compatible ``base_url``)."""

from __future__ import annotations

import base64
import importlib
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from decimal import Decimal
from typing import Any

import wrapt
from opentelemetry.instrumentation.utils import unwrap

from agentguard_otel.call import MalformedResponse, ResponseInfo, UnknownEndpoint
from agentguard_otel.guard import Guard, Refusal
from agentguard_otel.money import ceil_div, usd_to_nano
from agentguard_otel.pricing import TokenUsage
from agentguard_otel.providers import GuardRef, Hooks, Integration
from agentguard_otel.providers.base import (
    MAX_CHOICES,
    MAX_TOKENS,
    UsageFields,
    counts,
    find_unseen,
    get_path,
    reported_tier,
)
from agentguard_otel.providers.media import HEAD_BYTES, MediaBound, audio_length, read_head, request_files
from agentguard_otel.providers.stainless import Endpoint, Prepared, StainlessAdapter, StainlessHook
from agentguard_otel.providers.stream import BodyReader

OPENROUTER_HOST = "openrouter.ai"
OPENAI_HOST = "api.openai.com"

CHAT_USAGE = UsageFields(
    input=("prompt_tokens",),
    output=("completion_tokens",),
    cache_read=("prompt_tokens_details", "cached_tokens"),
    reasoning=("completion_tokens_details", "reasoning_tokens"),
    input_audio=("prompt_tokens_details", "audio_tokens"),
    output_audio=("completion_tokens_details", "audio_tokens"),
)
RESPONSES_USAGE = UsageFields(
    input=("input_tokens",),
    output=("output_tokens",),
    cache_read=("input_tokens_details", "cached_tokens"),
    reasoning=("output_tokens_details", "reasoning_tokens"),
)
EMBEDDINGS_USAGE = UsageFields(input=("prompt_tokens",), output=("completion_tokens",))
IMAGES_USAGE = UsageFields(
    input=("input_tokens",),
    output=("output_tokens",),
    cache_read=("input_tokens_details", "cached_tokens"),
    input_image=("input_tokens_details", "image_tokens"),
    output_image=("output_tokens_details", "image_tokens"),
)
SPEECH_USAGE = UsageFields(input=("input_tokens",), output=("output_tokens",))
TRANSCRIPTION_USAGE = UsageFields(
    input=("input_tokens",),
    output=("output_tokens",),
    input_audio=("input_token_details", "audio_tokens"),
)

# OpenAI's table of the output tokens of one gpt-image image, by quality and size.
IMAGE_OUTPUT_TOKENS: Mapping[str, Mapping[str, int]] = {
    "low": {"1024x1024": 272, "1024x1536": 408, "1536x1024": 400},
    "medium": {"1024x1024": 1056, "1024x1536": 1584, "1536x1024": 1568},
    "high": {"1024x1024": 4160, "1024x1536": 6240, "1536x1024": 6208},
}
PARTIAL_IMAGE_TOKENS = 100  # each streamed partial image adds 100 output image tokens (OpenAI's docs)
AUDIO_TOKENS_PER_SECOND = 20
"""Audio tokens one second of audio can be billed as: OpenAI documents 1 token per 100 ms of input
audio and 1 per 50 ms of output audio; the denser of the two bounds a transcription's input."""
TRANSCRIPTION_MAX_OUTPUT_TOKENS = 2_000  # gpt-4o-transcribe / -mini-transcribe's documented max output
CHUNK_SECONDS_GUESS = 30
"""A guess of the audio one ``chunking_strategy`` chunk holds (diarization asks for chunking past
30 s): each chunk is transcribed on its own, up to the most output each, and the server picks the
cuts, so nothing proves how many there are: strict estimation refuses chunked calls."""
PER_CHARACTER_SPEECH = "tts-1"
"""OpenAI's speech models billed per input character (tts-1, tts-1-hd); the others bill tokens."""
SPEECH_AUDIO_TOKENS_PER_CHARACTER = 6
"""A guess, not a proof, of the audio tokens a token-billed speech model speaks per character:
about 15 characters a second at 20 tokens a second, times 4 for the slowest ``speed`` (0.25). A
model may pause as long as it likes, so strict estimation refuses these calls."""


def image_media(body: Mapping[str, Any], files: Any) -> MediaBound | None:
    """gpt-image output: each of ``n`` images at the table's tokens for its quality and size
    (``auto`` or an unlisted quality: the dearest), plus its streamed partial images; input images
    (edits: files or ``images``, and the mask) counted as images. A size outside the table is
    bounded by the table's dearest entry, unproven."""
    n, partial = counts([body.get("n")], MAX_CHOICES), counts([body.get("partial_images")], MAX_CHOICES)
    if n is None or partial is None:
        return None
    n_images, partials = max(n, default=1) or 1, max(partial, default=0)
    quality, size = str(body.get("quality")), str(body.get("size"))
    rows = [IMAGE_OUTPUT_TOKENS[quality]] if quality in IMAGE_OUTPUT_TOKENS else list(IMAGE_OUTPUT_TOKENS.values())
    listed = size in rows[0]
    per_image = max(row[size] if listed else max(row.values()) for row in rows)
    images = len(list(request_files(files, "image"))) + len(list(request_files(files, "mask")))
    listed_images = body.get("images")  # a JSON edit's images and mask (by URL or file id)
    images += len(listed_images) if isinstance(listed_images, list) else int(listed_images is not None)
    images += int(isinstance(body.get("mask"), Mapping))
    unproven = None if listed or body.get("size") in (None, "auto") else \
        f"an image of size {size!r} (not in OpenAI's token table)"
    return MediaBound(images=images, output_tokens=n_images * (per_image + partials * PARTIAL_IMAGE_TOKENS),
                      unproven=unproven)


def utf16_units(text: str) -> int:
    """The characters OpenAI can bill for ``text``: it does not say what a character is, and its
    UTF-16 code units are at least its code points and its grapheme clusters (an emoji is two)."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def speech_media(body: Mapping[str, Any], files: Any) -> MediaBound | None:
    """tts-1 models: exactly the characters of ``input``; token-billed models: a guess of the audio."""
    text = body.get("input")
    if not isinstance(text, str):
        return None
    if str(body.get("model")).startswith(PER_CHARACTER_SPEECH):
        return MediaBound(characters=utf16_units(text))
    return MediaBound(output_tokens=len(text) * SPEECH_AUDIO_TOKENS_PER_CHARACTER,
                      unproven="the length of the audio a token-billed speech model speaks")


def transcription_media(body: Mapping[str, Any], files: Any) -> MediaBound | None:
    """The one audio ``file``'s duration: billed as seconds (whisper-1) or as audio tokens at
    :data:`AUDIO_TOKENS_PER_SECOND` (gpt-4o-transcribe), with the model's most output text."""
    contents = list(request_files(files, "file"))
    head = read_head(contents[0]) if len(contents) == 1 else None
    if head is None:
        return None
    length = audio_length(*head)
    chunked = body.get("chunking_strategy") is not None
    chunks = max(ceil_div(length.seconds, CHUNK_SECONDS_GUESS), 1) if chunked else 1
    unproven = "the duration of an audio file in a format not read" if not length.proven else \
        "the output of each chunk a chunking_strategy cuts the audio into" if chunked else None
    return MediaBound(input_tokens=length.seconds * AUDIO_TOKENS_PER_SECOND, audio_seconds=length.seconds,
                      output_tokens=chunks * TRANSCRIPTION_MAX_OUTPUT_TOKENS, unproven=unproven)


def responses_media(body: Mapping[str, Any], files: Any) -> MediaBound | None:
    """A Responses ``image_generation`` tool makes images billed at the image model's rates, beyond
    ``max_output_tokens`` and the usage of the model called: unproven, guessed in expected estimation
    at one image of the table's dearest entry (with its partial images) per tool."""
    tools = body.get("tools")
    images = [t for t in tools if isinstance(t, Mapping) and t.get("type") == "image_generation"] \
        if isinstance(tools, list) else []
    if not images:
        return MediaBound()
    dearest = max(max(row.values()) for row in IMAGE_OUTPUT_TOKENS.values())
    partials = [counts([tool.get("partial_images")], MAX_CHOICES) for tool in images]
    if any(p is None for p in partials):
        return None
    output = sum(dearest + max(p or (), default=0) * PARTIAL_IMAGE_TOKENS for p in partials)
    return MediaBound(output_tokens=output, unproven="the images an image_generation tool makes")


ENDPOINTS: Mapping[str, Endpoint] = {
    "/chat/completions": Endpoint(
        operation="chat",
        input_fields=("messages", "tools", "functions", "response_format", "tool_choice", "prediction"),
        item_field="messages",
        max_output_fields=("max_completion_tokens", "max_tokens"),
        multiplier_fields=("n",),
        stream_usage_option=True,
        fallback_models_field="models",
    ),
    "/responses": Endpoint(
        operation="chat",
        input_fields=("input", "instructions", "tools", "text", "tool_choice"),
        item_field="input",
        max_output_fields=("max_output_tokens",),
        media=responses_media,
    ),
    "/completions": Endpoint(
        operation="text_completion",
        input_fields=("prompt", "suffix"),
        item_field="prompt",
        max_output_fields=("max_tokens",),
        default_max_output=16,  # the legacy API's own default
        multiplier_fields=("n", "best_of"),
        stream_usage_option=True,
    ),
    "/embeddings": Endpoint(
        operation="embeddings",
        input_fields=("input",),
        item_field="input",
        produces_output=False,
    ),
    "/images/generations": Endpoint(
        operation="generate_content", input_fields=("prompt",), item_field=None, produces_output=False,
        media=image_media,
    ),
    "/images/edits": Endpoint(
        operation="generate_content", input_fields=("prompt",), item_field=None, produces_output=False,
        media=image_media,
    ),
    "/audio/speech": Endpoint(
        operation="generate_content", input_fields=("input", "instructions"), item_field=None,
        produces_output=False, media=speech_media,
    ),
    "/audio/transcriptions": Endpoint(  # keywords, speaker names and reference clips (data URLs) are input too
        operation="generate_content", item_field=None, produces_output=False,
        input_fields=("prompt", "keywords", "known_speaker_names", "known_speaker_references"),
        media=transcription_media,
    ),
    "/audio/translations": Endpoint(
        operation="generate_content", input_fields=("prompt",), item_field=None, produces_output=False,
        media=transcription_media,
    ),
}


MAX_REPORTED_COST_NANO = 2**53  # $9 million for one call: beyond it, not a real bill (and no ledger holds it)


# POSTs that bill no tokens, relative to the API root (``*``: one segment, ``**``: any below).
FREE = (
    "/moderations", "/responses/input_tokens", "/responses/*/cancel",
    "/chat/completions/*",  # update a stored completion's metadata
    "/files", "/uploads", "/uploads/*/parts", "/uploads/*/complete", "/uploads/*/cancel",
    "/conversations", "/conversations/*", "/conversations/*/items",
    "/assistants", "/assistants/*", "/threads", "/threads/*", "/threads/*/messages", "/threads/*/messages/*",
    "/vector_stores", "/vector_stores/*", "/skills", "/skills/*", "/skills/*/versions",
    "/audio/voice_consents", "/audio/voice_consents/*",
    "/agents", "/agents/*", "/agents/environments", "/agents/environments/templates",
    "/agents/environments/templates/*", "/agents/automations/*/pause",
    "/batches/*/cancel", "/fine_tuning/jobs/*/cancel", "/fine_tuning/jobs/*/pause", "/evals/*/runs/*/cancel",
    "/threads/*/runs/*/cancel", "/chatkit/sessions/*/cancel", "/vector_stores/*/file_batches/*/cancel",
    "/realtime/calls/*/hangup", "/realtime/calls/*/reject", "/live/sessions/*/hangup", "/live/sessions/*/reject",
    "/organization/**", "/projects/**", "/webhook_endpoints/**", "/vaults/**",
)
# Paid POSTs the guard cannot price yet: unknown endpoints, refused in enforce mode unless
# ``unknown_endpoint: allow``. Listed so that the README can say so and a test can tell a new one.
REFUSED = (
    "/images/variations", "/audio/voices",
    "/batches", "/fine_tuning/jobs", "/fine_tuning/jobs/*/resume", "/fine_tuning/alpha/**",
    "/threads/runs", "/threads/*/runs", "/threads/*/runs/*", "/threads/*/runs/*/submit_tool_outputs",
    "/videos/**", "/vector_stores/*/files/**", "/vector_stores/*/file_batches", "/containers/**",
    "/evals", "/evals/*", "/evals/*/runs", "/realtime/**", "/chatkit/sessions", "/responses/compact",
    "/agents/sessions/**", "/agents/automations", "/agents/automations/*", "/agents/automations/*/invocations",
    "/agents/automations/*/resume", "/agents/environments/*/files", "/live/sessions", "/live/sessions/*/**",
    "/decisions", "/content_provenance_checks",
)


def provider_cost_nano(usage: Any) -> int | None:
    """OpenRouter reports what it billed as ``usage.cost`` (USD); that figure is the actual cost.
    A cost that is not a non-negative amount a ledger can hold is malformed."""
    cost = get_path(usage, ("cost",))
    if cost is None:
        return None
    if isinstance(cost, bool) or not isinstance(cost, (int, float, Decimal)):
        raise MalformedResponse("usage.cost is not a number")
    # Our own parser yields Decimal; the SDK's float is converted through its shortest repr,
    # which is the decimal text the provider sent.
    try:
        nano = usd_to_nano(repr(cost) if isinstance(cost, float) else cost)
    except ValueError as exc:
        raise MalformedResponse("usage.cost is not a finite amount") from exc
    if not 0 <= nano <= MAX_REPORTED_COST_NANO:
        raise MalformedResponse("usage.cost is out of range")
    return nano


class _Reader:
    """Shared bookkeeping of every OpenAI response reader."""

    usage_fields: UsageFields

    def __init__(self) -> None:
        self.info = ResponseInfo()
        self.complete = False

    def _read(self, obj: Any) -> None:
        info = self.info
        info.response_model = get_path(obj, ("model",)) or info.response_model
        info.response_id = get_path(obj, ("id",)) or info.response_id
        info.service_tier = reported_tier(get_path(obj, ("service_tier",))) or info.service_tier
        usage = get_path(obj, ("usage",))
        if usage is not None:
            info.usage = self._usage(usage)
            info.provider_cost_nano = provider_cost_nano(usage)

    def _usage(self, usage: Any) -> TokenUsage | None:
        return self.usage_fields.read(usage)


class ChoicesReader(_Reader):
    """Chat and legacy completions: ``choices`` with text, finish reasons, usage at the end."""

    usage_fields = CHAT_USAGE

    def __init__(self, hide_usage_chunk: bool) -> None:
        super().__init__()
        self.hide_usage_chunk = hide_usage_chunk

    def on_body(self, body: Any) -> None:
        self._read(body)
        self.info.finish_reasons = [r for c in get_path(body, ("choices",)) or []
                                    if (r := get_path(c, ("finish_reason",)))]
        self.complete = True

    def on_event(self, event: str | None, data: Any) -> bool:
        info = self.info
        choices = data.get("choices") or []
        for choice in choices:
            reason = choice.get("finish_reason")
            if reason:
                info.finish_reasons.append(reason)
        reports_usage = data.get("usage") is not None
        if info.response_model is None or reports_usage:
            self._read(data)
        if reports_usage:
            self.complete = True
            return self.hide_usage_chunk and not choices
        return False


_PENDING_STATUSES = frozenset({"queued", "in_progress"})


class ResponsesReader(_Reader):
    """Responses API: the final ``response.completed`` (or incomplete/failed) event carries usage."""

    usage_fields = RESPONSES_USAGE
    _FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})

    def on_body(self, body: Any) -> None:
        self._read(body)
        status = get_path(body, ("status",))
        reason = get_path(body, ("incomplete_details", "reason"))
        if reason or status:
            self.info.finish_reasons = [str(reason or status)]
        # A background response is accepted now and done later: its usage comes with a later GET.
        self.info.deferred = status in _PENDING_STATUSES and self.info.usage is None
        self.complete = True

    def on_event(self, event: str | None, data: Any) -> bool:
        kind = data.get("type")
        if kind in self._FINAL_EVENTS:
            self.on_body(data.get("response") or {})
        elif kind == "response.created":
            self._read(data.get("response") or {})
        return False


class EmbeddingsReader(_Reader):
    usage_fields = EMBEDDINGS_USAGE

    def on_body(self, body: Any) -> None:
        self._read(body)
        self.complete = True

    def on_event(self, event: str | None, data: Any) -> bool:
        return False


class ImagesReader(EmbeddingsReader):
    """Images: usage in the body, or in a stream's ``image_generation.completed`` /
    ``image_edit.completed`` event. Output tokens not itemised are image tokens."""

    usage_fields = IMAGES_USAGE

    def _usage(self, usage: Any) -> TokenUsage | None:
        read = super()._usage(usage)
        if read is None or get_path(usage, ("output_tokens_details",)) is not None:
            return read
        return replace(read, output_image_tokens=read.output_tokens - read.reasoning_tokens)

    def on_event(self, event: str | None, data: Any) -> bool:
        if str(data.get("type", "")).endswith(".completed"):
            self.on_body(data)
        return False


class SpeechReader(EmbeddingsReader):
    """Speech answers with audio and no usage: a per-character model's usage is its characters,
    known before the call; a token model reports usage only in a stream's ``speech.audio.done``."""

    usage_fields = SPEECH_USAGE

    def __init__(self, characters: int | None) -> None:
        super().__init__()
        if characters is not None:
            self.info.usage = TokenUsage(input_tokens=0, output_tokens=0, input_characters=characters)
        self.complete = True

    def on_body(self, body: Any) -> None:
        """The audio itself: nothing to read."""

    def on_event(self, event: str | None, data: Any) -> bool:
        if data.get("type") == "speech.audio.done":
            self._read(data)
        return False


class TranscriptionReader(EmbeddingsReader):
    """Transcriptions and translations: ``usage`` of ``type: tokens`` or ``type: duration``
    (seconds, billed whole), in the body or a stream's ``transcript.text.done``; a text format
    carries none."""

    usage_fields = TRANSCRIPTION_USAGE

    def _usage(self, usage: Any) -> TokenUsage | None:
        if get_path(usage, ("type",)) != "duration":
            return super()._usage(usage)
        seconds = get_path(usage, ("seconds",))
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float, Decimal)) \
                or not 0 <= seconds <= MAX_TOKENS:
            raise MalformedResponse("usage.seconds is not a duration")
        return TokenUsage(input_tokens=0, output_tokens=0, input_audio_seconds=math.ceil(seconds))

    def on_event(self, event: str | None, data: Any) -> bool:
        if data.get("type") == "transcript.text.done":
            self.on_body(data)
        return False


def _openai_unseen(part: Mapping[str, Any]) -> str | None:
    if part.get("type") in ("input_file", "file") or "file_id" in part or "file_url" in part:
        return "a file by reference"
    if part.get("type") in ("file_search", "mcp", "code_interpreter", "web_search", "web_search_preview"):
        return f"the {part['type']} tool's results"
    return None


class OpenAIAdapter(StainlessAdapter):
    module = "openai"
    endpoints = ENDPOINTS
    free = FREE
    refused = REFUSED

    def provider(self, client: Any) -> tuple[str, str]:
        host = str(getattr(getattr(client, "base_url", None), "host", ""))
        if host == OPENROUTER_HOST or host.endswith("." + OPENROUTER_HOST):
            return "openrouter", "openrouter"
        return "openai", "openai"

    def is_image(self, part: Mapping[str, Any]) -> bool:
        return part.get("type") in ("image_url", "input_image", "image_file")

    def part_tokens(self, part: Mapping[str, Any]) -> int | None:
        """A chat ``input_audio`` part (base64 WAV or MP3) whose duration its header proves: its
        audio tokens at :data:`AUDIO_TOKENS_PER_SECOND`; any other audio stays bounded by its bytes."""
        data = get_path(part, ("input_audio", "data")) if part.get("type") == "input_audio" else None
        if not isinstance(data, str):
            return None
        try:
            audio = base64.b64decode(data, validate=True)
        except ValueError:
            return None
        length = audio_length(audio[:HEAD_BYTES], len(audio))
        return length.seconds * AUDIO_TOKENS_PER_SECOND if length.proven else None

    def unseen_input(self, body: Mapping[str, Any]) -> str | None:
        """Earlier turns (``previous_response_id``, ``conversation``), a stored prompt, a file by id
        or URL, or Chat Completions' web search results (``web_search_options``): billed as input,
        not in the body."""
        for name in ("previous_response_id", "conversation"):
            if body.get(name):
                return name
        if isinstance(body.get("prompt"), Mapping):
            return "a stored prompt"
        if body.get("web_search_options") is not None:
            return "web search results"
        return find_unseen([body.get(f) for f in ("messages", "input", "tools")], _openai_unseen)

    def deployment(self, client: Any, body: Mapping[str, Any]) -> str | None:
        """Azure OpenAI routes by deployment: the client's ``azure_deployment``, a ``/deployments/X``
        base URL, or else the body's ``model`` used as the deployment name."""
        if not hasattr(client, "_azure_deployment"):
            return None
        if client._azure_deployment:
            return str(client._azure_deployment)
        parts = str(getattr(getattr(client, "base_url", None), "path", "")).strip("/").split("/")
        if "deployments" in parts[:-1]:
            return parts[parts.index("deployments") + 1]
        model = body.get("model")
        return model if isinstance(model, str) else None

    def inject_field(self, endpoint: Endpoint, client: Any) -> str:
        if endpoint.operation == "chat" and endpoint.max_output_fields[0] == "max_completion_tokens":
            host = str(getattr(getattr(client, "base_url", None), "host", ""))
            # OpenAI deprecated max_tokens for chat; compatible servers widely know only max_tokens.
            return "max_completion_tokens" if host == OPENAI_HOST else "max_tokens"
        return endpoint.max_output_fields[0]

    def result_reader(self, path: str) -> tuple[str, BodyReader] | None:
        """``GET /responses/{id}``: the result of a background response, with its usage."""
        head, _, response_id = path.rpartition("/")
        if head != "/responses" or not response_id:
            return None
        return response_id, ResponsesReader()

    def reader(self, prepared: Prepared, hide_stream_usage: bool) -> BodyReader:
        if prepared.path == "/responses":
            return ResponsesReader()
        if prepared.path == "/embeddings":
            return EmbeddingsReader()
        if prepared.path.startswith("/images/"):
            return ImagesReader()
        if prepared.path == "/audio/speech":
            per_character = prepared.request.model.startswith(PER_CHARACTER_SPEECH)
            return SpeechReader(prepared.request.input_characters if per_character else None)
        if prepared.path.startswith("/audio/"):
            return TranscriptionReader()
        return ChoicesReader(hide_stream_usage)

    def credit_remaining_nano(self, client: Any) -> int | None:
        """OpenRouter's ``GET /key``: ``limit_remaining`` in USD (null for a key without a limit).
        Asked through the client itself, so its auth, transport and timeouts apply."""
        if self.provider(client)[0] != "openrouter":
            return None
        remaining = get_path(client.get("/key", cast_to=object), ("data", "limit_remaining"))
        if remaining is None or isinstance(remaining, bool):
            return None
        return usd_to_nano(repr(remaining) if isinstance(remaining, float) else str(remaining))


# Modules whose ``*ConnectionManager`` classes open WebSocket sessions (Responses ``connect()``,
# Realtime, their beta twins): LLM calls travel there as events the HTTP choke point never sees.
SESSION_MODULES = ("openai.resources.responses.responses", "openai.resources.realtime.realtime",
                   "openai.resources.beta.responses.responses", "openai.resources.beta.realtime.realtime")


class SessionHook:
    """Every WebSocket session is an unknown endpoint: refused in enforce mode when it is opened
    (``__enter__``, ``__aenter__`` and their ``enter`` aliases), recorded as degraded otherwise."""

    def __init__(self, guard: GuardRef) -> None:
        self._guard = guard
        self._wrapped: list[tuple[type, str]] = []

    def instrument(self) -> None:
        for name in SESSION_MODULES:
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue  # an SDK version without this API
            for cls in vars(module).values():
                if not (isinstance(cls, type) and cls.__name__.endswith("ConnectionManager")):
                    continue
                for method in ("__enter__", "__aenter__", "enter"):
                    if method in vars(cls):
                        wrapper = self._aenter if inspect.iscoroutinefunction(vars(cls)[method]) else self._enter
                        wrapt.wrap_function_wrapper(cls, method, wrapper)
                        self._wrapped.append((cls, method))

    def uninstrument(self) -> None:
        for cls, method in self._wrapped:
            unwrap(cls, method)
        self._wrapped = []

    def _check(self, instance: Any) -> None:
        guard = self._guard()
        if isinstance(guard, Refusal):
            guard.refuse()
        if isinstance(guard, Guard):
            guard.unguarded(UnknownEndpoint("openai", f"WebSocket session ({type(instance).__name__})"))

    def _enter(self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self._check(instance)
        return wrapped(*args, **kwargs)

    async def _aenter(self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                      kwargs: dict[str, Any]) -> Any:
        self._check(instance)
        return await wrapped(*args, **kwargs)


INTEGRATION = Integration("openai >= 1.60", lambda guard: Hooks(StainlessHook(OpenAIAdapter(), guard),
                                                                 SessionHook(guard)))
