"""OpenRouter catalog import: from a saved file and from a real local HTTP server, exact conversion,
priority (overrides > catalog > bundled data), ``:free`` prices, and clear errors."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentguard_otel.errors import ConfigError
from agentguard_otel.pricing import CATALOG_FILE, PriceBook, TokenUsage, sync_openrouter_catalog

FIXTURE = Path(__file__).parent / "data" / "openrouter_models.json"


@pytest.fixture
def catalog_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "catalog"
    assert sync_openrouter_catalog(str(FIXTURE), directory) == 8
    return directory


def test_sync_writes_a_normalized_catalog(catalog_dir: Path) -> None:
    document = json.loads((catalog_dir / CATALOG_FILE).read_text())
    assert document["source"] == str(FIXTURE)
    assert document["skipped"] == ["openrouter/auto"]  # prompt/completion "-1": unknown
    assert document["models"]["anthropic/claude-haiku-4.5"] == {
        "input": 1_000_000_000, "output": 5_000_000_000, "cache_read": 100_000_000,
        "cache_write": 1_250_000_000, "cache_write_1h": 2_000_000_000, "per_request": 0, "per_image": 0,
        "context_length": 200_000}  # bounds input a request does not carry
    # a distinct reasoning price survives; "0.0000025" is also its completion price
    assert document["models"]["perplexity/sonar-deep-research"]["reasoning"] == 3_000_000_000
    # USD 0.00000008333333333333334 per token has more than nine decimals per MTok: rounded up
    assert document["models"]["google/gemini-2.5-flash"]["cache_write"] == 83_333_334
    assert document["models"]["perplexity/sonar"]["per_request"] == 5_000_000
    assert document["models"]["openai/gpt-4o-mini"]["per_image"] == 217_000
    assert [p.name for p in catalog_dir.iterdir()] == [CATALOG_FILE]  # no temporary file left behind


def test_catalog_prices_win_over_bundled_data(catalog_dir: Path) -> None:
    book = PriceBook(catalog_dir=catalog_dir)
    haiku = book.lookup("openrouter", "anthropic/claude-haiku-4.5")
    assert haiku is not None and haiku.source == "openrouter" and haiku.context_window == 200_000
    assert (haiku.input, haiku.output, haiku.cache_read, haiku.cache_write, haiku.cache_write_1h) == (
        1_000_000_000, 5_000_000_000, 100_000_000, 1_250_000_000, 2_000_000_000)
    dashed = book.lookup("openrouter", "anthropic/claude-haiku-4-5:floor")
    assert dashed is not None and dashed.source == "openrouter"
    assert dashed.model == "anthropic/claude-haiku-4-5:floor"
    mini = book.lookup("openrouter", "openai/gpt-5-mini")
    # internal_reasoning "0" on a paid model: reasoning is billed as completion tokens
    assert mini is not None and mini.source == "openrouter" and mini.reasoning is None
    # the catalog only applies to OpenRouter
    direct = book.lookup("openai", "gpt-5-mini")
    assert direct is not None and direct.source == "genai-prices"
    # models the catalog lacks still come from the bundled data
    other = book.lookup("openrouter", "openai/gpt-4o")
    assert other is not None and other.source == "genai-prices"


def test_catalog_price_differing_from_bundled_data_is_the_one_used(tmp_path: Path) -> None:
    document = json.loads(FIXTURE.read_text())
    [gpt5] = [m for m in document["data"] if m["id"] == "openai/gpt-5-mini"]
    gpt5["pricing"]["prompt"] = "0.0000003"
    source = tmp_path / "models.json"
    source.write_text(json.dumps(document))
    sync_openrouter_catalog(str(source), tmp_path / "catalog")
    price = PriceBook(catalog_dir=tmp_path / "catalog").lookup("openrouter", "openai/gpt-5-mini")
    assert price is not None and price.input == 300_000_000


def test_overrides_win_over_the_catalog(catalog_dir: Path) -> None:
    book = PriceBook(overrides={"openai/gpt-5-mini": {"input_usd_per_mtok": "9", "output_usd_per_mtok": "9"}},
                     catalog_dir=catalog_dir)
    price = book.lookup("openrouter", "openai/gpt-5-mini")
    assert price is not None and price.source == "override" and price.input == 9_000_000_000


def test_free_model_is_a_known_zero(catalog_dir: Path) -> None:
    book = PriceBook(catalog_dir=catalog_dir)
    price = book.lookup("openrouter", "meta-llama/llama-3.3-70b-instruct:free")
    assert price is not None and price.source == "openrouter"
    assert book.actual_cost_nano(price, TokenUsage(input_tokens=10_000, output_tokens=5_000)) == 0
    assert book.bound_cost_nano(price, 10_000, 5_000) == 0


def test_reasoning_priced_from_the_catalog(catalog_dir: Path) -> None:
    book = PriceBook(catalog_dir=catalog_dir)
    price = book.lookup("openrouter", "perplexity/sonar-deep-research")
    assert price is not None
    usage = TokenUsage(input_tokens=1_000, output_tokens=1_000, reasoning_tokens=400)
    assert book.actual_cost_nano(price, usage) == 1_000 * 2_000 + 600 * 8_000 + 400 * 3_000


def test_no_catalog_yet_is_fine(tmp_path: Path) -> None:
    price = PriceBook(catalog_dir=tmp_path / "empty").lookup("openrouter", "openai/gpt-5-mini")
    assert price is not None and price.source == "genai-prices"


def test_damaged_catalog_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / CATALOG_FILE).write_text('{"format": "something-else"}')
    with pytest.raises(ConfigError, match=r"damaged OpenRouter catalog.*pricing sync"):
        PriceBook(catalog_dir=tmp_path)


@pytest.mark.parametrize(("document", "message"), [
    ({"models": []}, r"not an OpenRouter /api/v1/models response"),
    ({"data": [{"pricing": {"prompt": "0", "completion": "0"}}]}, r"data\[0\] has no model id"),
    ({"data": [{"id": "a/b", "pricing": {"prompt": "-1", "completion": "0.1"}}]},
     r"no model with a known price"),
])
def test_bad_catalog_is_rejected(tmp_path: Path, document: dict[str, Any], message: str) -> None:
    source = tmp_path / "models.json"
    source.write_text(json.dumps(document))
    with pytest.raises(ConfigError, match=message):
        sync_openrouter_catalog(str(source), tmp_path / "catalog")
    assert not (tmp_path / "catalog" / CATALOG_FILE).exists()


def test_malformed_prices_skip_the_model(tmp_path: Path) -> None:
    document = {"data": [
        {"id": "good/model", "pricing": {"prompt": "0.000001", "completion": "0.000002"}},
        {"id": "bad/text", "pricing": {"prompt": "free", "completion": "0.000002"}},
        {"id": "bad/negative", "pricing": {"prompt": "0.000001", "completion": "-0.5"}},
        {"id": "bad/missing", "pricing": {"prompt": "0.000001"}},
        {"id": "bad/no-pricing"},
    ]}
    source = tmp_path / "models.json"
    source.write_text(json.dumps(document))
    assert sync_openrouter_catalog(str(source), tmp_path) == 1
    saved = json.loads((tmp_path / CATALOG_FILE).read_text())
    assert saved["skipped"] == ["bad/text", "bad/negative", "bad/missing", "bad/no-pricing"]


def test_unreadable_source_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read .*missing\.json"):
        sync_openrouter_catalog(str(tmp_path / "missing.json"), tmp_path)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"broken\.json: not valid JSON"):
        sync_openrouter_catalog(str(tmp_path / "broken.json"), tmp_path)


class _CatalogHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path != "/api/v1/models":
            self.send_error(404, "Not Found")
            return
        body = FIXTURE.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""


@pytest.fixture
def server_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CatalogHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_sync_from_a_url(server_url: str, tmp_path: Path) -> None:
    assert sync_openrouter_catalog(f"{server_url}/api/v1/models", tmp_path) == 8
    price = PriceBook(catalog_dir=tmp_path).lookup("openrouter", "openai/gpt-4o-mini")
    assert price is not None and price.source == "openrouter" and price.input == 150_000_000


def test_http_error_is_a_clear_error(server_url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"could not fetch {server_url}/nope: HTTP 404"):
        sync_openrouter_catalog(f"{server_url}/nope", tmp_path)


def test_unreachable_url_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api/v1/models"
    with pytest.raises(ConfigError, match=rf"could not fetch {url}: .*refused"):
        sync_openrouter_catalog(url, tmp_path)
    assert not (tmp_path / CATALOG_FILE).exists()
