"""A user's install: ``pip install "agentguard-otel[EXTRA]"`` of the built wheel into a fresh virtualenv
holding nothing else, then a zero-code app under a policy that blocks every call.

Each extra must import, answer ``agentguard --version`` and guard its SDK without any other extra's
driver installed (the test extra installs them all, so only a separate venv can show a missing one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentguard_otel.version import __version__
from tests.servers.anthropic_server import LocalAnthropicServer
from tests.servers.bedrock_server import LocalBedrockServer
from tests.servers.openai_server import LocalOpenAIServer

ROOT = Path(__file__).resolve().parents[2]
BLOCK_EVERYTHING = json.dumps({"version": 1, "id": "block-all", "mode": "enforce", "rules": [{"id": "all", "caps": [
    {"limit_usd": "0.000000001", "window": "call", "action": "block", "reason": "nothing passes"}]}]})

# The app imports its SDK only after the guard was set up by opentelemetry-instrument: the SDK is
# patched when imported. It exits 0 only when the call was blocked by agentguard.
APPS = {
    "openai": """
import openai
client = openai.OpenAI(base_url=os.environ["SERVER_URL"], api_key="sk-test", max_retries=0)
call = lambda: client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
""",
    "anthropic": """
import anthropic
client = anthropic.Anthropic(base_url=os.environ["SERVER_URL"], api_key="sk-ant-test", max_retries=0)
call = lambda: client.messages.create(model="claude-haiku-4-5", max_tokens=64,
                                      messages=[{"role": "user", "content": "hi"}])
""",
    "bedrock": """
import boto3
client = boto3.client("bedrock-runtime", endpoint_url=os.environ["SERVER_URL"], region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test")
call = lambda: client.converse(modelId="anthropic.claude-3-haiku-20240307-v1:0",
                               messages=[{"role": "user", "content": [{"text": "hi"}]}])
""",
}
APP_TAIL = """
from agentguard_otel import AgentGuardBlocked
try:
    call()
except AgentGuardBlocked as exc:
    print("BLOCKED:", exc.reason)
    raise SystemExit(0)
print("NOT BLOCKED")
raise SystemExit(1)
"""
# Drivers of other extras that must not have come along.
OTHER_DRIVERS = {"openai": ("anthropic", "botocore", "redis"), "anthropic": ("openai", "botocore", "redis"),
                 "bedrock": ("openai", "anthropic", "redis")}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package as a user gets it: a wheel built from the checkout in an isolated build environment."""
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(ROOT)],
                           capture_output=True, text=True, timeout=600, check=False)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (built,) = out.glob("agentguard_otel-*.whl")
    return built


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, Any]]:
    with LocalOpenAIServer() as openai_srv, LocalAnthropicServer() as anthropic_srv, \
            LocalBedrockServer() as bedrock_srv:
        yield {"openai": (openai_srv, openai_srv.base_url), "anthropic": (anthropic_srv, anthropic_srv.base_url),
               "bedrock": (bedrock_srv, bedrock_srv.url)}


@pytest.mark.parametrize("extra", ["openai", "anthropic", "bedrock"])
def test_one_extra_alone_imports_and_guards_zero_code(extra: str, wheel: Path, servers: dict[str, Any],
                                                      tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", f"{wheel}[{extra}]"],
                             capture_output=True, text=True, timeout=900, check=False)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}

    missing = subprocess.run([str(python), "-c", "import importlib.util, sys; "
                              f"print([m for m in {OTHER_DRIVERS[extra]!r} if importlib.util.find_spec(m)])"],
                             capture_output=True, text=True, timeout=60, check=True, env=clean, cwd=tmp_path)
    assert missing.stdout.strip() == "[]", f"other extras' drivers came along: {missing.stdout}"
    version = subprocess.run([str(env_dir / "bin" / "agentguard"), "--version"], capture_output=True, text=True,
                             timeout=60, check=False, env=clean, cwd=tmp_path)
    assert (version.returncode, version.stdout.strip()) == (0, f"agentguard-otel {__version__}"), version.stderr

    server, url = servers[extra]
    server.reset()
    policy = tmp_path / "policy.json"
    policy.write_text(BLOCK_EVERYTHING)
    app = tmp_path / "app.py"
    app.write_text("import os\n" + APPS[extra] + APP_TAIL)
    env = {**clean, "AGENTGUARD_HOME": str(tmp_path / "home"), "AGENTGUARD_POLICY": str(policy),
           "SERVER_URL": url, "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none",
           "OTEL_LOGS_EXPORTER": "none"}
    run = subprocess.run([str(env_dir / "bin" / "opentelemetry-instrument"), str(python), str(app)],
                         capture_output=True, text=True, timeout=120, check=False, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "BLOCKED: nothing passes" in run.stdout
    assert server.requests == []
    assert any((tmp_path / "home" / "receipts").glob("*.ndjson"))


def test_the_wheel_ships_the_verify_page(wheel: Path) -> None:
    """``agentguard verify-page`` writes the page from package data: the wheel must carry all of it."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {f"agentguard_otel/receipts/{name}"
            for name in ("page.py", "verify.js", "verify_ui.js", "verify_page.html", "verify_page.css")} <= names
