"""The worst bill a provider could send for a request, within what it documents: the biller
(:meth:`tests.servers.base.LocalServer.bill_with`) of the strict-bound property test.

It is deliberately not a tokenizer. Every rule takes the most a provider's documentation allows:

- Text: every UTF-8 byte of every string, number and object key of the billed input is a token
  (a byte-level BPE token covers at least one byte). Billed input is the whole body except the
  control fields of :data:`CONTROL` (model, limits, stop sequences, sampling, metadata, tiers).
- Chat format: 4 tokens per message (OpenAI documents 3, one more with a ``name``) and 3 to prime
  the reply; a tool definition costs 19 tokens of framing (7 + 12 in OpenAI's cookbook) and 3 per
  key of its schema (per property and enum value in the cookbook).
- Images at the most their size can be billed: OpenAI's ``detail: high`` tiling at gpt-4o-mini's
  rates (2,833 + 5,667 per 512 px tile, ``low``: 2,833), Claude's and Nova's (w x h) / 750 after
  fitting the long edge into 1,568 px; an image whose size the server cannot read (a URL, an S3
  object) at the largest any size can have. A Nova video: 960 frames x 288 tokens.
- Anthropic models: the tool-use system prompt (346 tokens, the largest documented) whenever tools
  are given, plus the documented definitions of built-in tools (bash 245, text_editor 700,
  computer 735 and its 499-token system prompt); with
  any ``cache_control`` the whole prompt is billed as cache writes (1-hour writes when any
  breakpoint asks for ``ttl: 1h``, the dearest input there is); on Bedrock also with a Converse
  ``cachePoint`` (Bedrock reports one kind of cache write: 1-hour ones are billed as that kind).
- Output: the largest output-limit field the request sets, for every choice (``n``); a request
  without a limit gets :data:`UNLIMITED_OUTPUT` (a model's largest output).
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import unquote

from tests.servers.base import Bill

TOKENS_PER_MESSAGE = 4
REPLY_PRIMING = 3
TOOL_FRAMING = 19
TOKENS_PER_SCHEMA_KEY = 3
OPENAI_IMAGE_BASE = 2_833  # gpt-4o-mini, the dearest per tile of OpenAI's models
OPENAI_IMAGE_TILE = 5_667
OPENAI_MOST_TILES = 8  # fitted into 2048 x 2048, short side 768: at most 4 x 2 tiles of 512 px
CLAUDE_LONG_EDGE = 1_568
CLAUDE_PIXELS_PER_TOKEN = 750
NOVA_VIDEO_TOKENS = 960 * 288  # Nova samples at most 960 frames of 672 x 672, 288 tokens each
ANTHROPIC_TOOL_PROMPT = 346
ANTHROPIC_BUILTIN_TOOLS = {"bash": 245, "text_editor": 700, "computer": 735 + 499}
UNLIMITED_OUTPUT = 128_000

CONTROL = frozenset({
    "model", "max_tokens", "max_completion_tokens", "max_output_tokens", "n", "stream", "stream_options", "stop",
    "stop_sequences", "temperature", "top_p", "top_k", "seed", "service_tier", "user", "metadata", "store",
    "parallel_tool_calls", "reasoning_effort", "reasoning", "truncation", "thinking", "anthropic_version",
    "inferenceConfig", "performanceConfig", "requestMetadata",
})

ImageRule = Callable[[Mapping[str, Any]], int | None]  # a content part's tokens if it is media, else None


def png_size(data: str) -> tuple[int, int] | None:
    """(width, height) of a base64 PNG (a data URL or bare base64), None when it is not one."""
    try:
        raw = base64.b64decode(data.split("base64,", 1)[-1][:64], validate=False)
    except (binascii.Error, ValueError):
        return None
    if raw[:8] != b"\x89PNG\r\n\x1a\n" or len(raw) < 24:
        return None
    width, height = struct.unpack(">II", raw[16:24])
    return width, height


def openai_image_tokens(size: tuple[int, int] | None, detail: Any) -> int:
    if detail == "low":
        return OPENAI_IMAGE_BASE
    if size is None:
        return OPENAI_IMAGE_BASE + OPENAI_IMAGE_TILE * OPENAI_MOST_TILES
    width, height = size
    fit = min(1.0, 2048 / max(width, height))
    width, height = width * fit, height * fit
    short = min(1.0, 768 / min(width, height))
    tiles = math.ceil(width * short / 512) * math.ceil(height * short / 512)
    return OPENAI_IMAGE_BASE + OPENAI_IMAGE_TILE * tiles


def pixel_image_tokens(size: tuple[int, int] | None) -> int:
    """Claude's (and, above it, Nova's) rule: (w x h) / 750 after fitting the long edge."""
    width, height = size or (CLAUDE_LONG_EDGE, CLAUDE_LONG_EDGE)
    fit = min(1.0, CLAUDE_LONG_EDGE / max(width, height))
    return math.ceil(math.ceil(width * fit) * math.ceil(height * fit) / CLAUDE_PIXELS_PER_TOKEN)


def _openai_media(part: Mapping[str, Any]) -> int | None:
    kind = part.get("type")
    if kind == "image_url" and isinstance(part.get("image_url"), Mapping):
        image = part["image_url"]
        return openai_image_tokens(_data_size(image.get("url")), image.get("detail"))
    if kind == "input_image":
        return openai_image_tokens(_data_size(part.get("image_url")), part.get("detail"))
    return None


def _anthropic_media(part: Mapping[str, Any]) -> int | None:
    if part.get("type") != "image":
        return None
    source = part.get("source")
    data = source.get("data") if isinstance(source, Mapping) else None
    return pixel_image_tokens(png_size(data) if isinstance(data, str) else None)


def _bedrock_media(part: Mapping[str, Any]) -> int | None:
    if isinstance(part.get("video"), Mapping):
        return NOVA_VIDEO_TOKENS
    image = part.get("image")
    if isinstance(image, Mapping):
        data = (image.get("source") or {}).get("bytes")
        return pixel_image_tokens(png_size(data) if isinstance(data, str) else None)
    return _anthropic_media(part)


def _data_size(url: Any) -> tuple[int, int] | None:
    return png_size(url) if isinstance(url, str) and url.startswith("data:") else None


def billed_tokens(value: Any, media: ImageRule) -> int:
    """Every byte of every string, number and key is a token; a media part costs what ``media`` says."""
    total = 0
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item.encode("utf-8"))
        elif isinstance(item, Mapping):
            cost = media(item)
            if cost is not None:
                total += cost
                continue
            for key, sub in item.items():
                total += len(str(key).encode("utf-8"))
                stack.append(sub)
        elif isinstance(item, list):
            stack.extend(item)
        elif item is not None:
            total += len(str(item))
    return total


def _keys(value: Any) -> int:
    if isinstance(value, Mapping):
        return len(value) + sum(_keys(v) for v in value.values())
    if isinstance(value, list):
        return sum(_keys(v) for v in value)
    return 0


def _limit(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _input(body: Mapping[str, Any], media: ImageRule, tools: list[Any], messages: int) -> int:
    billed = {k: v for k, v in body.items() if k not in CONTROL}
    return (billed_tokens(billed, media) + TOKENS_PER_MESSAGE * messages + REPLY_PRIMING
            + TOOL_FRAMING * len(tools) + TOKENS_PER_SCHEMA_KEY * _keys(tools))


def _anthropic_extra(tools: list[Any]) -> int:
    builtin = sum(tokens for tool in tools for name, tokens in ANTHROPIC_BUILTIN_TOOLS.items()
                  if str(tool.get("type", "")).startswith(name))
    return (ANTHROPIC_TOOL_PROMPT if tools else 0) + builtin


def _cache_ttls(value: Any) -> set[str]:
    if isinstance(value, Mapping):
        found = {str(value["cache_control"].get("ttl", "5m"))} if isinstance(value.get("cache_control"),
                                                                              Mapping) else set()
        return found.union(*(_cache_ttls(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_cache_ttls(v) for v in value))
    return set()


def _with_cache(tokens: int, output: int, body: Mapping[str, Any]) -> Bill:
    ttls = _cache_ttls(body) | ({"5m"} if _has_cache_point(body) else set())
    if "1h" in ttls:
        return Bill(tokens, output, cache_write_1h_tokens=tokens)
    return Bill(tokens, output, cache_write_tokens=tokens if ttls else 0)


def _has_cache_point(value: Any) -> bool:
    """A Converse ``cachePoint`` block anywhere (Bedrock's 5-minute cache breakpoint)."""
    if isinstance(value, Mapping):
        return "cachePoint" in value or any(_has_cache_point(v) for v in value.values())
    return isinstance(value, list) and any(_has_cache_point(v) for v in value)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _openai(path: str, body: Mapping[str, Any]) -> Bill:
    tools = [t for t in _list(body.get("tools")) if isinstance(t, Mapping)]
    if path.endswith("/responses"):
        items = body.get("input")
        messages = len(items) if isinstance(items, list) else 1
        output = _limit(body.get("max_output_tokens")) or UNLIMITED_OUTPUT
        return Bill(_input(body, _openai_media, tools, messages + 1), output)
    limits = [v for f in ("max_tokens", "max_completion_tokens") if (v := _limit(body.get(f))) is not None]
    output = (max(limits) if limits else UNLIMITED_OUTPUT) * max(_limit(body.get("n")) or 1, 1)
    return Bill(_input(body, _openai_media, tools, len(_list(body.get("messages")))), output)


def _anthropic(body: Mapping[str, Any], media: ImageRule) -> Bill:
    tools = [t for t in _list(body.get("tools")) if isinstance(t, Mapping)]
    tokens = _input(body, media, tools, len(_list(body.get("messages"))) + 1) + _anthropic_extra(tools)
    return _with_cache(tokens, _limit(body.get("max_tokens")) or UNLIMITED_OUTPUT, body)


def _bedrock(path: str, body: Mapping[str, Any]) -> Bill:
    bill = _bedrock_tokens(path, body)  # Bedrock reports one kind of cache write
    return replace(bill, cache_write_tokens=bill.cache_write_tokens + bill.cache_write_1h_tokens,
                   cache_write_1h_tokens=0)


def _bedrock_tokens(path: str, body: Mapping[str, Any]) -> Bill:
    parts = path.split("?", 1)[0].split("/")
    model, operation = unquote(parts[2]), parts[3]
    if operation.startswith("invoke") and "anthropic_version" in body:
        return _anthropic(body, _bedrock_media)
    tools = [t for t in _list(get(body, "toolConfig", "tools")) if isinstance(t, Mapping)]
    tokens = _input(body, _bedrock_media, tools, len(_list(body.get("messages"))) + 1)
    if "anthropic." in model:
        tokens += _anthropic_extra(tools)
    return _with_cache(tokens, _limit(get(body, "inferenceConfig", "maxTokens")) or UNLIMITED_OUTPUT, body)


def get(body: Mapping[str, Any], *path: str) -> Any:
    value: Any = body
    for part in path:
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def worst_bill(path: str, body: Mapping[str, Any]) -> Bill:
    """The worst bill for ``body`` sent to ``path`` of any of the local servers' APIs."""
    if path.startswith("/model/"):
        return _bedrock(path, body)
    if path.split("?", 1)[0].endswith("/v1/messages"):
        return _anthropic(body, _anthropic_media)
    return _openai(path.split("?", 1)[0], body)
