"""Real components for the collector tests: the OpenTelemetry Collector built by the project's
``scripts/otelcol/build.sh``, Arize Phoenix in its own virtualenv, and the instrumented app. Both are
kept under ``TEST_TOOLS_DIR`` (``.ci/run`` sets it; default: ``.cache`` in the checkout).

Every process is started on free 127.0.0.1 ports, waited for with a bounded timeout and always
stopped; a process that fails to start reports its own output."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from agentguard_otel.receipts import SigningKey

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "collector-config"
APP = Path(__file__).with_name("agent_app.py")

TOOLS = Path(os.environ.get("TEST_TOOLS_DIR") or ROOT / ".cache")
OTELCOL_BUILD = ROOT / "scripts" / "otelcol" / "build.sh"
OTELCOL = TOOLS / "otelcol-core" / "otelcol"
# The collector's own telemetry would listen on :8888; the tests need nothing from it.
NO_SELF_TELEMETRY = "--config=yaml:service::telemetry::metrics::level: none"

PHOENIX_VENV = TOOLS / "agentguard-phoenix"
PHOENIX_REQUIREMENT = "arize-phoenix==20.26.1"

# Code review is allowed (capped per user and day); a payment needs a capability the app's scope lacks;
# research has a per-call cap below any call's price bound, so it is blocked by a cap.
POLICY: dict[str, Any] = {
    "version": 1, "id": "collector-e2e", "mode": "enforce",
    "rules": [
        {"id": "code-review", "match": {"task": "code-review"}, "per": "user",
         "caps": [{"limit_usd": 5, "window": "day", "action": "block", "reason": "daily ceiling"}]},
        {"id": "payments", "match": {"task": "payment-approval"}, "require_capability": "payment_execute"},
        {"id": "research", "match": {"task": "research"},
         "caps": [{"limit_usd": "0.000001", "window": "call", "action": "block", "reason": "per-call ceiling"}]},
    ],
}
PROVIDER_KEY = "sk-collector-test-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def obtain_otelcol() -> Path:
    """The collector binary; built (once, about 4 minutes) only when the cache does not hold it."""
    if not os.access(OTELCOL, os.X_OK):
        assert OTELCOL_BUILD.is_file(), f"collector build script not found at {OTELCOL_BUILD}"
        build = subprocess.run(["bash", str(OTELCOL_BUILD), str(OTELCOL.parent)], capture_output=True, text=True,
                               timeout=1800, check=False)
        assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return OTELCOL


def obtain_phoenix() -> Path:
    """Phoenix's ``phoenix`` command from its own cached virtualenv, installed once if missing."""
    command = PHOENIX_VENV / "bin" / "phoenix"
    if not os.access(command, os.X_OK):
        for step in ([sys.executable, "-m", "venv", str(PHOENIX_VENV)],
                     [str(PHOENIX_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", PHOENIX_REQUIREMENT]):
            run = subprocess.run(step, capture_output=True, text=True, timeout=1800, check=False)
            assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return command


class Collector:
    """``otelcol --config=file:CONFIG`` with the given environment, ready when it says so."""

    def __init__(self, binary: Path, config: Path, env: Mapping[str, str], workdir: Path) -> None:
        self.grpc_port = free_port()
        self.http_port = free_port()
        self._args = [str(binary), f"--config=file:{config}", NO_SELF_TELEMETRY]
        self._env = {**os.environ, **env,
                     "COLLECTOR_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{self.grpc_port}",
                     "COLLECTOR_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{self.http_port}"}
        self.log_path = workdir / f"otelcol-{config.stem}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> Collector:
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(self._args, env=self._env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(self._ready, 30, "the collector to start")
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        assert self._process is not None
        if self._process.poll() is not None:
            raise AssertionError(f"collector exited with {self._process.returncode}:\n{self.log}")
        return "Everything is ready" in self.log

    def stop(self) -> int | None:
        """Graceful shutdown (drains the batch processors), killed after 15 s."""
        if self._process is None:
            return None
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        return self._process.returncode

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class Phoenix:
    """``phoenix serve`` bound to 127.0.0.1 with its database in a temporary working directory."""

    def __init__(self, command: Path, workdir: Path) -> None:
        self.port = free_port()
        self._args = [str(command), "serve"]
        self._env = {**os.environ, "PHOENIX_HOST": "127.0.0.1", "PHOENIX_PORT": str(self.port),
                     "PHOENIX_GRPC_PORT": str(free_port()), "PHOENIX_WORKING_DIR": str(workdir),
                     "PHOENIX_TELEMETRY_ENABLED": "false"}
        self.log_path = workdir / "phoenix.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.load(response)

    def __enter__(self) -> Phoenix:
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(self._args, env=self._env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(self._ready, 120, "Phoenix to answer", interval=0.5)
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        assert self._process is not None
        if self._process.poll() is not None:
            log = self.log_path.read_text(errors="replace")
            raise AssertionError(f"phoenix exited with {self._process.returncode}:\n{log[-5000:]}")
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(20)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def run_app(tmp_path: Path, server: Any, otlp_endpoint: str, protocol: str,
            extra_env: Mapping[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run ``agent_app.py`` under ``opentelemetry-instrument``, configured by environment variables only,
    exporting every signal over OTLP to ``otlp_endpoint``; returns the run and the signing key's path."""
    key = tmp_path / "agentguard.key"
    SigningKey.generate(key)
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(POLICY))
    env = {
        **os.environ,
        "AGENTGUARD_POLICY": str(policy),
        "AGENTGUARD_SIGNING_KEY": str(key),
        "AGENTGUARD_LEDGER": f"sqlite:///{tmp_path / 'ledger.db'}",
        "AGENTGUARD_RECEIPTS": str(tmp_path / "receipts"),
        "AGENTGUARD_TENANT": "acme",
        "AGENTGUARD_TEAM": "engineering",
        "OPENAI_BASE_URL": server.base_url,
        "OPENAI_API_KEY": PROVIDER_KEY,
        "OTEL_SERVICE_NAME": "collector-e2e",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_LOGS_EXPORTER": "otlp",
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "openai_v2",
        **(extra_env or {}),
    }
    instrument = Path(sys.executable).parent / "opentelemetry-instrument"
    run = subprocess.run([str(instrument), sys.executable, str(APP)], env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    return run, key


def disk_receipts(tmp_path: Path) -> list[str]:
    """Every receipt line the app wrote, in file order."""
    lines: list[str] = []
    for segment in sorted((tmp_path / "receipts").glob("*.ndjson")):
        lines.extend(line for line in segment.read_text().splitlines() if line)
    return lines
