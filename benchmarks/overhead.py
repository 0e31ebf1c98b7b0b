"""Added time per guarded call against the bare SDK and the official OTel instrumentation, and guard
decisions per second.

Not a test: run ``python benchmarks/overhead.py`` and copy its tables into the README.

Latency: one process, the real ``openai`` SDK against the demo's local OpenAI-wire endpoint (served by
a process of its own, so that the CPU measured is the client's alone). Every arm
is installed once — bare, the official ``opentelemetry-instrumentation-openai-v2`` (spans, metrics and
log events), agentguard with a memory ledger and with a SQLite ledger — and its patches are recorded;
then the patches are swapped in and out between blocks of calls, the arms in rotating order, so every
arm sees the same machine state (the machines are shared and noisy: only same-run ratios mean
anything). Reported per call: the median wall time and the median process CPU time (per call of a block),
each minus the bare SDK's, and the added time as a ratio of what otel-v2 adds. Every arm reports to
the same SDK providers, whose exporters drop what they are given.

Each agentguard call makes a reservation, signs a decision receipt, settles and signs a settlement
receipt, and emits a span, metrics and log records.

A last arm, ``telemetry-floor``, is the floor of the telemetry the design requires: it wraps the same
SDK method and emits, through the same SDK providers, exactly the span, metric measurements and log
records one guarded call emitted (recorded from a real guarded call first), with nothing else: no
pricing, ledger, receipt or policy. The guard cannot add less than it.

``--profile`` prints where the time of guarded calls goes (cProfile, our package's functions).

Throughput: 16 threads calling the guard directly (decide + reserve + sign, then settle + sign),
no SDK and no network: the ceiling a process's governance can sustain.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import itertools
import pstats
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import wrapt
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    InMemoryLogRecordExporter,
    LogRecordExporter,
    LogRecordExportResult,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import Histogram, InMemoryMetricReader, Sum
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, set_span_in_context

from agentguard_otel import AgentGuardInstrumentor, scope
from agentguard_otel.call import LLMRequest, ResponseInfo
from agentguard_otel.guard import Guard
from agentguard_otel.instrumentor import _build_guard
from agentguard_otel.pricing import TokenUsage
from agentguard_otel.receipts import SigningKey

POLICY = {"version": 1, "id": "bench", "mode": "enforce", "rules": [
    {"id": "team", "match": {"team": "*"}, "per": "user", "max_output_tokens": 256,
     "caps": [{"limit_usd": 1_000_000, "window": "day", "action": "block"},
              {"limit_usd": 1_000_000, "window": "minute", "action": "block"}]}]}
MESSAGES = [{"role": "user", "content": "Review this diff and list the risky changes."}]
# Where the instrumentations patch: every class attribute of these modules is recorded per arm.
PATCHED_MODULES = ("openai", "httpx", "httpx2", "http.client", "concurrent.futures")

Patches = dict[tuple[type, str], Any]
# wrapt 2 moved its wrappers under BaseObjectProxy; ObjectProxy is a subclass of it there.
_PROXY = getattr(wrapt, "BaseObjectProxy", wrapt.ObjectProxy)


class _Drop(SpanExporter, LogRecordExporter):
    """An exporter that accepts everything and keeps nothing (the cost measured is the SDK's)."""

    def export(self, batch: Sequence[Any]) -> Any:
        return SpanExportResult.SUCCESS if batch and hasattr(batch[0], "context") else LogRecordExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to release."""


def _providers() -> dict[str, Any]:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(_Drop()))
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(_Drop()))
    return {"tracer_provider": tracer_provider, "logger_provider": logger_provider,
            "meter_provider": MeterProvider(metric_readers=[InMemoryMetricReader()])}


def _attributes() -> Patches:
    """Every class attribute of the modules the instrumentations patch."""
    found: Patches = {}
    for name, module in list(sys.modules.items()):
        if module is None or not any(name == m or name.startswith(m + ".") for m in PATCHED_MODULES):
            continue
        for value in list(vars(module).values()):
            if isinstance(value, type) and value.__module__ == name:
                for attribute, member in list(vars(value).items()):
                    found[(value, attribute)] = member
    return found


def _patches_of(install: Callable[[], None], bare: Patches) -> Patches:
    """What ``install`` changed, as (class, attribute) -> the patched member; the members it replaced
    are added to ``bare`` (a module first imported by ``install`` has its unwrapped member there)."""
    before = _attributes()
    install()
    patches = {key: member for key, member in _attributes().items()
               if before.get(key) is not member and _is_patch(member, before.get(key))}
    for key, member in patches.items():
        original = before.get(key)
        bare.setdefault(key, member.__wrapped__ if original is None else original)
    return patches


def _is_patch(member: Any, replaced: Any) -> bool:
    """A wrapt wrapper, or a plain function wrapping what it replaced (not, say, a pydantic model's
    schema completed lazily meanwhile)."""
    return isinstance(member, _PROXY) or (replaced is not None and getattr(member, "__wrapped__", None) is replaced)


@contextmanager
def _applied(patches: Patches, bare: Patches) -> Iterator[None]:
    for (owner, attribute), member in patches.items():
        setattr(owner, attribute, member)
    try:
        yield
    finally:
        for (owner, attribute) in patches:
            setattr(owner, attribute, bare[(owner, attribute)])


class Arms:
    """Every arm installed once; :meth:`use` swaps one arm's patches in for a block of calls."""

    def __init__(self, workdir: Path) -> None:
        from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

        providers = self._providers = _providers()
        self._bare: Patches = {}
        otel = OpenAIInstrumentor()
        # Installed and removed once first, so that every module it patches is imported before the
        # snapshot that tells its patches from the members it found (the SDK imports resources lazily).
        otel.instrument(**providers)
        otel.uninstrument()
        self.patches: dict[str, Patches] = {"bare": {}}
        self.patches["otel-v2"] = _patches_of(lambda: otel.instrument(**providers), self._bare)
        otel.uninstrument()
        key = workdir / "bench.key"
        SigningKey.generate(key)
        self._guard = AgentGuardInstrumentor()
        settings = {"policy": POLICY, "signing_key": str(key), "receipts": str(workdir / "receipts"), **providers}
        self.patches["agentguard"] = _patches_of(
            lambda: self._guard.instrument(ledger=f"sqlite:///{workdir}/ledger.db", **settings), self._bare)
        sqlite = self._guard.guard
        assert sqlite is not None
        # The same patches with a guard on a memory ledger: the hooks ask the instrumentor for its guard.
        assert self._guard._settings is not None
        memory = _build_guard(dataclasses.replace(self._guard._settings, ledger="memory://",
                                                  receipts=workdir / "receipts-memory"), providers)
        self.guards: dict[str, Guard] = {"agentguard-sqlite": sqlite, "agentguard-memory": memory}
        self._restore_bare()

    def _restore_bare(self) -> None:
        for patches in self.patches.values():
            for owner, attribute in patches:
                setattr(owner, attribute, self._bare[(owner, attribute)])

    @contextmanager
    def use(self, arm: str) -> Iterator[None]:
        guard = self.guards.get(arm)
        with _applied(self.patches["agentguard" if guard else arm], self._bare):
            if guard is not None:
                self._guard._guard = guard
            yield

    def names(self) -> list[str]:
        return ["bare", "otel-v2", *self.guards, *(["telemetry-floor"] if "telemetry-floor" in self.patches else [])]

    def add_floor(self, call: Callable[[], None], workdir: Path) -> None:
        """Record what one guarded call emits, then install the arm that emits only that."""
        spans, logs = InMemorySpanExporter(), InMemoryLogRecordExporter()
        tracer_provider, logger_provider = TracerProvider(), LoggerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
        logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
        reader = InMemoryMetricReader()
        assert self._guard._settings is not None
        recorder = _build_guard(dataclasses.replace(self._guard._settings, ledger="memory://",
                                                    receipts=workdir / "receipts-recorded"),
                                {"tracer_provider": tracer_provider, "logger_provider": logger_provider,
                                 "meter_provider": MeterProvider(metric_readers=[reader])})
        with _applied(self.patches["agentguard"], self._bare):
            self._guard._guard = recorder
            call()
        (span,) = spans.get_finished_spans()
        data = reader.get_metrics_data()
        # The measurements a call records: histogram points and counter increments (the budget
        # gauges are observed at collection, not per call).
        points = [(metric.name, isinstance(metric.data, Histogram),
                   point.sum if isinstance(metric.data, Histogram) else point.value, dict(point.attributes),
                   getattr(point, "explicit_bounds", None))
                  for rm in (data.resource_metrics if data else []) for sm in rm.scope_metrics
                  for metric in sm.metrics if isinstance(metric.data, (Histogram, Sum))
                  for point in metric.data.data_points]
        records = [(r.log_record.event_name, r.log_record.body, dict(r.log_record.attributes or {}))
                   for r in logs.get_finished_logs()]
        assert len(points) == 5 and len(records) == 2, (points, records)
        recorder.close()  # after reading what the call emitted: closing writes a checkpoint receipt
        providers = self._providers
        tracer = providers["tracer_provider"].get_tracer("telemetry-floor")
        meter = providers["meter_provider"].get_meter("telemetry-floor")
        instruments = {name: meter.create_histogram(name, explicit_bucket_boundaries_advisory=bounds)
                       if histogram else meter.create_counter(name) for name, histogram, _, _, bounds in points}
        logger = providers["logger_provider"].get_logger("telemetry-floor")
        attributes = dict(span.attributes or {})

        def emit_as_the_guard(wrapped: Callable[..., Any], _instance: Any, args: Any, kwargs: Any) -> Any:
            started = time.perf_counter()
            telemetry_span = tracer.start_span(span.name, kind=SpanKind.CLIENT, attributes=attributes)
            context = set_span_in_context(telemetry_span)
            result = wrapped(*args, **kwargs)
            for name, histogram, value, point_attributes, _ in points:
                if name == "gen_ai.client.operation.duration":
                    value = time.perf_counter() - started
                if histogram:
                    instruments[name].record(value, point_attributes)
                else:
                    instruments[name].add(value, point_attributes)
            for event_name, body, record_attributes in records:
                logger.emit(LogRecord(timestamp=time.time_ns(), context=context,
                                      severity_number=SeverityNumber.INFO, severity_text="INFO",
                                      event_name=event_name, body=body, attributes=record_attributes))
            telemetry_span.end()
            return result

        self.patches["telemetry-floor"] = _patches_of(lambda: wrapt.wrap_function_wrapper(
            "openai.resources.chat.completions", "Completions.create", emit_as_the_guard), self._bare)
        self._restore_bare()


def _call(client: openai.OpenAI, stream: bool) -> Callable[[], None]:
    def call() -> None:
        if stream:
            for _ in client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True,
                                                    stream_options={"include_usage": True}):
                pass
        else:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    return call


def _time(call: Callable[[], None], n: int, wall: list[float], cpu: list[float]) -> None:
    """Wall time per call, and the process's CPU time per call over the block: background threads
    (span and log processors, any deferred work) count."""
    start_cpu = time.process_time()
    for _ in range(n):
        start = time.perf_counter()
        call()
        wall.append(time.perf_counter() - start)
    cpu.append((time.process_time() - start_cpu) / n)


def latency(arms: Arms, client: openai.OpenAI, stream: bool, rounds: int, block: int) -> dict[str, tuple[float, float]]:
    """Per arm: (median wall µs per call, median process CPU µs per call of a block) over rotated blocks."""
    names = arms.names()
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    call = _call(client, stream)
    with scope(team="eng", user="alice"):
        for name in names:  # warm connections, caches and each arm's first-use work
            with arms.use(name):
                _time(call, block, [], [])
        for offset in itertools.islice(itertools.cycle(range(len(names))), rounds):
            for name in names[offset:] + names[:offset]:
                with arms.use(name):
                    _time(call, block, wall[name], cpu[name])
    return {name: (statistics.median(wall[name]) * 1e6, statistics.median(cpu[name]) * 1e6) for name in names}


def _table(results: dict[str, tuple[float, float]], kind: str) -> None:
    bare_wall, bare_cpu = results["bare"]
    otel_wall, otel_cpu = (v - b for v, b in zip(results["otel-v2"], results["bare"], strict=True))
    for name, (wall, cpu) in results.items():
        if name == "bare":
            print(f"| {kind} | bare SDK | {wall:.0f} µs | {cpu:.0f} µs | — | — |")
            continue
        added_wall, added_cpu = wall - bare_wall, cpu - bare_cpu
        print(f"| {kind} | {name} | +{added_wall:.0f} µs | +{added_cpu:.0f} µs "
              f"| {added_wall / otel_wall:.2f}× | {added_cpu / otel_cpu:.2f}× |", flush=True)


def profile(arms: Arms, client: openai.OpenAI, calls: int, arm: str) -> None:
    call = _call(client, False)
    profiler = cProfile.Profile()
    with scope(team="eng", user="alice"), arms.use(arm):
        call()
        profiler.enable()
        for _ in range(calls):
            call()
        profiler.disable()
    stats = pstats.Stats(profiler)
    print(f"\nProfile of {calls} non-streaming calls, {arm} (µs per call, our functions by own time):")
    rows = [(tt, ct, f"{Path(file).name}:{line} {func}")
            for (file, line, func), (_, _, tt, ct, _) in stats.stats.items()  # type: ignore[attr-defined]
            if "agentguard_otel" in file]
    for tt, ct, where in sorted(rows, reverse=True)[:25]:
        print(f"  own {tt / calls * 1e6:7.1f}  cumulative {ct / calls * 1e6:7.1f}  {where}")


def throughput(guard: Guard, threads: int, seconds: float) -> float:
    """Guard decisions (with settlement) per second across ``threads`` threads."""
    request = LLMRequest(provider="openai", price_provider="openai", operation="chat", model="gpt-4o-mini",
                         stream=False, input_bytes=200, input_items=1, input_images=0, max_output_tokens=256)
    info = ResponseInfo(usage=TokenUsage(input_tokens=50, output_tokens=24), response_model="gpt-4o-mini")
    counts = [0] * threads
    stop = time.perf_counter() + seconds

    def work(i: int) -> None:
        with scope(team="eng", user=f"user{i % 4}"):
            while time.perf_counter() < stop:
                guard.begin(request).finish(info)
                counts[i] += 1

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(counts) / seconds


@contextmanager
def _server() -> Iterator[str]:
    """The demo endpoint in a process of its own, on a free port; yields its base URL."""
    server = subprocess.Popen([sys.executable, "-m", "agentguard_otel.demo.server", "--port", "0"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        yield server.stdout.readline().strip()
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=12, help="blocks per arm")
    parser.add_argument("--block", type=int, default=100, help="calls per block")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each throughput run")
    parser.add_argument("--profile", type=int, default=0, metavar="CALLS", help="profile CALLS guarded calls")
    args = parser.parse_args()
    with _server() as base_url, tempfile.TemporaryDirectory() as tmp:
        arms = Arms(Path(tmp))
        client = openai.OpenAI(base_url=base_url, api_key="sk-bench", max_retries=0)
        with scope(team="eng", user="alice"):  # as every latency call runs
            arms.add_floor(_call(client, False), Path(tmp))
        print(f"{args.rounds} blocks of {args.block} calls per arm, rotated; added over the bare SDK call")
        print()
        print("| call | arm | added wall (median) | added CPU (median) | wall ÷ otel-v2 | CPU ÷ otel-v2 |")
        print("|---|---|---:|---:|---:|---:|")
        for stream in (False, True):
            _table(latency(arms, client, stream, args.rounds, args.block), "stream" if stream else "non-stream")
        if args.profile:
            for arm in arms.guards:
                profile(arms, client, args.profile, arm)
        print()
        print("| ledger | threads | decisions/s (decide + settle, 2 signed receipts each) |")
        print("|---|---|---|")
        for name, guard in arms.guards.items():
            print(f"| {name.removeprefix('agentguard-')} | 16 | {throughput(guard, 16, args.seconds):,.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
