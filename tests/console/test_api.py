"""The console's JSON API and pages over real HTTP (its server on 127.0.0.1), on a ledger and receipts
filled by real guarded openai calls; figures checked against the ledger and ``agentguard spend``."""

from __future__ import annotations

import http.client
import json
import os
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentguard_otel.cli import main
from agentguard_otel.console.server import ConsoleServer
from agentguard_otel.console.usage import parse_key, usd
from agentguard_otel.errors import AgentGuardError
from agentguard_otel.guard import counter_key
from agentguard_otel.money import format_usd
from agentguard_otel.policy import load_policy
from agentguard_otel.scope import Scope
from tests.console.support import XSS_TENANT, Filled, console_for, fill, serving, tampered_copy
from tests.redis_server import shared_server


def get(server: ConsoleServer, path: str, headers: dict[str, str] | None = None,
        method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=60)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def api(server: ConsoleServer, path: str) -> Any:
    status, headers, body = get(server, path)
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    return json.loads(body, parse_float=Decimal)  # the USD figures' exact decimal text


def exact_usd(nano: int) -> Decimal:
    return Decimal(nano).scaleb(-9)


def test_usage_equals_the_ledger_and_spend_json(filled: Filled, capsys: pytest.CaptureFixture[str]) -> None:
    states = {s.key: s for s in filled.guarded.guard.ledger.states()}
    with serving(console_for(filled)) as server:
        usage = api(server, "/api/usage")
    assert main(["spend", "--ledger", filled.ledger_url, "--json"]) == 0
    spend = {row["counter"]: row for row in json.loads(capsys.readouterr().out)}
    assert usage["tenant"] is None
    assert {c["counter"] for c in usage["counters"]} == set(states) == set(spend)
    assert len(states) == 12  # the blocked call made no counter of its team
    for counter in usage["counters"]:
        state, row = states[counter["counter"]], spend[counter["counter"]]
        assert (counter["spent_nano"], counter["held_nano"], counter["limit_nano"]) == \
            (state.spent_nano, state.held_nano, state.limit_nano) == \
            (row["spent_nano"], row["held_nano"], row["limit_nano"])
        assert counter["spent_usd"] == exact_usd(state.spent_nano)
        assert counter["held_usd"] == exact_usd(state.held_nano)
        assert counter["limit_usd"] == exact_usd(state.limit_nano)
        assert counter["window_start"] == row["window_start"]
        assert counter["state"] == row["state"]
        assert counter["window"] == state.window
        assert counter["utilization"] == Decimal(repr((state.spent_nano + state.held_nano) / state.limit_nano))
    acme = next(c for c in usage["counters"] if c["counter"] == "tenant-daily#0|tenant=acme")
    # acme: one gpt-4o call and three downgraded to gpt-4o-mini, each settled at its actual cost.
    assert acme["spent_nano"] == 265_000 + 3 * 15_900 and acme["rule_id"] == "tenant-daily"
    assert acme["window"] == "day" and acme["limit_usd"] == Decimal("0.0012") and acme["state"] == "active"
    # globex's third call was refused by the tenant cap; acme's team was downgraded past its cap.
    assert next(c["state"] for c in usage["counters"] if c["counter"] == "tenant-daily#0|tenant=globex") == "stopped"
    assert next(c["state"] for c in usage["counters"]
                if c["counter"] == "team-task#0|team=search|task=rank") == "degraded"
    rolling = next(c for c in usage["counters"] if c["counter"] == "team-task#1|team=search|task=rank")
    assert rolling["window"] == "month" and rolling["window_start"] is None


def test_usage_of_a_redis_ledger_equals_its_states(guarded: Any, server: Any, tmp_path: Path) -> None:
    url = shared_server().url(prefix=f"console-{tmp_path.name}:")
    filled = fill(guarded, server, ledger=url)
    states = {s.key: s for s in filled.guarded.guard.ledger.states()}
    with serving(console_for(filled)) as running:
        usage = api(running, "/api/usage")
        globex = api(running, "/api/usage?tenant=globex")
    assert len(states) == 12
    assert {c["counter"]: (c["spent_nano"], c["held_nano"], c["limit_nano"], c["window"])
            for c in usage["counters"]} == {
        key: (s.spent_nano, s.held_nano, s.limit_nano, s.window) for key, s in states.items()}
    assert [c["spent_usd"] for c in globex["counters"]] == [exact_usd(2 * 265_000)]


def test_usage_of_a_tenant_is_its_keys_tenant_part(filled: Filled) -> None:
    with serving(console_for(filled)) as server:
        acme = api(server, "/api/usage?tenant=acme")
        marked = api(server, "/api/usage?tenant=" + quote(XSS_TENANT, safe=""))
        nobody = api(server, "/api/usage?tenant=initech")
    assert acme["tenant"] == "acme"
    assert [c["counter"] for c in acme["counters"]] == ["tenant-daily#0|tenant=acme"]
    assert acme["counters"][0]["scope"] == {"tenant": "acme"}
    # The key escapes the separators in caller text; the tenant is matched on the unescaped value.
    assert [c["scope"]["tenant"] for c in marked["counters"]] == [XSS_TENANT]
    assert nobody == {"tenant": "initech", "counters": []}


def blocks_trace(written: list[dict[str, Any]]) -> str:
    trace: str = next(r["trace_id"] for r in written if r.get("action") == "block")
    return trace


def test_receipts_newest_first_filtered_with_verdicts(filled: Filled) -> None:
    written = filled.guarded.receipts()
    with serving(console_for(filled)) as server:
        everything = api(server, f"/api/receipts?limit={len(written) + 5}")["receipts"]
        blocks = api(server, "/api/receipts?action=block")["receipts"]
        acme_settled = api(server, "/api/receipts?tenant=acme&kind=settlement&limit=2")["receipts"]
        bad_limit = get(server, "/api/receipts?limit=0")
        bad_kind = get(server, "/api/receipts?kind=invoice")
        traced = api(server, "/api/receipts?limit=100&trace=" + blocks_trace(written).upper())["receipts"]
        bad_trace = get(server, "/api/receipts?trace=1234")
    assert [r["ts"] for r in everything] == sorted((r["ts"] for r in written), reverse=True)
    assert [r["call_id"] for r in everything] == [r["call_id"] for r in reversed(written)]
    assert {r["verification"]["status"] for r in everything} == {"ok"}
    assert [(r["action"], r["scope"]["tenant"], r["reason"]) for r in blocks] == \
        [("block", "globex", "tenant daily budget spent")]
    assert blocks[0]["estimated_usd"] == exact_usd(817_500) and blocks[0]["actual_usd"] is None
    assert blocks[0]["trace_id"] == next(r["trace_id"] for r in written if r.get("action") == "block")
    assert [r["kind"] for r in acme_settled] == ["settlement", "settlement"]
    assert [r["actual_usd"] for r in acme_settled] == [exact_usd(15_900)] * 2
    assert bad_limit[0] == 400 and b"limit must be a whole number" in bad_limit[2]
    assert bad_kind[0] == 400 and b"kind must be one of" in bad_kind[2]
    assert len(traced) == len(written) and {r["trace_id"] for r in traced} == {blocks_trace(written)}
    assert bad_trace[0] == 400 and b"trace must be a trace id of 32 hex digits" in bad_trace[2]


def test_a_tampered_receipt_is_bad_and_its_chain_after_it_unverified(filled: Filled, tmp_path: Path) -> None:
    segment = tampered_copy(filled.receipts, tmp_path / "copy", 3, '"action":"downgrade"', '"action":"allow"')
    with serving(console_for(filled, tmp_path / "copy")) as server:
        found = api(server, "/api/receipts?limit=100")["receipts"]
        status, _, page = get(server, "/receipts?limit=100")
    by_line = {r["line"]: r["verification"] for r in found if r["file"] == str(segment)}
    assert by_line[1] == by_line[2] == {"status": "ok", "reason": None}
    assert by_line[3] == {"status": "bad", "reason": "hash mismatch: the receipt was edited"}
    assert by_line[4] == {"status": "unverified", "reason": f"after the chain's failure at {segment}:3"}
    assert status == 200
    assert b'data-status="bad"' in page and b"hash mismatch: the receipt was edited" in page


def test_decisions_join_their_settlement_and_filter_by_scope_and_action(filled: Filled) -> None:
    with serving(console_for(filled)) as server:
        status, _, body = get(server, "/decisions?tenant=acme&action=downgrade")
        _, _, blocked = get(server, "/decisions?team=billing")
    page = body.decode()
    assert status == 200
    assert page.count("<tr data-call=") == 3
    assert page.count("gpt-4o → gpt-4o-mini") == 3 and "team task budget: downgraded to gpt-4o-mini" in page
    assert page.count(f'data-field="estimated">{format_usd(48_900)}<') == 3
    assert page.count(f'data-field="actual">{format_usd(15_900)}<') == 3
    assert blocked.decode().count("<tr data-call=") == 1 and b"tenant daily budget spent" in blocked
    assert b'data-field="actual">-<' in blocked  # a blocked call has no cost


def test_caller_text_is_escaped_everywhere(filled: Filled) -> None:
    with serving(console_for(filled)) as server:
        pages = [get(server, path)[2].decode() for path in ("/", "/decisions", "/receipts")]
    for page in pages:
        assert "<img src=x" not in page and '<script>document.title="owned"' not in page
        assert "&lt;img src=x onerror=&quot;document.title=&#x27;owned&#x27;&quot;&gt;" in page


def test_pages_are_self_contained_with_a_csp(filled: Filled) -> None:
    with serving(console_for(filled)) as server:
        for path in ("/", "/decisions", "/receipts", "/verify"):
            status, headers, body = get(server, path)
            assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
            csp = headers["content-security-policy"]
            assert csp.startswith("default-src 'none'; script-src ") and "frame-ancestors 'none'" in csp
            assert "unsafe-inline" not in csp
            assert b"http://" not in body and b"https://" not in body and b" src=" not in body.replace(
                b"&lt;img src=x", b"")
        assert get(server, "/verify")[2].startswith(b"<!DOCTYPE html>")


def test_get_only_and_own_host_only(filled: Filled) -> None:
    with serving(console_for(filled)) as server:
        assert get(server, "/api/usage", method="POST")[0] == 405
        assert get(server, "/api/usage", method="DELETE")[0] == 405
        assert get(server, "/api/usage", {"Host": "attacker.example"})[0] == 421
        for site in ("cross-site", "same-site"):  # another site's page, through the user's browser
            assert get(server, "/api/usage", {"Sec-Fetch-Site": site})[0] == 403
        assert get(server, "/api/usage", {"Sec-Fetch-Site": "same-origin"})[0] == 200
        assert get(server, "/api/usage", {"Host": f"localhost:{server.server_address[1]}"})[0] == 200
        assert get(server, "/nothing")[0] == 404


def test_auth_token_on_every_request(filled: Filled) -> None:
    with serving(console_for(filled), token="s3cret-token") as server:
        assert get(server, "/api/usage")[0] == 401
        assert get(server, "/api/usage", {"Authorization": "Bearer wrong"})[0] == 401
        assert get(server, "/api/usage?token=s3cret-token")[0] == 401  # the API takes the header only
        assert get(server, "/api/usage", {"Authorization": "Bearer s3cret-token"})[0] == 200
        assert get(server, "/")[0] == 401
        status, _, page = get(server, "/?token=s3cret-token")
        assert status == 200 and b'href="/receipts?token=s3cret-token"' in page
        assert get(server, "/receipts", {"Authorization": "Bearer s3cret-token"})[0] == 200
    with pytest.raises(AgentGuardError, match="only with --auth-token"):
        ConsoleServer(console_for(filled), "0.0.0.0", 0, None)


def _snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {str(path.relative_to(directory)): (path.read_bytes(), path.stat().st_mtime_ns)
            for path in sorted(directory.rglob("*")) if path.is_file()}


def test_serve_never_writes_the_ledger_or_the_receipts(filled: Filled) -> None:
    home = filled.ledger_path.parent
    filled.guarded.instrumentor.uninstrument()  # the guard closes its ledger: no -wal is left beside it
    before = _snapshot(home)
    assert filled.ledger_path.name in before and not any(name.endswith("-wal") for name in before)
    with serving(console_for(filled)) as server:
        for path in ("/", "/decisions", "/receipts?limit=500", "/api/usage", "/api/usage?tenant=acme",
                     "/api/receipts", "/verify"):
            assert get(server, path)[0] == 200
    assert _snapshot(home) == before


def test_serve_reads_a_ledger_in_use_without_writing_it(filled: Filled) -> None:
    """While the guard has the ledger open (WAL), the console reads through it; the database file,
    its WAL and the receipts keep their bytes and times (only SQLite's shared-memory index is shared)."""
    home = filled.ledger_path.parent
    wal = filled.ledger_path.with_name(filled.ledger_path.name + "-wal")
    assert wal.exists()
    watched = [filled.ledger_path, wal, *sorted(filled.receipts.glob("*"))]
    before = [(path.read_bytes(), path.stat().st_mtime_ns) for path in watched]
    with serving(console_for(filled)) as server:
        usage = api(server, "/api/usage?tenant=globex")
        api(server, "/api/receipts")
    assert [(path.read_bytes(), path.stat().st_mtime_ns) for path in watched] == before
    assert sorted(p.name for p in home.iterdir() if p.name.startswith("ledger.db")) == \
        ["ledger.db", "ledger.db-shm", "ledger.db-wal"]
    assert usage["counters"][0]["spent_nano"] == 2 * 265_000


@given(st.integers(min_value=0, max_value=10**15 - 1))
def test_usd_is_the_exact_decimal_of_nano_usd(nano: int) -> None:
    assert Decimal(repr(usd(nano))) == Decimal(nano).scaleb(-9)


_VALUES = st.one_of(st.none(), st.text(min_size=1, max_size=12))


@given(st.fixed_dictionaries({"tenant": _VALUES, "team": _VALUES, "task": _VALUES}), st.integers(0, 5))
def test_a_counter_key_reads_back_as_its_rule_cap_and_scope(values: dict[str, str | None], index: int) -> None:
    policy = load_policy({"version": 1, "id": "p", "rules": [{"id": "r.1-a", "per": ["tenant", "team", "task"],
                                                               "caps": [{"limit_usd": 1, "window": "day"}]}]})
    key = counter_key(policy.rules[0], index, Scope(**values))
    assert parse_key(key) == ("r.1-a", index, values)


def test_serve_command_prints_its_url_and_answers(filled: Filled, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    env = {"PATH": os.environ["PATH"], "AGENTGUARD_HOME": str(tmp_path / "home")}
    process = subprocess.Popen(
        [sys.executable, "-m", "agentguard_otel.cli", "serve", "--port", "0", "--ledger", filled.ledger_url,
         "--receipts", str(filled.receipts), "--public-key", str(filled.public_key)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("agentguard console: http://127.0.0.1:") and "read-only" in line
        url = urlsplit(line.split()[2])
        connection = http.client.HTTPConnection("127.0.0.1", url.port, timeout=60)
        connection.request("GET", "/api/usage?tenant=acme")
        body = json.loads(connection.getresponse().read())
        connection.close()
        assert [c["spent_nano"] for c in body["counters"]] == [265_000 + 3 * 15_900]
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 0
    assert "GET /api/usage 200" in err and "tenant=acme" not in err  # no query string in the log


def test_serve_command_refuses_an_open_address_without_a_token(filled: Filled,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--host", "0.0.0.0", "--port", "0", "--ledger", filled.ledger_url,
                 "--receipts", str(filled.receipts), "--public-key", str(filled.public_key)]) == 2
    assert "only with --auth-token" in capsys.readouterr().err
    assert main(["serve", "--port", "0", "--ledger", "memory://", "--public-key", str(filled.public_key),
                 "--receipts", str(filled.receipts / "missing")]) == 2
    assert "no such receipts file or directory" in capsys.readouterr().err
