"""Shared fixtures: OTel SDK providers with in-memory exporters, the local OpenAI-wire server,
and a factory that instruments agentguard with a policy and fresh state in a temp directory."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agentguard_otel import AgentGuardInstrumentor
from agentguard_otel.guard import Guard
from agentguard_otel.receipts import SigningKey, load_public_keys, verify
from tests.servers.openai_server import LocalOpenAIServer


@dataclass
class Telemetry:
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    logs: InMemoryLogRecordExporter
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    logger_provider: LoggerProvider

    def finished(self) -> list[Any]:
        return list(self.spans.get_finished_spans())

    def metric_points(self, name: str) -> list[Any]:
        data = self.metrics.get_metrics_data()
        points: list[Any] = []
        for resource in data.resource_metrics if data else []:
            for scope_metrics in resource.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name == name:
                        points.extend(metric.data.data_points)
        return points


# Variables of the caller's shell that would change what the package or the SDKs do in a test.
_CALLER_PREFIXES = ("AGENTGUARD_", "OTEL_", "OPENAI_", "ANTHROPIC_", "OPENROUTER_", "AWS_")


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test sees its own data directory and none of the caller's settings: a test must
    pass the same whatever the developer exported or synced into their own data directory."""
    for name in list(os.environ):
        if name.startswith(_CALLER_PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AGENTGUARD_HOME", str(tmp_path_factory.mktemp("agentguard-home")))


@pytest.fixture
def otel() -> Iterator[Telemetry]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    logs = InMemoryLogRecordExporter()
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    yield Telemetry(spans, reader, logs, tracer_provider, meter_provider, logger_provider)
    meter_provider.shutdown()


@pytest.fixture(scope="session")
def server() -> Iterator[LocalOpenAIServer]:
    with LocalOpenAIServer() as srv:
        yield srv


@pytest.fixture(autouse=True)
def _fresh_server(request: pytest.FixtureRequest) -> None:
    if "server" in request.fixturenames:
        request.getfixturevalue("server").reset()


@dataclass
class Guarded:
    instrumentor: AgentGuardInstrumentor
    home: Path
    key_path: Path

    @property
    def guard(self) -> Guard:
        guard = self.instrumentor.guard
        assert guard is not None
        return guard

    def receipts(self) -> list[dict[str, Any]]:
        lines: list[dict[str, Any]] = []
        for path in sorted((self.home / "receipts").glob("*.ndjson")):
            lines.extend(json.loads(line) for line in path.read_text().splitlines() if line)
        return [r for r in lines if r["kind"] != "checkpoint"]

    def verify(self) -> Any:
        keys = load_public_keys([Path(f"{self.key_path}.pub")])
        return verify([self.home / "receipts"], keys)


GuardFactory = Callable[..., Guarded]


@pytest.fixture
def guarded(tmp_path: Path, otel: Telemetry) -> Iterator[GuardFactory]:
    """``guarded(policy, ledger=...)`` instruments agentguard; teardown uninstruments and checks
    that every receipt written during the test verifies."""
    active: list[Guarded] = []

    def start(policy: Mapping[str, Any] | str | None = None, *, ledger: str | None = None,
              **extra: Any) -> Guarded:
        key_path = tmp_path / "keys" / "agentguard.key"
        if not key_path.exists():
            SigningKey.generate(key_path)
        instrumentor = AgentGuardInstrumentor()
        instrumentor.instrument(
            policy=policy,
            signing_key=str(key_path),
            ledger=ledger or f"sqlite:///{tmp_path / 'ledger.db'}",
            receipts=str(tmp_path / "receipts"),
            **{"tracer_provider": otel.tracer_provider, "meter_provider": otel.meter_provider,
               "logger_provider": otel.logger_provider, **extra},
        )
        handle = Guarded(instrumentor, tmp_path, key_path)
        active.append(handle)
        return handle

    yield start
    for handle in active:
        handle.instrumentor.uninstrument()
        report = handle.verify()
        assert report.ok, report.first_error
