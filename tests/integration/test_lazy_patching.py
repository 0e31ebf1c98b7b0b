"""``instrument()`` imports no SDK and no optional driver: each SDK is patched when the application
imports it, and a driver is imported only when a setting asks for it. Checked in fresh interpreters,
since this test process has imported everything already."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agentguard_otel.cli import main as agentguard
from agentguard_otel.errors import ConfigError
from agentguard_otel.ledger import open_ledger
from agentguard_otel.version import __version__


def _run(tmp_path: Path, code: str) -> subprocess.CompletedProcess[str]:
    prelude = (
        "import sys, wrapt\n"
        "from agentguard_otel import AgentGuardInstrumentor\n"
        "patched = lambda cls, name: isinstance(vars(cls)[name], wrapt.FunctionWrapper)\n"
        f"kw = dict(policy=None, ledger='memory://', signing_key={str(tmp_path / 'k')!r}, "
        f"receipts={str(tmp_path / 'r')!r})\n"
    )
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=120,
                          check=False, cwd=tmp_path)


def test_instrument_imports_no_sdk_and_patches_each_on_import(tmp_path: Path) -> None:
    run = _run(tmp_path, """
AgentGuardInstrumentor().instrument(**kw)
print(sorted(m for m in ("openai", "anthropic", "botocore") if m in sys.modules))
import openai, anthropic, botocore.client
print(patched(openai._base_client.SyncAPIClient, "request"),
      patched(openai._base_client.AsyncAPIClient, "request"),
      patched(anthropic._base_client.SyncAPIClient, "request"),
      patched(botocore.client.BaseClient, "_make_api_call"))
AgentGuardInstrumentor().uninstrument()
print(patched(openai._base_client.SyncAPIClient, "request"),
      patched(botocore.client.BaseClient, "_make_api_call"))
""")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["[]", "True True True True", "False False"]


def test_uninstrument_removes_pending_patches(tmp_path: Path) -> None:
    run = _run(tmp_path, """
AgentGuardInstrumentor().instrument(**kw)
AgentGuardInstrumentor().uninstrument()
import anthropic
print(patched(anthropic._base_client.SyncAPIClient, "request"))
AgentGuardInstrumentor().instrument(**kw)
print(patched(anthropic._base_client.SyncAPIClient, "request"))
""")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["False", "True"]


def test_an_sdk_imported_before_instrument_is_patched_at_once(tmp_path: Path) -> None:
    run = _run(tmp_path, """
import openai
AgentGuardInstrumentor().instrument(**kw)
print(patched(openai._base_client.SyncAPIClient, "request"))
""")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "True"


def test_without_the_redis_driver_only_a_redis_url_fails_and_says_what_to_install(tmp_path: Path) -> None:
    run = _run(tmp_path, """
sys.modules["redis"] = None  # as if the extra were not installed
import agentguard_otel.ledger as ledger
AgentGuardInstrumentor().instrument(**kw)
AgentGuardInstrumentor().uninstrument()
try:
    ledger.open_ledger("redis://127.0.0.1:1/0")
except Exception as exc:
    print(type(exc).__name__, exc)
""")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == ('ConfigError redis:// ledger needs the Redis driver: '
                                  'pip install "agentguard-otel[redis]"')


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        agentguard(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"agentguard-otel {__version__}"


def test_help_is_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        agentguard(["--help"])
    assert "``" not in capsys.readouterr().out


def test_spend_refuses_a_missing_sqlite_ledger_and_creates_nothing(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "typo.db"
    assert agentguard(["spend", "--ledger", f"sqlite:///{missing}"]) == 2
    assert f"no SQLite ledger at {missing}" in capsys.readouterr().err
    assert not missing.exists()
    with pytest.raises(ConfigError):
        open_ledger(f"sqlite:///{missing}", existing=True)


def test_relative_and_absolute_sqlite_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    with open_ledger("sqlite:///rel/spend.db") as relative:
        assert relative.location == f"sqlite:///{tmp_path / 'rel' / 'spend.db'}"
    assert "relative to the working directory" in caplog.text
    caplog.clear()
    with open_ledger(f"sqlite:///{tmp_path / 'abs.db'}") as absolute:
        assert absolute.location == f"sqlite:///{tmp_path / 'abs.db'}"
    assert caplog.text == ""


def test_instrument_logs_the_resolved_ledger_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from agentguard_otel import AgentGuardInstrumentor

    caplog.set_level("INFO", logger="agentguard_otel")
    instrumentor = AgentGuardInstrumentor()
    instrumentor.instrument(ledger=f"sqlite:///{tmp_path / 'l.db'}", signing_key=str(tmp_path / "k"),
                            receipts=str(tmp_path / "r"))
    instrumentor.uninstrument()
    lines = [r.getMessage() for r in caplog.records if "ledger sqlite:///" in r.getMessage()]
    assert lines == [f"agentguard: ledger sqlite:///{tmp_path / 'l.db'}, receipts in {tmp_path / 'r'}"]
