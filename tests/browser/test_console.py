"""The console rendered in the real Chromium: its figures against the ledger, caller markup inert, a
receipt verified in place by the in-browser verifier (and a tampered one refused), the filters."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page

from agentguard_otel.console.server import ConsoleServer
from agentguard_otel.ledger.report import counter_states
from agentguard_otel.money import format_usd
from tests.console.support import XSS_TENANT, Filled, console_for, fill, serving, tampered_copy


@pytest.fixture
def filled(guarded: Any, server: Any, otel: Any) -> Filled:
    return fill(guarded, server, otel.tracer_provider.get_tracer("tests.browser"))


@pytest.fixture
def console(filled: Filled) -> Iterator[ConsoleServer]:
    with serving(console_for(filled)) as running:
        yield running


@pytest.fixture
def watched(page: Page) -> list[str]:
    """Console errors of the page (a CSP refusal shows up here) and any dialog a script opened."""
    seen: list[str] = []
    page.on("console", lambda message: seen.append(message.text) if message.type == "error" else None)
    page.on("dialog", lambda dialog: (seen.append(f"dialog: {dialog.message}"), dialog.dismiss()))
    return seen


def test_spend_page_shows_the_ledgers_figures(page: Page, console: ConsoleServer, filled: Filled,
                                              watched: list[str]) -> None:
    page.goto(console.url)
    states = {s.key: s for s in filled.guarded.guard.ledger.states()}
    budget = {s.key: state for s, state in counter_states(filled.guarded.guard.ledger)}
    rows = page.locator("tr[data-counter]")
    assert rows.count() == len(states) == 12
    for i in range(rows.count()):
        row = rows.nth(i)
        state = states[row.get_attribute("data-counter") or ""]
        cells = {name: row.locator(f'td[data-field="{name}"]').inner_text().strip()
                 for name in ("spent_usd", "held_usd", "limit_usd", "utilization", "window", "state")}
        assert cells["spent_usd"] == format_usd(state.spent_nano)
        assert cells["held_usd"] == format_usd(state.held_nano)
        assert cells["limit_usd"] == format_usd(state.limit_nano)
        assert cells["utilization"] == f"{(state.spent_nano + state.held_nano) / state.limit_nano:.1%}"
        assert cells["window"].split()[0] == state.window
        assert cells["state"] == budget[state.key]
    headings = page.locator("h2").all_inner_texts()
    tenants = sorted(["Tenant acme", "Tenant globex", f"Tenant {XSS_TENANT}"])
    assert headings == [*tenants, "Rule everyone (not per tenant)", "Rule team-task (not per tenant)"]
    acme = page.locator('tr[data-counter="tenant-daily#0|tenant=acme"] td[data-field="spent_usd"]')
    assert acme.inner_text() == format_usd(265_000 + 3 * 15_900)
    # The tenant named in markup is shown as text: no element of it exists, none of its script ran.
    assert page.locator("main img").count() == 0 and page.title() == "Spend per tenant, team and task · agentguard"
    assert watched == []


def test_click_a_receipt_and_it_is_verified_in_place(page: Page, console: ConsoleServer,
                                                     filled: Filled, watched: list[str]) -> None:
    page.goto(console.url + "receipts?limit=100")
    rows = page.locator("tr[data-receipt]")
    assert rows.count() == len(filled.guarded.receipts()) == 15
    assert page.locator('td.server[data-status="ok"]').count() == 15
    for i in range(rows.count()):
        rows.nth(i).locator("button.verify").click()
    # a locator wait, not wait_for_function: the console's CSP refuses the eval that polling needs
    page.locator("td.browser[data-verdict]").nth(14).wait_for()
    assert page.locator('td.browser[data-verdict="ok"]').count() == 15
    assert rows.first.locator("td.browser").inner_text() == "✓ hash and signature verify against a trusted key"
    assert page.locator("tr[data-chain] td").nth(2).inner_text() == "ok"
    page.locator("tr[data-receipt] td a").first.click()  # a trace id: that trace's receipts
    page.wait_for_url("**/receipts?trace=*")
    assert page.locator("tr[data-receipt]").count() == 15  # the fixture's calls all ran in one trace
    assert page.title() == "Receipts and their verification · agentguard" and watched == []


def test_a_tampered_receipt_fails_in_the_browser_too(page: Page, filled: Filled, tmp_path: Path,
                                                     watched: list[str]) -> None:
    tampered_copy(filled.receipts, tmp_path / "copy", 1, '"estimated_nano":815000', '"estimated_nano":15000')
    with serving(console_for(filled, tmp_path / "copy")) as running:
        page.goto(running.url + "receipts?limit=100")
        row = page.locator("tr[data-receipt]").last  # the oldest: the first line of the log
        assert row.locator("td.server").get_attribute("data-status") == "bad"
        row.locator("button.verify").click()
        verdict = row.locator("td.browser[data-verdict]")
        verdict.wait_for()
        assert verdict.get_attribute("data-verdict") == "bad"
        assert verdict.inner_text() == "✗ hash mismatch: the receipt was edited"
        assert page.locator('td.server[data-status="unverified"]').count() == 14
        assert "hash mismatch: the receipt was edited" in page.locator("tr[data-chain]").inner_text()
    assert watched == []


def test_decisions_filtered_by_action_and_scope(page: Page, console: ConsoleServer, watched: list[str]) -> None:
    page.goto(console.url + "decisions")
    assert page.locator("tr[data-call]").count() == 8
    page.select_option('select[name="action"]', "downgrade")
    page.fill('input[name="tenant"]', "acme")
    page.click("form.filters button")
    page.wait_for_url("**/decisions?*action=downgrade*")
    rows = page.locator("tr[data-call]")
    assert rows.count() == 3
    assert set(rows.locator('td[data-field="model"]').all_inner_texts()) == {"gpt-4o → gpt-4o-mini"}
    assert set(rows.locator('td[data-field="estimated"]').all_inner_texts()) == {format_usd(48_900)}
    assert set(rows.locator('td[data-field="actual"]').all_inner_texts()) == {format_usd(15_900)}
    page.goto(console.url + "decisions?tenant=globex")
    assert page.locator('td[data-field="action"]').all_inner_texts() == ["block", "allow", "allow"]
    assert watched == []


def test_verify_page_runs_under_the_servers_policy(page: Page, console: ConsoleServer, watched: list[str]) -> None:
    page.goto(console.url + "verify")
    assert page.locator("#receipts").count() == 1 and page.locator("#verdict").count() == 1
    assert watched == []  # its inline script and style were allowed (no CSP refusal)
