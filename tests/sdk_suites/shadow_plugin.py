"""pytest plugin for the shadow run of an SDK's own suite (``-p shadow_plugin``, this folder on
PYTHONPATH): agentguard instruments the process in shadow mode before the suite's conftest imports
the SDK, and uninstruments at the session's end.

Shadow mode with no rules admits every call unchanged by policy, so an SDK test that behaves
differently here than in the plain run shows a difference the guard itself makes.

At the session's end each process (the xdist controller and every worker) writes what it saw to
``$SDK_SUITES_SHADOW_REPORT.<worker>.json``: whether the SDK was patched, how many calls the guard
decided and settled, and whether the signed receipts verify.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

POLICY = {"version": 1, "id": "shadow", "mode": "shadow", "rules": []}
SDKS = ("openai", "anthropic")

_state: dict[str, Any] = {}


def _instrument() -> None:
    if _state:
        return
    home = Path(tempfile.mkdtemp(prefix="agentguard-shadow-"))
    os.environ["AGENTGUARD_HOME"] = str(home)
    already = [name for name in SDKS if name in sys.modules]
    # imported here, not at module level: nothing of agentguard is loaded before this point
    from agentguard_otel import AgentGuardInstrumentor
    from agentguard_otel.receipts import SigningKey

    key = home / "k"
    SigningKey.generate(key)
    instrumentor = AgentGuardInstrumentor()
    instrumentor.instrument(policy=POLICY, ledger="memory://", signing_key=str(key),
                            receipts=str(home / "receipts"))
    _state.update(instrumentor=instrumentor, home=home, key=key, imported_before=already, patched={})


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    """Runs before the suite's conftest.py files are imported (and so before the SDK is)."""
    _instrument()


def pytest_configure(config: pytest.Config) -> None:
    _instrument()  # where the hook above did not run (it always should): instrument all the same
    ours = Path(__file__).resolve().parents[1] / "conftest.py"  # the agentguard repo's tests/conftest.py
    loaded = [getattr(p, "__file__", None) for p in config.pluginmanager.get_plugins()]
    if any(f is not None and Path(f).resolve() == ours for f in loaded):
        raise pytest.UsageError(f"{ours} was loaded into an SDK's suite: run from the SDK's source tree")


def _patched(module_name: str) -> bool | None:
    base = sys.modules.get(f"{module_name}._base_client")
    if base is None:
        return None
    return all(hasattr(vars(getattr(base, cls)).get("request"), "__wrapped__")  # a wrapt wrapper
               for cls in ("SyncAPIClient", "AsyncAPIClient"))


def pytest_collection_finish(session: pytest.Session) -> None:
    _state["patched"] = {name: _patched(name) for name in SDKS}


def _receipt_counts(receipts: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Receipts by kind, and the decided calls that never settled, by operation and streaming."""
    counts: dict[str, int] = {}
    decided: dict[str, str] = {}
    settled: set[str] = set()
    for path in receipts.glob("*.ndjson"):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                receipt = json.loads(line)
                kind = receipt.get("kind", "?")
                counts[kind] = counts.get(kind, 0) + 1
                body = receipt.get("body", receipt)
                call_id = body.get("call_id") if isinstance(body, dict) else None
                if kind == "decision" and call_id:
                    decided[call_id] = f"{body.get('operation')} stream={body.get('stream')}"
                elif kind == "settlement" and call_id:
                    settled.add(call_id)
    unsettled: dict[str, int] = {}
    for call_id, what in decided.items():
        if call_id not in settled:
            unsettled[what] = unsettled.get(what, 0) + 1
    return counts, unsettled


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # here, not in pytest_unconfigure: an xdist worker may be ended soon after its session finishes
    _finish()


def pytest_unconfigure(config: pytest.Config) -> None:
    _finish()  # a session that never finished (a usage error) is uninstrumented all the same


def _finish() -> None:
    if not _state:
        return
    instrumentor = _state.pop("instrumentor")
    home: Path = _state["home"]
    patched_at_end = {name: _patched(name) for name in SDKS}
    instrumentor.uninstrument()
    from agentguard_otel.receipts import load_public_keys, verify

    receipts = home / "receipts"
    report = verify([receipts], load_public_keys([Path(f"{_state['key']}.pub")])) if receipts.exists() else None
    counts, unsettled = _receipt_counts(receipts) if receipts.exists() else ({}, {})
    summary = {
        "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"),
        "sdk_imported_before_instrument": _state["imported_before"],
        "patched_after_collection": _state["patched"],
        "patched_at_session_end": patched_at_end,
        "unpatched_after_uninstrument": {name: _patched(name) for name in SDKS},
        "receipts": counts,
        "unsettled_calls": unsettled,
        "receipts_verify": None if report is None else bool(report.ok),
        "receipts_first_error": None if report is None or report.ok else str(report.first_error),
    }
    target = os.environ.get("SDK_SUITES_SHADOW_REPORT")
    if target:
        Path(f"{target}.{summary['worker']}.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    shutil.rmtree(home, ignore_errors=True)
    _state.clear()
