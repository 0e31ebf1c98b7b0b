"""``agentguard models``: the priced catalog, driven through ``main(argv)`` with real price files and
compared against the price book the guard prices calls with."""

from __future__ import annotations

import json
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentguard_otel.cli import main
from agentguard_otel.pricing import ModelPrice, PriceBook
from agentguard_otel.pricing.bundled import genai_provider
from agentguard_otel.pricing.catalog import Selection, parse_usd_per_mtok, token_rates

ROOT = Path(__file__).resolve().parents[2]
OPENROUTER_CATALOG = ROOT / "tests" / "pricing" / "data" / "openrouter_models.json"
NANO = Decimal(1_000_000_000)


def _rows(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict[str, Any]]:
    assert main(["models", *argv, "--json"]) == 0
    rows: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    return rows


def _usd(value: float | int) -> Decimal:
    """The JSON number's text as a decimal: what a script reading the output gets exactly."""
    return Decimal(repr(value))


@cache
def _bundled_openai() -> tuple[ModelPrice, ...]:
    """Every openai model of the bundled data the price book prices by its own id (independently of
    the catalog code: straight from genai-prices' model list)."""
    book = PriceBook()
    source = genai_provider("openai")
    assert source is not None
    found = (book.lookup("openai", info.id) for info in source.models)
    return tuple(price for price in found if price is not None)


def test_openai_under_a_price_lists_exactly_the_price_books_models_under_it(
        capsys: pytest.CaptureFixture[str]) -> None:
    rows = _rows(capsys, "--provider", "openai", "--max-input-usd-per-mtok", "0.2")
    ceiling = Decimal("0.2") * NANO
    expected = {f"openai/{p.model}" for p in _bundled_openai()
                if p.input <= ceiling and not (p.input == p.output == 0 and (p.per_mchars or p.per_audio_hour))}
    assert {row["id"] for row in rows} == expected
    assert "openai/gpt-4o-mini" in expected and "openai/gpt-5-mini" not in expected  # $0.15 and $0.25
    assert all(row["provider"] == "openai" and _usd(row["input_usd_per_mtok"]) <= Decimal("0.2") for row in rows)
    keys = [(_usd(row["input_usd_per_mtok"]), _usd(row["output_usd_per_mtok"])) for row in rows]
    assert keys == sorted(keys)
    assert set(rows[0]) == {"id", "provider", "input_usd_per_mtok", "output_usd_per_mtok", "cache_read_usd_per_mtok",
                            "context_window", "source", "usd_per_mchars", "usd_per_audio_hour"}


def test_a_ceiling_is_compared_exactly_at_the_nano_dollar(capsys: pytest.CaptureFixture[str]) -> None:
    at = {row["id"] for row in _rows(capsys, "--provider", "openai", "--max-input-usd-per-mtok", "0.15")}
    below = {row["id"] for row in _rows(capsys, "--provider", "openai", "--max-input-usd-per-mtok", "0.149999999")}
    assert "openai/gpt-4o-mini" in at - below
    output = {row["id"] for row in _rows(capsys, "--provider", "openai", "--max-output-usd-per-mtok", "0.6")}
    assert "openai/gpt-4o-mini" in output and "openai/gpt-5-mini" not in output  # $0.60 and $2 out


def test_every_row_is_the_exact_price_the_book_gives(capsys: pytest.CaptureFixture[str]) -> None:
    book = PriceBook()
    rows = _rows(capsys)
    assert len(rows) > 1000
    for row in rows:
        provider, _, model = row["id"].partition("/")
        price = book.lookup(provider, model)
        assert price is not None and row["provider"] == provider and row["source"] == price.source
        if row["input_usd_per_mtok"] is None:  # billed per character or audio hour
            assert price.input == price.output == 0 and (row["usd_per_mchars"] or row["usd_per_audio_hour"])
            continue
        assert (_usd(row["input_usd_per_mtok"]) * NANO, _usd(row["output_usd_per_mtok"]) * NANO) == \
            (price.input, price.output)
        cache_read = row["cache_read_usd_per_mtok"]
        assert (None if cache_read is None else _usd(cache_read) * NANO) == price.cache_read
        assert row["context_window"] == price.context_window


def test_sort_by_output_and_search_in_any_case(capsys: pytest.CaptureFixture[str]) -> None:
    rows = _rows(capsys, "--search", "CLAUDE-HAIKU", "--sort", "output")
    assert rows and all("claude-haiku" in row["id"].lower() for row in rows)
    assert {"anthropic/claude-haiku-4-5", "openrouter/anthropic/claude-haiku-4.5"} <= {row["id"] for row in rows}
    keys = [(_usd(row["output_usd_per_mtok"]), _usd(row["input_usd_per_mtok"])) for row in rows]
    assert keys == sorted(keys)
    assert {row["provider"] for row in _rows(capsys, "--provider", "bedrock", "--search", "haiku")} == {"aws"}


def test_overrides_and_the_imported_catalog_appear_with_their_source(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    overrides = tmp_path / "prices.yaml"
    overrides.write_text('openai/gpt-4o-mini: {input_usd_per_mtok: "0.011", output_usd_per_mtok: "0.022"}\n'
                         'house-model: {input_usd_per_mtok: "0.5", output_usd_per_mtok: "1.5"}\n')
    catalog = tmp_path / "catalog"
    assert main(["pricing", "sync", "--from", str(OPENROUTER_CATALOG), "--catalog-dir", str(catalog)]) == 0
    capsys.readouterr()
    rows = {row["id"]: row for row in _rows(capsys, "--pricing", str(overrides), "--catalog-dir", str(catalog))}
    assert (rows["openai/gpt-4o-mini"]["source"], rows["openai/gpt-4o-mini"]["input_usd_per_mtok"]) == \
        ("override", 0.011)
    # the same key prices OpenRouter's id of the model too, as the guard's lookup does
    assert rows["openrouter/openai/gpt-4o-mini"]["source"] == "override"
    assert (rows["*/house-model"]["provider"], rows["*/house-model"]["output_usd_per_mtok"]) == ("*", 1.5)
    imported = rows["openrouter/mistralai/mistral-small-3.2-24b-instruct"]
    assert (imported["source"], imported["input_usd_per_mtok"], imported["context_window"]) == \
        ("openrouter", 0.05, 131072)
    assert rows["openrouter/anthropic/claude-haiku-4.5"]["source"] == "openrouter"
    assert "openrouter/anthropic/claude-haiku-4-5" not in rows  # the dashed alias is not a second model
    assert "openrouter/openrouter/auto" not in rows  # no known price
    # the guard's defaults are the command's: AGENTGUARD_PRICING names the overrides file
    monkeypatch.setenv("AGENTGUARD_PRICING", str(overrides))
    rows = {row["id"]: row for row in _rows(capsys, "--search", "house-model")}
    assert list(rows) == ["*/house-model"]


def test_the_table_is_aligned_and_escapes_control_characters(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    overrides = tmp_path / "prices.json"
    overrides.write_text(json.dumps({"evil\u001b[31mmodel": {"input_usd_per_mtok": "0.000000001",
                                                           "output_usd_per_mtok": "12"}}))
    assert main(["models", "--pricing", str(overrides), "--search", "model", "--max-input-usd-per-mtok", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header, rows, footer = lines[0], lines[1:-1], lines[-1]
    assert "\x1b" not in "".join(lines) and any("evil\\x1b[31mmodel" in row for row in rows)
    assert any("$0.000000001" in row and "$12" in row for row in rows)
    for column in ("input", "output", "context"):  # right-aligned under their heading
        end = header.index(column) + len(column)
        assert all(row[end - 1] != " " and row[end:end + 1] in (" ", "") for row in rows)
    assert footer == f"{len(rows)} model(s); prices in USD per million tokens"


@pytest.mark.parametrize(("argv", "message"), [
    (["--max-input-usd-per-mtok", "cheap"], "--max-input-usd-per-mtok takes a USD amount"),
    (["--max-output-usd-per-mtok", "-1"], "--max-output-usd-per-mtok must be a finite, non-negative"),
    (["--max-input-usd-per-mtok", "NaN"], "must be a finite, non-negative"),
    (["--provider", "nowhere"], "--provider 'nowhere' prices no model here; providers: *, anthropic, aws"),
])
def test_bad_flags_say_what_is_wrong(argv: list[str], message: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    overrides = tmp_path / "prices.yaml"
    overrides.write_text('house: {input_usd_per_mtok: "1", output_usd_per_mtok: "2"}\n')
    assert main(["models", "--pricing", str(overrides), *argv]) == 2
    assert message in capsys.readouterr().err


def test_a_damaged_overrides_file_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    overrides = tmp_path / "prices.yaml"
    overrides.write_text("house: {input_usd_per_mtok: 1.5x}\n")
    assert main(["models", "--pricing", str(overrides)]) == 2
    assert f"{overrides}: 'house'" in capsys.readouterr().err


@given(st.decimals(min_value=0, max_value=20, places=10), st.sampled_from(("input", "output")))
def test_a_ceiling_admits_exactly_the_rates_at_most_it(ceiling: Decimal, direction: str) -> None:
    prices = _bundled_openai()
    nano = parse_usd_per_mtok(str(ceiling), "--max")
    flags = {"max_input_nano": nano} if direction == "input" else {"max_output_nano": nano}
    chosen = Selection(**flags).select(prices)  # type: ignore[arg-type]
    index = ("input", "output").index(direction)
    assert set(chosen) == {p for p in prices if (rates := token_rates(p)) is not None
                           and Decimal(rates[index]) / NANO <= ceiling}
