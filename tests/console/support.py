"""A ledger and receipt log filled by real guarded calls (the real openai SDK against the local
OpenAI-wire server), and the real console serving them on 127.0.0.1, for the API, CLI and browser tests."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai

from agentguard_otel.console.server import Console, ConsoleServer
from agentguard_otel.errors import AgentGuardBlocked
from agentguard_otel.receipts import load_public_keys
from agentguard_otel.scope import scope

# Caller text in a scope value: the console must show it, inert.
XSS_TENANT = '<img src=x onerror="document.title=\'owned\'"><script>document.title="owned"</script>'

POLICY: dict[str, Any] = {
    "version": 1,
    "id": "console",
    "mode": "enforce",
    "rules": [
        {"id": "tenant-daily", "per": "tenant", "max_output_tokens": 64,
         "caps": [{"limit_usd": "0.0012", "window": "day", "action": "block", "reason": "tenant daily budget spent"}]},
        {"id": "team-task", "per": ["team", "task"], "max_output_tokens": 64,
         "caps": [{"limit_usd": "0.001", "window": "day", "action": "downgrade", "downgrade_to": "gpt-4o-mini",
                   "reason": "team task budget"},
                  {"limit_usd": "0.5", "window": "month", "rolling": True}]},
        {"id": "everyone", "caps": [{"limit_usd": "1", "window": "hour"}]},
    ],
}


@dataclass
class Filled:
    """Where the guarded calls left their ledger and receipts, and the public key that signed them."""

    ledger_url: str
    ledger_path: Path
    receipts: Path
    public_key: Path
    guarded: Any


def fill(guarded: Any, server: Any, tracer: Any | None = None, ledger: str | None = None) -> Filled:
    """Calls in three tenants' scopes: acme's allowed, then downgraded past its team's cap; globex's
    in three teams, the third blocked past the tenant's cap; one from a tenant whose name is markup.
    ``tracer``: the calls run in one span of it; ``ledger``: a URL (default: SQLite in the test's directory)."""
    handle = guarded(POLICY, ledger=ledger)
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-test-secret", max_retries=0)

    def call(prompt: str) -> None:
        with suppress(AgentGuardBlocked):  # the decision receipt records the block
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": prompt}])

    def run() -> None:
        with scope(tenant="acme", team="search", task="rank", user="ann"):
            for i in range(4):
                call(f"rank results {i}")
        for team in ("support", "sales", "billing"):  # the third passes the tenant's cap: blocked
            with scope(tenant="globex", team=team, task="triage", agent="bot"):
                call("triage a ticket")
        with scope(tenant=XSS_TENANT, team="red|team=x%", task="probe"):
            call("hello")

    if tracer is None:
        run()
    else:
        with tracer.start_as_current_span("agent run"):
            run()
    return Filled(ledger or f"sqlite:///{handle.home / 'ledger.db'}", handle.home / "ledger.db",
                  handle.home / "receipts", Path(f"{handle.key_path}.pub"), handle)


def console_for(filled: Filled, receipts: Path | None = None) -> Console:
    key = filled.public_key
    return Console(ledger=filled.ledger_url, receipts=[receipts or filled.receipts],
                   keys=load_public_keys([key]), key_pems=[(key.name, key.read_text())])


@contextmanager
def serving(console: Console, token: str | None = None) -> Iterator[ConsoleServer]:
    """The console's real HTTP server on a free port of 127.0.0.1, in a thread."""
    server = ConsoleServer(console, "127.0.0.1", 0, token)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def tampered_copy(receipts: Path, into: Path, line: int, old: str, new: str) -> Path:
    """A copy of the receipts with ``old`` replaced by ``new`` once on line ``line`` (1-based) of the
    first segment: the original log stays as the guard wrote it."""
    shutil.copytree(receipts, into)
    segment = sorted(into.glob("*.ndjson"))[0]
    lines = segment.read_bytes().splitlines(keepends=True)
    assert old.encode() in lines[line - 1]
    lines[line - 1] = lines[line - 1].replace(old.encode(), new.encode(), 1)
    segment.write_bytes(b"".join(lines))
    return segment
