"""The user's own price table: a mapping, or a YAML/JSON file, of model -> USD-per-MTok rates (and
per million characters or per audio hour, for models billed by those).

Keys are ``provider/model`` or a bare ``model``. Rates are read as exact decimals: YAML with the
base loader (every scalar stays the string the user wrote) and JSON with Decimal floats. A Python
float is refused, since it has already lost the exact value the user meant.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from agentguard_otel.errors import ConfigError
from agentguard_otel.pricing.prices import ModelPrice, flat_price, usd_to_nano_scaled

_RATE_FIELDS = {
    "input_usd_per_mtok": "input",
    "output_usd_per_mtok": "output",
    "cache_read_usd_per_mtok": "cache_read",
    "cache_write_usd_per_mtok": "cache_write",
    "cache_write_1h_usd_per_mtok": "cache_write_1h",
    "reasoning_usd_per_mtok": "reasoning",
    "per_request_usd": "per_request",
    "input_audio_usd_per_mtok": "input_audio",
    "input_image_usd_per_mtok": "input_image",
    "output_audio_usd_per_mtok": "output_audio",
    "output_image_usd_per_mtok": "output_image",
    "usd_per_mchars": "per_mchars",
    "usd_per_audio_hour": "per_audio_hour",
}
_REQUIRED = ("input_usd_per_mtok", "output_usd_per_mtok")
_UNIT_FIELDS = ("usd_per_mchars", "usd_per_audio_hour")
"""A model billed by characters or audio duration alone (tts-1, whisper-1) needs no token rates."""

OverrideSource = str | os.PathLike[str] | Mapping[str, Any] | None


def load_overrides(source: OverrideSource) -> dict[str, ModelPrice]:
    """Validated overrides by lower-cased key. Each price is a template: the lookup fills in the
    provider and model it was asked for."""
    if source is None:
        return {}
    if isinstance(source, Mapping):
        return _parse(source, "pricing overrides")
    path = Path(source)
    return _parse(_read_file(path), str(path))


def _read_file(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read pricing overrides {path}: {exc.strerror or exc}") from exc
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            return json.loads(text, parse_float=Decimal)
        if suffix in (".yaml", ".yml"):
            return yaml.load(text, Loader=yaml.BaseLoader)  # BaseLoader: every scalar stays a string
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {suffix[1:].upper()}: {exc}") from exc
    raise ConfigError(f"{path}: pricing overrides must be a .yaml, .yml or .json file")


def _parse(data: Any, origin: str) -> dict[str, ModelPrice]:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{origin}: expected a mapping of model -> prices, got {type(data).__name__}")
    table: dict[str, ModelPrice] = {}
    for key, entry in data.items():
        if not isinstance(key, str) or not key.strip():
            raise ConfigError(f"{origin}: model keys must be non-empty strings, got {key!r}")
        folded = key.strip().lower()
        if folded in table:
            raise ConfigError(f"{origin}: {key!r} is listed twice (keys are not case-sensitive)")
        table[folded] = _entry(entry, f"{origin}: {key!r}")
    return table


def _entry(entry: Any, where: str) -> ModelPrice:
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: expected a mapping of rates, got {type(entry).__name__}")
    unknown = sorted(str(field) for field in entry if field not in _RATE_FIELDS)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; "
                          f"allowed: {', '.join(_RATE_FIELDS)}")
    missing = [field for field in _REQUIRED if entry.get(field) is None]
    if missing and not any(entry.get(field) is not None for field in _UNIT_FIELDS):
        raise ConfigError(f"{where}: missing {', '.join(missing)}")
    rates = {_RATE_FIELDS[field]: _nano(value, f"{where}: {field}")
             for field, value in entry.items() if value is not None}
    return flat_price("", "", "override", input=rates.pop("input", 0), output=rates.pop("output", 0),
                      **rates)


def _nano(value: Any, where: str) -> int:
    """USD (per MTok, or per request) as nano-USD, exactly; a finer fraction rounds up."""
    if isinstance(value, float):
        raise ConfigError(f"{where}: {value!r} is a float, which cannot hold an exact price; "
                          f"write it as a string (\"{value!r}\") or a Decimal")
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        raise ConfigError(f"{where}: expected a decimal number, got {value!r}")
    try:
        amount = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation:
        raise ConfigError(f"{where}: {value!r} is not a decimal number") from None
    if not amount.is_finite() or amount < 0:
        raise ConfigError(f"{where}: {value!r} must be a finite, non-negative amount")
    return usd_to_nano_scaled(amount, 1)
