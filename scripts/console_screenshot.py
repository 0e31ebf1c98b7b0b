"""Screenshots of ``agentguard serve`` for the README: the spend page (docs/console.png), the decisions
(docs/console-decisions.png) and the receipts page with receipts verified in place in the browser
(docs/console-receipts.png).

Run from the repository root with the test extra installed and Debian's chromium present:
``python scripts/console_screenshot.py [OUTPUT_DIR]``. The ledger and receipts are made on the spot by
real guarded calls (the openai SDK against the demo's local endpoint) in a temporary directory."""

from __future__ import annotations

import contextlib
import sys
import tempfile
import threading
from pathlib import Path

import openai
from opentelemetry.sdk.trace import TracerProvider
from playwright.sync_api import sync_playwright

from agentguard_otel import AgentGuardInstrumentor
from agentguard_otel.console.server import Console, ConsoleServer
from agentguard_otel.demo.server import DemoServer
from agentguard_otel.errors import AgentGuardBlocked
from agentguard_otel.policy import load_policy
from agentguard_otel.receipts import SigningKey, load_public_keys
from agentguard_otel.scope import scope

POLICY = {
    "version": 1, "id": "platform", "mode": "enforce",
    "rules": [
        {"id": "tenant-daily", "per": "tenant", "max_output_tokens": 256,
         "caps": [{"limit_usd": "0.006", "window": "day", "action": "block", "reason": "tenant daily budget"}]},
        {"id": "team-task", "per": ["team", "task"], "max_output_tokens": 256,
         "caps": [{"limit_usd": "0.005", "window": "day", "action": "downgrade", "downgrade_to": "gpt-4o-mini",
                   "reason": "team task budget"}]},
        {"id": "trial", "match": {"tenant": "initech"}, "max_output_tokens": 256,
         "caps": [{"limit_usd": "0.0045", "window": "day", "action": "block", "reason": "trial budget spent"}]},
    ],
}
CALLS = [("initech", "research", "summarize", 9), ("globex", "billing", "invoice", 3),
         ("acme", "search", "rank", 6), ("acme", "support", "triage", 2)]


def main(output: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch, DemoServer() as endpoint:
        root = Path(scratch)
        key = SigningKey.generate(root / "agentguard.key")
        ledger = f"sqlite:///{root / 'ledger.db'}"
        instrumentor = AgentGuardInstrumentor()
        instrumentor.instrument(policy=POLICY, signing_key=str(root / "agentguard.key"), ledger=ledger,
                                receipts=str(root / "receipts"), tracer_provider=TracerProvider())
        client = openai.OpenAI(base_url=endpoint.base_url, api_key="sk-local-demo", max_retries=0)
        for tenant, team, task, count in CALLS:
            with scope(tenant=tenant, team=team, task=task):
                for i in range(count):
                    with contextlib.suppress(AgentGuardBlocked):
                        client.chat.completions.create(model="gpt-4o", messages=[
                            {"role": "user", "content": f"{task} step {i}: " + "context " * 40}])
        instrumentor.uninstrument()
        public = root / "agentguard.key.pub"
        console = Console(ledger=ledger, receipts=[root / "receipts"], keys=load_public_keys([public]),
                          key_pems=[(public.name, public.read_text())], policy=load_policy(POLICY))
        server = ConsoleServer(console, "127.0.0.1", 0, None)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        output.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium")
            page = browser.new_page(viewport={"width": 1280, "height": 800}, device_scale_factor=1)
            page.goto(server.url)
            page.screenshot(path=str(output / "console.png"), full_page=True)
            page.goto(server.url + "decisions?limit=12")
            page.screenshot(path=str(output / "console-decisions.png"), full_page=True)
            page.goto(server.url + "receipts?kind=decision&limit=6")
            for row in range(2):
                page.locator("tr[data-receipt] button.verify").nth(row).click()
            page.wait_for_function("document.querySelectorAll('td.browser[data-verdict=ok]').length === 2")
            page.screenshot(path=str(output / "console-receipts.png"), full_page=True)
            browser.close()
        server.shutdown()
        server.server_close()
        print(f"wrote console.png, console-decisions.png and console-receipts.png to {output} (key {key.key_id})")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs"))
