"""Spend per counter, read from the ledger without writing it, in the shape the console shows.

A SQLite ledger is copied (SQLite's backup API over a read-only connection) into a private temporary
file, and the copy is asked for its ``states()``: the figures are the ledger's own code's (the same as
``agentguard spend``), and the housekeeping ``states()`` does (expired holds, slid-out rolling spend,
ended windows) happens to the copy only. While no process has the ledger open (no ``-wal`` file) the
read is ``immutable`` (no ``-wal``/``-shm`` is created beside it) and repeated should the file change
under it; while one has, the read goes through SQLite's read-only WAL protocol. A Redis ledger has no
such copy: its ``states()`` script is run as ``spend`` runs it, and it drops spend that slid out of a
rolling window and idle keys, what every reservation does anyway (no figure changes).

A counter belongs to a tenant by its key's ``tenant=`` part (``counter_key``: ``rule#index`` then
``|field=value`` for each of the rule's ``per`` fields); the counter of a rule that is not per tenant
belongs to no tenant and is listed under its rule.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from agentguard_otel.errors import ConfigError, LedgerUnavailable
from agentguard_otel.ledger import CounterState, Ledger, SQLiteLedger, open_ledger
from agentguard_otel.ledger.report import counter_states
from agentguard_otel.policy import Policy

_IMMUTABLE_TRIES = 5


def usd(nano: int) -> float:
    """USD for JSON: the double nearest the exact decimal value ``nano`` / 10^9 (Decimal, not a float
    division), whose shortest repr is that decimal's text for every amount below $1,000,000."""
    return float(Decimal(nano).scaleb(-9))


@dataclass(frozen=True)
class Counter:
    """One counter as the console shows it."""

    state: CounterState
    budget: str  # active | warned | degraded | stopped, as agentguard spend shows it
    rule_id: str | None
    cap_index: int | None
    scope: dict[str, str | None]
    action: str | None = None  # the cap's, when a policy was given
    reason: str | None = None

    @property
    def tenant(self) -> str | None:
        return self.scope.get("tenant")

    @property
    def utilization(self) -> float | None:
        """(spent + held) / limit, as ``agentguard spend`` shows it; None for a zero limit."""
        s = self.state
        return (s.spent_nano + s.held_nano) / s.limit_nano if s.limit_nano else None

    def as_json(self) -> dict[str, Any]:
        s = self.state
        return {"counter": s.key, "rule_id": self.rule_id, "window": s.window,
                "window_start": s.window_start.isoformat() if s.window_start else None,
                "spent_usd": usd(s.spent_nano), "held_usd": usd(s.held_nano), "limit_usd": usd(s.limit_nano),
                "utilization": self.utilization, "state": self.budget, "scope": self.scope,
                "spent_nano": s.spent_nano, "held_nano": s.held_nano, "limit_nano": s.limit_nano}


def parse_key(key: str) -> tuple[str | None, int | None, dict[str, str | None]]:
    """``rule#index|field=value...`` -> (rule id, cap index, scope values); a key of another shape is
    (None, None, {}). Values are un-escaped as ``counter_key`` escaped them; an empty value is None."""
    head, *parts = key.split("|")
    rule, sep, index = head.rpartition("#")
    if not sep or not rule or not index.isdigit():
        return None, None, {}
    scope: dict[str, str | None] = {}
    for part in parts:
        name, eq, value = part.partition("=")
        if not eq:
            return None, None, {}
        scope[name] = unquote(value) if value else None
    return rule, int(index), scope


def counters(states: list[tuple[CounterState, str]], policy: Policy | None = None) -> list[Counter]:
    """The ledger's states with their rule, cap and scope read from the key (and the cap's action and
    reason from ``policy``, when it has that rule and cap)."""
    caps = {(rule.id, i): cap for rule in policy.rules for i, cap in enumerate(rule.caps)} if policy else {}
    found = []
    for state, budget in states:
        rule, index, scope = parse_key(state.key)
        cap = caps.get((rule, index)) if rule is not None and index is not None else None
        found.append(Counter(state, budget, rule, index, scope, cap.action if cap else None,
                             cap.reason if cap else None))
    return found


def usage_json(found: list[Counter], tenant: str | None) -> dict[str, Any]:
    """``GET /api/usage``: the counters of ``tenant`` (every counter when None)."""
    picked = found if tenant is None else [c for c in found if c.tenant == tenant]
    return {"tenant": tenant, "counters": [c.as_json() for c in picked]}


def shown_url(url: str) -> str:
    """A ledger URL as the console shows it: without the password a ``redis://`` URL may carry."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def read_states(url: str) -> list[tuple[CounterState, str]]:
    """Every counter's current-window totals and state, without writing the ledger (see the module's
    text): what ``agentguard spend`` reads."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if sep and scheme == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise ConfigError("SQLite ledger URL needs a file path: sqlite:///relative.db or sqlite:////abs/path.db")
        path = Path(rest[1:])
        if not path.is_file():
            raise ConfigError(f"no SQLite ledger at {path.resolve()} (nothing was created)")
        with tempfile.TemporaryDirectory(prefix="agentguard-console-") as scratch:
            copy = Path(scratch) / "ledger.db"
            _copy_sqlite(path.resolve(), copy)
            return _read(SQLiteLedger(copy))
    if sep and scheme == "memory":
        raise ConfigError("a memory:// ledger lives inside its process: serve reads a sqlite:/// or redis:// ledger")
    return _read(open_ledger(url, existing=True))


def _read(ledger: Ledger) -> list[tuple[CounterState, str]]:
    try:
        return counter_states(ledger)
    finally:
        ledger.close()


def _stamp(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


def _copy_sqlite(path: Path, into: Path) -> None:
    wal = path.with_name(path.name + "-wal")
    for _ in range(_IMMUTABLE_TRIES):
        if wal.exists():
            break
        before = _stamp(path)
        _backup(f"{path.as_uri()}?mode=ro&immutable=1", into)
        if _stamp(path) == before:
            return
    _backup(f"{path.as_uri()}?mode=ro", into)


def _backup(uri: str, into: Path) -> None:
    try:
        with closing(sqlite3.connect(uri, uri=True)) as source, closing(sqlite3.connect(into)) as target:
            source.backup(target)
    except sqlite3.Error as exc:
        raise LedgerUnavailable(f"cannot read the SQLite ledger {uri}: {exc}") from exc


def by_tenant(found: list[Counter]) -> Iterator[tuple[str | None, str | None, list[Counter]]]:
    """(tenant, rule, counters) groups for the page: tenants by name, then counters of rules not per
    tenant, one group per rule."""
    tenants: dict[str, list[Counter]] = {}
    rules: dict[str, list[Counter]] = {}
    for counter in found:
        if counter.tenant is not None:
            tenants.setdefault(counter.tenant, []).append(counter)
        else:
            rules.setdefault(counter.rule_id or counter.state.key, []).append(counter)
    for tenant in sorted(tenants):
        yield tenant, None, tenants[tenant]
    for rule in sorted(rules):
        yield None, rule, rules[rule]
