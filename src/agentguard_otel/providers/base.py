"""Pure helpers every adapter shares: reading nested fields, usage objects and input sizes.

Adapters translate SDK requests into :class:`~agentguard_otel.call.LLMRequest` and responses
(objects, JSON bodies or stream events) into :class:`~agentguard_otel.call.ResponseInfo`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from agentguard_otel.call import AUTO_TIER, STANDARD_TIER, MalformedResponse
from agentguard_otel.pricing import TokenUsage

Path = tuple[str, ...]


def get_path(obj: Any, path: Path) -> Any:
    """Read ``a.b.c`` from nested dicts or SDK objects alike; ``None`` when any step is missing."""
    for part in path:
        if obj is None:
            return None
        obj = obj.get(part) if isinstance(obj, Mapping) else getattr(obj, part, None)
    return obj


MAX_OUTPUT_TOKENS = 2**24  # more than any model generates in one call
MAX_CHOICES = 2**10  # more choices than any API generates for one call


def counts(values: list[Any], ceiling: int) -> list[int] | None:
    """The counts set among ``values`` (None: not set), or None when one is anything but a whole
    number up to ``ceiling`` (a float, a string, a bool, 1e400): a provider may read it as a count
    the guard would not have bounded, and no price is computed from a count no model has."""
    given = [v for v in values if v is not None]
    if all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= ceiling for v in given):
        return given
    return None


@functools.lru_cache(maxsize=4096)  # pure, and asked once per request of the few paths an app uses
def normalise_path(path: str) -> str:
    """A URL path as a server resolves it: percent-decoded, empty and dot segments resolved, no
    trailing slash. Endpoint tables are matched against this, so no spelling slips past them."""
    segments: list[str] = []
    for segment in unquote(path.split("?", 1)[0]).split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    return "/" + "/".join(segments)


def ends_with(path: str, pattern: str) -> bool:
    """Whether a normalised path ends with a pattern's segments (``*`` stands for any one segment),
    so a table entry matches under any base path (``/v1``, ``/api/v1``, a proxy's prefix)."""
    have, want = path.strip("/").split("/"), pattern.strip("/").split("/")
    if len(want) > len(have):
        return False
    return all(w in ("*", h) for w, h in zip(want, have[len(have) - len(want):], strict=True))


def matches(path: str, pattern: str) -> bool:
    """Whether a normalised path is a pattern: ``*`` stands for one segment, a trailing ``**`` for
    any number of them (a whole family of paths, e.g. ``/organization/**``)."""
    have, want = path.strip("/").split("/"), pattern.strip("/").split("/")
    if want[-1] == "**":
        want = want[:-1]
        have = have[:len(want)]
    return len(want) == len(have) and all(w in ("*", h) for w, h in zip(want, have, strict=True))


def caused_by(exc: BaseException, names: frozenset[str]) -> bool:
    """Whether ``exc`` or an exception it was raised from has one of these class names (SDKs wrap
    their transport's errors; matching names keeps adapters free of transport imports)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if type(current).__name__ in names:
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


MAX_TOKENS = 2**40  # more tokens than any call can use: a count above it is not a real count


def token_count(value: Any, what: str) -> int:
    """A reported token count: absent is 0; anything but a non-negative whole number is malformed."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS:
        raise MalformedResponse(f"usage field {what} is not a token count")
    return value


@dataclass(frozen=True)
class UsageFields:
    """Where one API reports token usage, relative to its usage object."""

    input: Path
    output: Path
    cache_read: Path | None = None
    cache_write: Path | None = None
    cache_write_1h: Path | None = None
    reasoning: Path | None = None
    input_audio: Path | None = None
    input_image: Path | None = None
    output_audio: Path | None = None
    output_image: Path | None = None
    input_excludes_cache: bool = False  # Anthropic counts cache tokens outside input_tokens

    def read(self, usage: Any) -> TokenUsage | None:
        """The usage, or None when there is none; :class:`MalformedResponse` when it has no input
        count, a count that is not one, or parts larger than their whole."""
        if usage is None:
            return None
        if get_path(usage, self.input) is None:
            raise MalformedResponse("usage without an input token count")

        def count(path: Path | None) -> int:
            return token_count(get_path(usage, path), ".".join(path)) if path else 0

        cache_read, cache_write, cache_write_1h = count(self.cache_read), count(self.cache_write), \
            count(self.cache_write_1h)
        input_tokens, output_tokens, reasoning = count(self.input), count(self.output), count(self.reasoning)
        input_audio, input_image = count(self.input_audio), count(self.input_image)
        output_audio, output_image = count(self.output_audio), count(self.output_image)
        if self.input_excludes_cache:
            input_tokens += cache_read + cache_write + cache_write_1h
        if cache_read + cache_write + cache_write_1h > input_tokens or input_audio + input_image > input_tokens \
                or reasoning + output_audio + output_image > output_tokens:
            raise MalformedResponse("usage parts exceed their totals")
        # Cached tokens are counted among the audio and image ones too: priced once, at the cache rate.
        uncached_media = min(input_audio + input_image, input_tokens - cache_read - cache_write - cache_write_1h)
        audio = min(input_audio, uncached_media)
        return TokenUsage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_tokens=cache_read,
            cache_write_tokens=cache_write,
            cache_write_1h_tokens=cache_write_1h,
            reasoning_tokens=reasoning,
            input_audio_tokens=audio,
            input_image_tokens=uncached_media - audio,
            output_audio_tokens=output_audio,
            output_image_tokens=output_image,
        )


@dataclass(frozen=True)
class InputMeasure:
    bytes: int = 0
    items: int = 0
    images: int = 0
    tokens: int = 0  # of parts measured apart (audio by its duration)


def find_unseen(value: Any, unseen: Callable[[Mapping[str, Any]], str | None],
                bounded: Callable[[Mapping[str, Any]], bool] = lambda part: False) -> str | None:
    """The first part of a request body that stands for input the body does not carry (as the
    adapter's ``unseen`` says: a file by id, a document, a video by URI), or None. Parts the
    adapter bounds by what they are (``bounded``: an image, whatever its source) are not searched."""
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            if bounded(item):
                continue
            found = unseen(item)
            if found is not None:
                return found
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return None


def measure_input(value: Any, is_image: Callable[[Mapping[str, Any]], bool],
                  part_tokens: Callable[[Mapping[str, Any]], int | None] = lambda part: None) -> InputMeasure:
    """Size the input for a token bound: UTF-8 bytes of every key and string (a byte-level BPE
    token covers at least one byte), structural punctuation, images counted apart (their base64
    bytes say nothing about their token cost), and parts whose tokens ``part_tokens`` bounds
    itself (audio by its duration; None: measured by their bytes)."""
    total = 0
    images = 0
    tokens = 0
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += (len(item) if item.isascii() else len(item.encode("utf-8"))) + 2
        elif isinstance(item, Mapping):
            if is_image(item):
                images += 1
                continue
            bounded = part_tokens(item)
            if bounded is not None:
                tokens += bounded
                continue
            total += 2
            for key, sub in item.items():
                total += len(str(key).encode("utf-8")) + 4
                stack.append(sub)
        elif isinstance(item, Sequence) and not isinstance(item, (bytes, bytearray)):
            total += 2 + len(item)
            stack.extend(item)
        elif item is not None:
            total += len(str(item))
    return InputMeasure(bytes=total, images=images, tokens=tokens)


_STANDARD_TIERS = frozenset({"default", STANDARD_TIER, "standard_only"})  # names of a provider's default tier


def requested_tier(value: Any) -> str | None:
    """The service tier a request asks for: None for the standard one (or none given), else its
    name (``auto``: whichever the provider picks)."""
    return value if isinstance(value, str) and value not in _STANDARD_TIERS else None


def reported_tier(value: Any) -> str | None:
    """The tier a response says the call was processed at: STANDARD_TIER for the default one,
    None when it says nothing (or only ``auto``)."""
    if not isinstance(value, str) or value == AUTO_TIER:
        return None
    return STANDARD_TIER if value in _STANDARD_TIERS else value
