"""Configuration of the instrumentor: arguments, environment, errors at instrument(), entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from agentguard_otel import AgentGuardInstrumentor
from agentguard_otel.config import resolve
from agentguard_otel.errors import ConfigError, PolicyError


def test_entry_point_is_registered() -> None:
    (ep,) = [ep for ep in entry_points(group="opentelemetry_instrumentor") if ep.name == "agentguard"]
    assert ep.load() is AgentGuardInstrumentor


def test_arguments_win_over_environment_and_defaults(tmp_path: Path) -> None:
    env = {"AGENTGUARD_HOME": str(tmp_path), "AGENTGUARD_LEDGER": "memory://", "AGENTGUARD_TEAM": "eng",
           "AGENTGUARD_RECEIPTS": str(tmp_path / "env-receipts")}
    settings = resolve({"receipts": str(tmp_path / "arg-receipts")}, env)
    assert settings.ledger == "memory://"
    assert settings.receipts == tmp_path / "arg-receipts"
    assert settings.signing_key == tmp_path / "agentguard.key"
    assert settings.scope_defaults == {"team": "eng"}
    assert resolve({}, {"AGENTGUARD_HOME": str(tmp_path)}).ledger == f"sqlite:///{tmp_path / 'ledger.db'}"


def test_unknown_argument_is_an_error() -> None:
    with pytest.raises(ConfigError, match="unknown argument"):
        resolve({"polcy": "x.yaml"}, {})


def test_bad_policy_fails_at_instrument_with_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("version: 1\nmode: enforce\nrules:\n  - id: a\n    caps: [{limit_usd: -1, window: day}]\n")
    instrumentor = AgentGuardInstrumentor()
    with pytest.raises(PolicyError) as info:
        instrumentor.instrument(policy=str(bad), ledger="memory://", signing_key=str(tmp_path / "k"),
                                receipts=str(tmp_path / "r"))
    assert (info.value.file, info.value.line) == (str(bad), 5)
    assert instrumentor.guard is None
    from openai._base_client import SyncAPIClient
    assert not hasattr(SyncAPIClient.request, "__wrapped__")


def test_disabled_instrumentations_turns_it_off(tmp_path: Path, server: Any) -> None:
    script = tmp_path / "app.py"
    script.write_text(
        "import openai\n"
        "openai.OpenAI(max_retries=0).chat.completions.create(model='gpt-4o-mini', "
        "messages=[{'role': 'user', 'content': 'hi'}])\n")
    env = {**os.environ, "AGENTGUARD_HOME": str(tmp_path), "OPENAI_BASE_URL": server.base_url,
           "OPENAI_API_KEY": "sk-x", "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none",
           "OTEL_LOGS_EXPORTER": "none"}
    instrument = str(Path(sys.executable).parent / "opentelemetry-instrument")
    for disabled, expect_receipts in (("agentguard", False), ("", True)):
        run = subprocess.run([instrument, sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                             env={**env, "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": disabled}, check=False)
        assert run.returncode == 0, run.stderr
        assert any((tmp_path / "receipts").glob("*.ndjson")) is expect_receipts
