"""Screenshot of the verify page checking a shared receipt link, for the README (docs/verify-receipt.png).

Run from the repository root with the test extra installed and Debian's chromium present:
``python scripts/verify_page_screenshot.py [OUTPUT]``. The receipts and key are made up on the spot."""

from __future__ import annotations

import base64
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from agentguard_otel.receipts import ReceiptWriter, SigningKey
from agentguard_otel.receipts.page import write_verify_page


def main(output: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        key = SigningKey.generate(root / "agentguard.key")
        writer = ReceiptWriter(root / "receipts", key)
        receipt = writer.append("decision", {
            "call_id": "c0a8f3e2-review-17",
            "scope": {"tenant": "acme", "team": "eng", "user": "alice", "agent": "reviewer", "task": "code-review",
                      "capability": "read_only"},
            "policy": {"id": "team", "version": 3, "digest": "sha256:" + "5e" * 32},
            "action": "downgrade", "rule_id": "code-review", "cap": "daily", "reason": "daily cap at 92%",
            "provider": "openai", "model_requested": "gpt-4o", "model_effective": "gpt-4o-mini",
            "estimated_nano": 1_840_000, "hold_nano": 1_840_000, "degraded": False,
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7",
        })
        writer.close()
        page_path = write_verify_page(root / "verify.html")
        link = page_path.as_uri() + "#r=" + base64.urlsafe_b64encode(receipt.line.rstrip(b"\n")).decode().rstrip("=")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium")
            page = browser.new_page(viewport={"width": 900, "height": 1000}, device_scale_factor=1)
            page.goto(link)
            page.set_input_files("#keys", str(root / "agentguard.key.pub"))
            page.wait_for_selector("#verdict[data-verdict=ok]")
            output.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(output), full_page=True)
            browser.close()
    print(f"wrote {output}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/verify-receipt.png"))
