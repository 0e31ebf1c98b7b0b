"""The console's HTML: self-contained pages (inline style and script, nothing fetched), every value
from a ledger key or a receipt escaped, a Content-Security-Policy that allows exactly their inline
script and style (by SHA-256) and nothing else.

Stable hooks for tests and scripts: counter rows ``tr[data-counter]`` with cells ``td[data-field]``,
decision rows ``tr[data-call]``, receipt rows ``tr[data-receipt]`` whose ``td.server`` has
``data-status`` (the server's verdict) and whose ``td.browser`` gets ``data-verdict`` ``ok``/``bad``
once the receipt's button verified it in the browser.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from urllib.parse import urlencode

from agentguard_otel.console.records import Call, Entry, Status
from agentguard_otel.console.usage import Counter, by_tenant
from agentguard_otel.money import format_usd
from agentguard_otel.receipts.page import verifier_script

ACTIONS = ("allow", "downgrade", "block", "shadow")
KINDS = ("decision", "settlement", "adjustment", "checkpoint")
SCOPE_FILTERS = ("tenant", "team", "user", "agent", "task")

_STYLE = """
:root { color-scheme: light; --ink: #1d232b; --muted: #5b6675; --line: #d9dee5; --ok: #18794e; --bad: #c4232d;
        --warn: #a35b00; --accent: #2f5bd3; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink);
       background: #f6f7f9; }
header { background: #161b22; color: #fff; padding: 10px 24px; display: flex; gap: 24px; align-items: baseline; }
header strong { font-size: 16px; }
header nav a { color: #c9d4e3; margin-right: 16px; text-decoration: none; }
header nav a[aria-current="page"] { color: #fff; border-bottom: 2px solid #6ea1ff; }
main { padding: 16px 24px 40px; max-width: 1400px; }
h1 { font-size: 20px; margin: 8px 0 12px; }
h2 { font-size: 15px; margin: 22px 0 8px; }
table { border-collapse: collapse; width: 100%; background: #fff; border: 1px solid var(--line); }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: #eef1f5; font-weight: 600; font-size: 12px; color: var(--muted); }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12px; }
meter { width: 120px; }
.muted { color: var(--muted); }
.tag { display: inline-block; padding: 0 6px; border-radius: 3px; font-size: 12px; font-weight: 600; }
.a-allow, .s-ok { background: #ddf4e4; color: var(--ok); }
.a-downgrade, .a-shadow, .s-unverified { background: #fff0d6; color: var(--warn); }
.a-block, .s-bad, .b-stopped { background: #fde2e2; color: var(--bad); }
.b-warned, .b-degraded { background: #fff0d6; color: var(--warn); }
.b-active { color: var(--muted); }
form.filters { display: flex; flex-wrap: wrap; gap: 8px; align-items: end; margin: 0 0 12px; }
form.filters label { display: flex; flex-direction: column; font-size: 12px; color: var(--muted); }
form.filters input, form.filters select { font: inherit; padding: 3px 6px; min-width: 110px; }
button { font: inherit; padding: 2px 10px; cursor: pointer; white-space: nowrap; }
td.time { white-space: nowrap; }
td.browser[data-verdict="ok"] { color: var(--ok); }
td.browser[data-verdict="bad"] { color: var(--bad); }
details pre { white-space: pre-wrap; word-break: break-all; max-width: 900px; }
footer { color: var(--muted); font-size: 12px; padding: 0 24px 24px; }
"""

_CONSOLE_SCRIPT = r"""
(function () {
  "use strict";
  const V = globalThis.AgentGuardVerify;
  const encoder = new TextEncoder();
  const pems = JSON.parse(document.getElementById("trusted-keys").textContent);
  const keys = V.loadKeys(pems.map((k) => ({ name: k.name, bytes: encoder.encode(k.pem) })));
  document.querySelectorAll("button.verify").forEach((button) => {
    button.addEventListener("click", async () => {
      const row = button.closest("tr");
      const cell = row.querySelector("td.browser");
      cell.removeAttribute("data-verdict");
      cell.textContent = "verifying…";
      try {
        const result = await V.verifyReceiptLine(V.base64Decode(row.dataset.line), await keys);
        cell.dataset.verdict = result.ok ? "ok" : "bad";
        cell.textContent = (result.ok ? "✓ " : "✗ ") + result.reason;
      } catch (exc) {
        cell.dataset.verdict = "bad";
        cell.textContent = "✗ " + (exc && exc.message ? exc.message : String(exc));
      }
    });
  });
})();
"""


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)


def csp_for(page: str) -> str:
    """A policy allowing exactly the page's inline ``<script>`` and ``<style>`` blocks, nothing else
    (no fetch, no frame, no form posted elsewhere)."""
    found: dict[str, list[str]] = {"script": [], "style": []}
    for tag, body in _INLINE.findall(page):
        found[tag].append(_csp_hash(body))
    script = " ".join(found["script"]) or "'none'"
    style = " ".join(found["style"]) or "'none'"
    return (f"default-src 'none'; script-src {script}; style-src {style}; img-src data:; base-uri 'none'; "
            "form-action 'self'; frame-ancestors 'none'")


def esc(value: object) -> str:
    """Text from anywhere (a ledger key, a receipt, a query) as inert HTML, quotes included."""
    return escape("" if value is None else str(value), quote=True)


def _tag(value: str | None, prefix: str) -> str:
    if not value:
        return ""
    css = f"{prefix}-{value}" if re.fullmatch(r"[a-z]+", value) else ""
    return f'<span class="tag {css}">{esc(value)}</span>'


def _usd(nano: int | None) -> str:
    return "-" if nano is None else esc(format_usd(nano))


def layout(title: str, current: str, body: str, *, token: str | None, footer: str,
           script: str | None = None) -> str:
    """A whole page; ``token`` (from ``?token=``) is carried on the console's own links."""
    links = [("/", "Spend"), ("/decisions", "Decisions"), ("/receipts", "Receipts"), ("/verify", "Verify page")]
    suffix = "?" + urlencode({"token": token}) if token else ""
    nav = "".join(f'<a href="{path}{esc(suffix)}"{" aria-current=page" if path == current else ""}>{name}</a>'
                  for path, name in links)
    scripts = f"<script>{script}</script>" if script else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)} · agentguard</title><style>{_STYLE}</style></head><body>"
            f"<header><strong>agentguard console</strong><nav>{nav}</nav></header>"
            f"<main><h1>{esc(title)}</h1>{body}</main><footer>{footer}</footer>{scripts}</body></html>")


def _scope_text(scope: Mapping[str, str | None], skip: Iterable[str] = ()) -> str:
    shown = [f"{name}={value}" for name, value in scope.items() if value is not None and name not in skip]
    return esc(" ".join(shown)) if shown else '<span class="muted">-</span>'


def spend_body(found: list[Counter]) -> str:
    """Spend per tenant (counters whose key names the tenant), then per rule for rules not per tenant."""
    if not found:
        return '<p class="muted">No spend recorded in the current windows.</p>'
    parts = []
    for tenant, rule, group in by_tenant(found):
        heading = f"Tenant {esc(tenant)}" if tenant is not None else f"Rule {esc(rule)} (not per tenant)"
        rows = []
        for c in group:
            s = c.state
            used = c.utilization
            start = s.window_start.isoformat(timespec="minutes") if s.window_start else "rolling"
            meter = (f'<meter min="0" max="1" low="0.8" high="0.95" optimum="0" value="{min(used, 1.0):.4f}">'
                     f"</meter> {used:.1%}" if used is not None else "-")
            cap = f" {_tag(c.action, 'a')}" if c.action else ""
            rows.append(
                f'<tr data-counter="{esc(s.key)}" data-tenant="{esc(tenant or "")}">'
                f'<td data-field="scope">{_scope_text(c.scope, ("tenant",))}</td>'
                f'<td data-field="rule_id">{esc(c.rule_id or s.key)}'
                f'{"" if c.cap_index is None else f" #{c.cap_index}"}{cap}</td>'
                f'<td data-field="window">{esc(s.window or "")} <span class="muted">{esc(start)}</span></td>'
                f'<td class="num" data-field="spent_usd">{_usd(s.spent_nano)}</td>'
                f'<td class="num" data-field="held_usd">{_usd(s.held_nano)}</td>'
                f'<td class="num" data-field="limit_usd">{_usd(s.limit_nano)}</td>'
                f'<td class="num" data-field="utilization">{meter}</td>'
                f'<td data-field="state">{_tag(c.budget, "b")}</td></tr>')
        parts.append(f"<h2>{heading}</h2><table><thead><tr><th>scope</th><th>rule, cap</th><th>window</th>"
                     "<th>spent</th><th>held</th><th>limit</th><th>used (spent + held)</th><th>state</th></tr></thead>"
                     f"<tbody>{''.join(rows)}</tbody></table>")
    return "".join(parts)


def _filters(action: str, query: Mapping[str, str], fields: Sequence[str], choices: Mapping[str, Sequence[str]],
             token: str | None) -> str:
    inputs = [f'<label>{name}<input name="{name}" value="{esc(query.get(name, ""))}"></label>' for name in fields]
    for name, options in choices.items():
        picked = query.get(name, "")
        opts = "".join(f'<option value="{esc(o)}"{" selected" if o == picked else ""}>{esc(o or "any")}</option>'
                       for o in ("", *options))
        inputs.append(f'<label>{name}<select name="{name}">{opts}</select></label>')
    inputs.append(f'<label>limit<input name="limit" type="number" min="1" value="{esc(query.get("limit", ""))}">'
                  "</label>")
    hidden = f'<input type="hidden" name="token" value="{esc(token)}">' if token else ""
    return (f'<form class="filters" method="get" action="{action}">{"".join(inputs)}{hidden}'
            "<button>Filter</button></form>")


def _status(status: Status) -> str:
    reason = f' <span class="muted">{esc(status["reason"])}</span>' if status["reason"] else ""
    return f'{_tag(status["status"], "s")}{reason}'


def decisions_body(found: list[tuple[Call, Status]], query: Mapping[str, str], token: str | None) -> str:
    form = _filters("/decisions", query, (*SCOPE_FILTERS, "trace"), {"action": ACTIONS}, token)
    if not found:
        return form + '<p class="muted">No decisions match.</p>'
    rows = []
    for call, status in found:
        d = call.decision
        requested, effective = d.text("model_requested"), d.text("model_effective")
        model = esc(requested) + (f" → {esc(effective)}" if effective and effective != requested else "")
        rows.append(
            f'<tr data-call="{esc(d.text("call_id") or "")}">'
            f'<td class="mono time">{esc(d.text("ts"))}</td><td>{_scope_text(d.scope)}</td>'
            f'<td data-field="action">{_tag(d.text("action"), "a")}</td><td data-field="model">{model}</td>'
            f'<td data-field="reason">{esc(d.text("reason"))}</td>'
            f'<td class="num" data-field="estimated">{_usd(d.nano("estimated_nano"))}</td>'
            f'<td class="num" data-field="actual">{_usd(call.actual_nano)}</td>'
            f'<td data-field="status">{_status(status)}</td></tr>')
    return (form + "<table><thead><tr><th>time (UTC)</th><th>scope</th><th>action</th><th>model requested → "
            "effective</th><th>reason</th><th>estimated</th><th>actual</th><th>receipt</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def chains_body(reports: list[tuple[str, Status, int]]) -> str:
    """One line per chain: its files' stem, the verifier's verdict, how many receipts."""
    rows = "".join(f'<tr data-chain="{esc(name)}"><td class="mono">{esc(name)}</td><td class="num">{count}</td>'
                   f"<td>{_status(status)}</td></tr>" for name, status, count in reports)
    return ("<h2>Chains (verified whole, server-side, with the trusted keys)</h2><table><thead><tr><th>chain files"
            f"</th><th>receipts</th><th>verdict</th></tr></thead><tbody>{rows}</tbody></table>")


def receipts_body(found: list[tuple[Entry, Status]], chains: str, query: Mapping[str, str],
                  token: str | None) -> str:
    form = _filters("/receipts", query, ("tenant", "trace"), {"kind": KINDS, "action": ACTIONS}, token)
    rows = []
    for entry, status in found:
        line = base64.b64encode(entry.raw).decode("ascii")
        detail = esc(entry.raw.decode("utf-8", "replace").rstrip("\n"))
        rows.append(
            f'<tr data-receipt="{esc(entry.text("chain"))}:{esc(entry.integer("seq"))}" data-line="{line}">'
            f'<td class="mono time">{esc(entry.text("ts"))}</td><td>{esc(entry.text("kind"))}</td>'
            f'<td class="num">{esc(entry.integer("seq"))}</td>'
            f'<td>{_tag(entry.text("action") or entry.text("outcome"), "a")}</td>'
            f"<td>{_scope_text(entry.scope)}</td>"
            f'<td class="mono">{_trace_link(entry.trace_id, token)}</td>'
            f'<td class="server" data-status="{esc(status["status"])}">{_status(status)}</td>'
            f'<td><button class="verify" type="button">verify here</button></td><td class="browser"></td>'
            f"<td><details><summary>line</summary><pre>{detail}</pre></details></td></tr>")
    table = ("<h2>Receipts, newest first</h2><table><thead><tr><th>time (UTC)</th><th>kind</th><th>seq</th>"
             "<th>action</th><th>scope</th><th>trace id</th><th>server verdict</th><th></th>"
             f"<th>in this browser</th><th></th></tr></thead><tbody>{''.join(rows)}</tbody></table>")
    return form + chains + (table if rows else '<p class="muted">No receipts match.</p>')


def _trace_link(trace_id: str | None, token: str | None) -> str:
    """A trace id (32 hex digits, checked by the reader) linked to its receipts."""
    if trace_id is None:
        return ""
    query = urlencode({"trace": trace_id, **({"token": token} if token else {})})
    return f'<a href="/receipts?{esc(query)}">{esc(trace_id)}</a>'


def keys_block(pems: Sequence[tuple[str, str]]) -> str:
    """The trusted public keys (PEM text, nothing secret) for the in-browser verifier, as a JSON data
    block (never executed; ``<`` escaped so no text ends the block)."""
    data = json.dumps([{"name": name, "pem": pem} for name, pem in pems]).replace("<", "\\u003c")
    return f'<script type="application/json" id="trusted-keys">{data}</script>'


def receipts_script() -> str:
    """The verifier and the buttons that run it on a row's line."""
    return verifier_script() + "\n" + _CONSOLE_SCRIPT
