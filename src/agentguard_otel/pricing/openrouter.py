"""Importing OpenRouter's model catalog (a ``/api/v1/models`` response) as exact integer prices.

``agentguard pricing sync --from FILE|URL`` reads the catalog once, validates it and writes a
normalized copy into the data directory; every :class:`PriceBook` started later reads that copy,
so no process depends on the network at start-up or on the hot path.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from agentguard_otel.errors import ConfigError
from agentguard_otel.pricing.prices import ModelPrice, flat_price, usd_to_nano_scaled
from agentguard_otel.version import __version__

logger = logging.getLogger(__name__)

CATALOG_FILE = "openrouter-catalog.json"
CATALOG_FORMAT = "agentguard-openrouter-catalog/1"
FETCH_TIMEOUT_SECONDS = 30.0

_PER_TOKEN_TO_PER_MTOK = 1_000_000
_PER_UNIT = 1
_TOKEN_FIELDS = {
    "prompt": "input",
    "completion": "output",
    "input_cache_read": "cache_read",
    "input_cache_write": "cache_write",
    "input_cache_write_1h": "cache_write_1h",
    "internal_reasoning": "reasoning",
}
"""OpenRouter pricing fields in USD per token -> catalog fields in nano-USD per MTok."""
_UNIT_FIELDS = {"request": "per_request", "image": "per_image"}
"""OpenRouter pricing fields in USD per request / per input image -> nano-USD per unit."""
_UNKNOWN = Decimal(-1)
"""OpenRouter's marker for a price it cannot state (e.g. the auto router): treated as absent."""
_DOTTED_VERSION = re.compile(r"(?<=\d)\.(?=\d)")


def sync_openrouter_catalog(source: str, catalog_dir: Path) -> int:
    """Import a saved ``/api/v1/models`` response (a file path) or fetch one (an http(s) URL) and
    write it, normalized, into ``catalog_dir`` atomically. Returns the number of models imported.

    Models whose prompt or completion price is unknown are skipped and listed in the catalog file.
    """
    document = _read_source(source)
    models, skipped = _normalize(document, source)
    if not models:
        raise ConfigError(f"{source}: no model with a known price in the catalog")
    if skipped:
        logger.warning("agentguard: skipped %d OpenRouter models without a known price: %s",
                       len(skipped), ", ".join(skipped[:10]) + (" ..." if len(skipped) > 10 else ""))
    catalog = {
        "format": CATALOG_FORMAT,
        "source": source,
        "imported_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "units": "nano-USD per 1,000,000 tokens; per_request and per_image in nano-USD",
        "skipped": skipped,
        "models": models,
    }
    _write_atomically(Path(catalog_dir) / CATALOG_FILE, json.dumps(catalog, indent=1, sort_keys=True) + "\n")
    return len(models)


def load_catalog(catalog_dir: Path) -> dict[str, ModelPrice]:
    """The imported catalog as price templates by lower-cased model id (plus a dashed alias of
    dotted version numbers, so ``claude-haiku-4-5`` finds ``claude-haiku-4.5``). Empty when nothing
    was imported yet."""
    path = Path(catalog_dir) / CATALOG_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read the OpenRouter catalog {path}: {exc.strerror or exc}") from exc
    try:
        document = json.loads(text)
        if document.get("format") != CATALOG_FORMAT:
            raise ValueError(f"format is {document.get('format')!r}, expected {CATALOG_FORMAT!r}")
        entries: dict[str, ModelPrice] = {}
        for model_id, rates in document["models"].items():
            entries[model_id.lower()] = dataclasses.replace(flat_price(
                "", "", "openrouter", input=rates["input"], output=rates["output"],
                cache_read=rates.get("cache_read"), cache_write=rates.get("cache_write"),
                cache_write_1h=rates.get("cache_write_1h"), reasoning=rates.get("reasoning"),
                per_request=rates.get("per_request", 0)), context_window=rates.get("context_length"))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path}: damaged OpenRouter catalog ({exc}); run `agentguard pricing sync` "
                          f"again") from exc
    for model_id, price in list(entries.items()):
        entries.setdefault(dashed_versions(model_id), price)
    return entries


def dashed_versions(model: str) -> str:
    """``claude-haiku-4.5`` -> ``claude-haiku-4-5``: OpenRouter ids dot version numbers that vendor
    ids (and users) often write with dashes."""
    return _DOTTED_VERSION.sub("-", model)


def _read_source(source: str) -> Any:
    if source.startswith(("http://", "https://")):
        request = urllib.request.Request(source, headers={"Accept": "application/json",
                                                          "User-Agent": f"agentguard-otel/{__version__}"})
        try:
            with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_SECONDS) as response:
                body: bytes = response.read()
        except urllib.error.HTTPError as exc:
            raise ConfigError(f"could not fetch {source}: HTTP {exc.code} {exc.reason}") from exc
        except urllib.error.URLError as exc:
            raise ConfigError(f"could not fetch {source}: {exc.reason}") from exc
        except (OSError, ValueError) as exc:
            raise ConfigError(f"could not fetch {source}: {exc}") from exc
        text = body.decode("utf-8", errors="replace")
    else:
        try:
            text = Path(source).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read {source}: {exc.strerror or exc}") from exc
    try:
        return json.loads(text, parse_float=Decimal)
    except ValueError as exc:
        raise ConfigError(f"{source}: not valid JSON: {exc}") from exc


def _normalize(document: Any, source: str) -> tuple[dict[str, dict[str, int]], list[str]]:
    data = document.get("data") if isinstance(document, Mapping) else None
    if not isinstance(data, list):
        raise ConfigError(f"{source}: not an OpenRouter /api/v1/models response (expected an object "
                          f"with a \"data\" list)")
    models: dict[str, dict[str, int]] = {}
    skipped: list[str] = []
    for index, item in enumerate(data):
        model_id = item.get("id") if isinstance(item, Mapping) else None
        if not isinstance(model_id, str) or not model_id:
            raise ConfigError(f"{source}: data[{index}] has no model id")
        pricing = item.get("pricing")
        rates = _rates(pricing) if isinstance(pricing, Mapping) else None
        if rates is None:
            skipped.append(model_id)
        else:
            window = item.get("context_length")
            if isinstance(window, int) and not isinstance(window, bool) and window > 0:
                rates["context_length"] = window
            models[model_id] = rates
    return models, skipped


def _rates(pricing: Mapping[str, Any]) -> dict[str, int] | None:
    """Integer rates of one model, or ``None`` when its prompt or completion price is unknown or
    any stated price is malformed (a catalog we cannot read exactly is not trusted in part).

    A zero ``internal_reasoning`` price on a paid model is how OpenRouter lists reasoning billed as
    completion tokens, so it is dropped (reasoning then prices as output) rather than read as free.
    """
    rates: dict[str, int] = {}
    for fields, scale in ((_TOKEN_FIELDS, _PER_TOKEN_TO_PER_MTOK), (_UNIT_FIELDS, _PER_UNIT)):
        for name, field in fields.items():
            value = pricing.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
                return None
            try:
                amount = Decimal(value)
            except InvalidOperation:
                return None
            if amount == _UNKNOWN:
                continue
            if not amount.is_finite() or amount < 0:
                return None
            rates[field] = usd_to_nano_scaled(amount, scale)
    if "input" not in rates or "output" not in rates:
        return None
    if rates.get("reasoning") == 0 and rates["output"] > 0:
        del rates["reasoning"]
    return rates


def _write_atomically(path: Path, text: str) -> None:
    """Write a sibling temporary file and rename it over ``path``: a reader sees the old catalog or
    the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
