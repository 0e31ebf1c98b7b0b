"""User overrides: exact decimals from mappings, YAML and JSON; they win over every other source;
mistakes are reported with the key that holds them."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from agentguard_otel.errors import ConfigError
from agentguard_otel.pricing import PriceBook, TokenUsage

OVERRIDES = {
    "openai/gpt-4o-mini": {"input_usd_per_mtok": "0.15", "output_usd_per_mtok": "0.60",
                           "cache_read_usd_per_mtok": "0.075"},
    "my-local-model": {"input_usd_per_mtok": 1, "output_usd_per_mtok": Decimal("2.000000001"),
                       "reasoning_usd_per_mtok": "3", "per_request_usd": "0.0001"},
    "anthropic/claude-haiku-4-5": {"input_usd_per_mtok": "0.5", "output_usd_per_mtok": "2.5",
                                   "cache_write_usd_per_mtok": "0.625", "cache_write_1h_usd_per_mtok": "1"},
}


def test_overrides_win_over_bundled_prices() -> None:
    book = PriceBook(overrides=OVERRIDES)
    haiku = book.lookup("anthropic", "claude-haiku-4-5")
    assert haiku is not None and haiku.source == "override"
    assert (haiku.input, haiku.output, haiku.cache_read, haiku.cache_write, haiku.cache_write_1h) == (
        500_000_000, 2_500_000_000, None, 625_000_000, 1_000_000_000)
    assert (haiku.provider, haiku.model) == ("anthropic", "claude-haiku-4-5")
    # every input token bounded at the 1h cache-write rate ($1), output at $2.50
    assert book.bound_cost_nano(haiku, 1_000, 100) == 1_000 * 1_000 + 100 * 2_500
    # other models keep their bundled price
    other = book.lookup("anthropic", "claude-sonnet-4-5")
    assert other is not None and other.source == "genai-prices"


def test_media_rates_can_be_overridden() -> None:
    """Per-character and per-audio-hour models need no token rates; audio and image token rates
    raise the bound of their direction."""
    book = PriceBook(overrides={"openai/tts-1": {"usd_per_mchars": "16"},
                                "openai/whisper-1": {"usd_per_audio_hour": "0.40"},
                                "openai/gpt-image-1": {"input_usd_per_mtok": "5", "output_usd_per_mtok": "10",
                                                       "input_image_usd_per_mtok": "10",
                                                       "output_image_usd_per_mtok": "40",
                                                       "input_audio_usd_per_mtok": "1",
                                                       "output_audio_usd_per_mtok": "2"}})
    tts, whisper, image = (book.lookup("openai", m) for m in ("tts-1", "whisper-1", "gpt-image-1"))
    assert tts is not None and whisper is not None and image is not None
    assert (tts.per_mchars, tts.input, tts.output, tts.source) == (16_000_000_000, 0, 0, "override")
    assert book.actual_cost_nano(whisper, TokenUsage(0, 0, input_audio_seconds=9)) == 1_000_000
    assert (image.input_image, image.output_image, image.max_input, image.max_output) == \
        (10_000_000_000, 40_000_000_000, 10_000_000_000, 40_000_000_000)


def test_bare_model_keys_apply_to_any_provider() -> None:
    book = PriceBook(overrides=OVERRIDES)
    local = book.lookup("ollama", "my-local-model")
    assert local is not None and local.source == "override"
    # 1.0 and 2.000000001 USD/MTok; $0.0001 per request
    assert (local.input, local.output, local.reasoning, local.per_request) == (
        1_000_000_000, 2_000_000_001, 3_000_000_000, 100_000)
    usage = TokenUsage(input_tokens=1_000_000, output_tokens=1_000_000, reasoning_tokens=500_000)
    # 500,000 plain output tokens at 2,000,000,001 nano/MTok make half a nano-USD: rounded up once, at the end
    assert book.actual_cost_nano(local, usage) == 1_000_000_000 + 1_000_000_001 + 1_500_000_000 + 100_000


def test_provider_model_key_also_prices_the_same_model_on_openrouter() -> None:
    price = PriceBook(overrides=OVERRIDES).lookup("openrouter", "openai/gpt-4o-mini:nitro")
    assert price is not None and price.source == "override" and price.input == 150_000_000


def test_yaml_override_file_keeps_decimals_exact(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text("openai/gpt-4o-mini:\n"
                    "  input_usd_per_mtok: 0.15\n  output_usd_per_mtok: 0.6\n"
                    "  cache_read_usd_per_mtok: 0.075\n"
                    "aws/amazon.nova-micro-v1:0:\n"
                    "  input_usd_per_mtok: 0.000000001\n  output_usd_per_mtok: 1e-9\n")
    book = PriceBook(overrides=path)
    price = book.lookup("openai", "gpt-4o-mini")
    assert price is not None and (price.input, price.output, price.cache_read) == (
        150_000_000, 600_000_000, 75_000_000)
    nova = book.lookup("aws.bedrock", "amazon.nova-micro-v1:0")  # canonical provider id matches the key
    assert nova is not None and (nova.input, nova.output) == (1, 1)


def test_json_override_file_keeps_decimals_exact(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text('{"gpt-4o": {"input_usd_per_mtok": 0.1, "output_usd_per_mtok": 0.30000000000000004}}')
    price = PriceBook(overrides=str(path)).lookup("openai", "gpt-4o")
    assert price is not None and (price.input, price.output) == (100_000_000, 300_000_001)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"openai/gpt-4o-mini": {"input_usd_per_mtok": 0.15, "output_usd_per_mtok": "0.6"}},
     r"'openai/gpt-4o-mini': input_usd_per_mtok: 0.15 is a float"),
    ({"m": {"input_usd_per_mtok": "1"}}, r"'m': missing output_usd_per_mtok"),
    ({"m": {"input_usd_per_mtok": "1", "output_usd_per_mtok": "1", "inptu_usd_per_mtok": "1"}},
     r"'m': unknown field\(s\) inptu_usd_per_mtok"),
    ({"m": {"input_usd_per_mtok": "-1", "output_usd_per_mtok": "1"}},
     r"'m': input_usd_per_mtok: '-1' must be"),
    ({"m": {"input_usd_per_mtok": "cheap", "output_usd_per_mtok": "1"}}, r"'cheap' is not a decimal number"),
    ({"m": {"input_usd_per_mtok": True, "output_usd_per_mtok": "1"}}, r"expected a decimal number"),
    ({"m": "0.15"}, r"'m': expected a mapping of rates"),
    ({"": {"input_usd_per_mtok": "1", "output_usd_per_mtok": "1"}}, r"non-empty strings"),
    ({"M": {"input_usd_per_mtok": "1", "output_usd_per_mtok": "1"},
      "m": {"input_usd_per_mtok": "2", "output_usd_per_mtok": "2"}}, r"'m' is listed twice"),
])
def test_bad_override_is_a_clear_error(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PriceBook(overrides=overrides)


@pytest.mark.parametrize(("name", "text", "message"), [
    ("prices.yaml", "m: [unclosed", r"prices.yaml: not valid YAML"),
    ("prices.json", "{", r"prices.json: not valid JSON"),
    ("prices.yaml", "- just\n- a list\n", r"prices.yaml: expected a mapping of model -> prices, got list"),
    ("prices.toml", "m = 1", r"must be a .yaml, .yml or .json file"),
    ("prices.yaml", "m:\n  input_usd_per_mtok: 1\n", r"prices.yaml: 'm': missing output_usd_per_mtok"),
])
def test_bad_override_file_is_a_clear_error(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        PriceBook(overrides=path)


def test_missing_override_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read pricing overrides .*nope\.yaml"):
        PriceBook(overrides=tmp_path / "nope.yaml")
