"""One lifecycle for every SDK: what the guard may and may not do around a call.

Shadow mode changes nothing on the wire or for the caller; enforce mode changes only what the
policy orders; OTel failures and a finished instrumentation never cost a call its settlement; the
guard's span takes no part in other spans' parentage."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import anthropic
import openai
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.conftest import Guarded, GuardFactory, Telemetry
from tests.servers.anthropic_server import LocalAnthropicServer

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Review this diff, please."}]
SHADOW = {"version": 1, "id": "shadow", "mode": "shadow",
          "rules": [{"id": "all", "max_output_tokens": 16,
                     "caps": [{"limit_usd": "0.000000001", "window": "call", "action": "block"}]}]}
ENFORCE = {"version": 1, "id": "enforce", "mode": "enforce",
           "rules": [{"id": "all", "caps": [{"limit_usd": 100, "window": "day", "action": "block"}]}]}


def _client(server: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)


def _settlements(g: Guarded) -> list[dict[str, Any]]:
    return [r for r in g.receipts() if r["kind"] == "settlement"]


def _stream_chunks(server: Any, **extra: Any) -> list[Any]:
    return list(_client(server).chat.completions.create(model=MODEL, messages=MESSAGES, stream=True, **extra))


def test_shadow_sends_the_request_exactly_as_written_and_shows_every_chunk(server: Any,
                                                                           guarded: GuardFactory) -> None:
    plain = _stream_chunks(server, stream_options={"include_usage": True})
    unguarded_body = server.requests[-1].body
    server.reset()
    g = guarded(SHADOW, ledger="memory://")
    shadowed = _stream_chunks(server, stream_options={"include_usage": True})
    assert server.requests[-1].body == unguarded_body  # no clamp, no injected option, nothing
    def same(chunks: list[Any]) -> list[Any]:
        return [c.model_dump(exclude={"id", "created"}) for c in chunks]

    assert same(shadowed) == same(plain)  # the usage chunk included
    (decision,) = [r for r in g.receipts() if r["kind"] == "decision"]
    assert (decision["action"], decision["would"]) == ("shadow", "block")
    (settlement,) = _settlements(g)
    assert (settlement["cost_source"], settlement["degraded"]) == ("local", False)


def test_shadow_asks_no_usage_and_a_stream_without_it_settles_at_what_it_delivered(
        server: Any, guarded: GuardFactory) -> None:
    g = guarded(SHADOW, ledger="memory://")
    chunks = _stream_chunks(server)
    assert "stream_options" not in server.requests[-1].body
    assert all(c.usage is None for c in chunks)
    (settlement,) = _settlements(g)
    assert (settlement["outcome"], settlement["cost_source"], settlement["problem"]) == \
        ("ok", "estimated", "no usage reported")
    assert 0 < settlement["actual_nano"] <= settlement["estimated_nano"]


def test_enforce_hides_only_the_usage_chunk_it_asked_for(server: Any, guarded: GuardFactory) -> None:
    guarded(ENFORCE, ledger="memory://")
    asked = _stream_chunks(server)
    assert server.requests[-1].body["stream_options"] == {"include_usage": True}
    assert all(c.usage is None for c in asked)  # the caller did not ask: the usage chunk is hidden
    mine = _stream_chunks(server, stream_options={"include_usage": True})
    assert mine[-1].usage is not None  # the caller asked: it is shown


def test_stream_sent_through_extra_body_is_read_as_a_stream(server: Any, guarded: GuardFactory) -> None:
    g = guarded(ENFORCE, ledger="memory://")
    raw = _client(server).chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES,
                                                                    extra_body={"stream": True})
    assert raw.http_response.text.startswith("data: ")
    (decision,) = [r for r in g.receipts() if r["kind"] == "decision"]
    assert decision["stream"] is True
    (settlement,) = _settlements(g)
    assert settlement["actual_nano"] > 0 and settlement["cost_source"] in ("local", "estimated")


def test_a_stream_read_after_uninstrument_still_settles_with_a_receipt(server: Any, guarded: GuardFactory) -> None:
    g = guarded(ENFORCE, ledger="memory://")
    stream = _client(server).chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    g.instrumentor.uninstrument()
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    (settlement,) = _settlements(g)
    assert (settlement["outcome"], settlement["cost_source"]) == ("ok", "local")
    assert g.verify().ok


def test_a_dropped_stream_after_uninstrument_settles_once(server: Any, guarded: GuardFactory) -> None:
    g = guarded(ENFORCE, ledger="memory://")
    stream = _client(server).chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    next(iter(stream))
    g.instrumentor.uninstrument()
    del stream
    gc.collect()
    (settlement,) = _settlements(g)
    assert settlement["outcome"] == "abandoned"


class _BrokenTracer(trace.Tracer):
    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        raise RuntimeError("exporter misconfigured")

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("exporter misconfigured")


class _BrokenProvider(trace.TracerProvider):
    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return _BrokenTracer()


def test_an_otel_failure_never_stops_or_unsettles_a_call(server: Any, guarded: GuardFactory) -> None:
    g = guarded(ENFORCE, ledger="memory://", tracer_provider=_BrokenProvider())
    reply = _client(server).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert reply.choices[0].message.content
    assert len(server.requests) == 1
    (settlement,) = _settlements(g)
    assert settlement["cost_source"] == "local"


def test_the_guard_follows_the_global_tracer_provider(server: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                                                     otel: Telemetry) -> None:
    from agentguard_otel import AgentGuardInstrumentor

    first, second = InMemorySpanExporter(), InMemorySpanExporter()
    providers = []
    for exporter in (first, second):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        providers.append(provider)
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", providers[0])  # the global provider, as set_tracer_provider sets it
    instrumentor = AgentGuardInstrumentor()
    instrumentor.instrument(policy=ENFORCE, ledger="memory://", signing_key=str(tmp_path / "k"),
                            receipts=str(tmp_path / "r"), meter_provider=otel.meter_provider,
                            logger_provider=otel.logger_provider)
    try:
        _client(server).chat.completions.create(model=MODEL, messages=MESSAGES)
        monkeypatch.setattr(trace, "_TRACER_PROVIDER", providers[1])  # replaced (e.g. a test restores its own)
        _client(server).chat.completions.create(model=MODEL, messages=MESSAGES)
    finally:
        instrumentor.uninstrument()
    assert len(first.get_finished_spans()) == 1
    assert len(second.get_finished_spans()) == 1


def test_the_guard_span_is_nobodys_parent(server: Any, guarded: GuardFactory, otel: Telemetry) -> None:
    guarded(ENFORCE, ledger="memory://")
    tracer = otel.tracer_provider.get_tracer("app")
    seen: list[Any] = []
    http = openai.DefaultHttpxClient(event_hooks={"request": [lambda _: seen.append(trace.get_current_span())]})
    with tracer.start_as_current_span("agent step") as step:
        openai.OpenAI(base_url=server.base_url, api_key="sk", max_retries=0, http_client=http) \
            .chat.completions.create(model=MODEL, messages=MESSAGES)
    assert seen == [step]  # what the SDK's transport (and any HTTP instrumentation) sees as current
    ours = [s for s in otel.finished() if s.instrumentation_scope.name == "agentguard_otel.telemetry"]
    assert ours[0].parent.span_id == step.get_span_context().span_id


def test_async_anthropic_reads_files_without_the_sync_reader(guarded: GuardFactory, tmp_path: Any,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import anthropic._utils as utils

    image = tmp_path / "diagram.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)

    def blocking(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a sync file read on the event loop")

    monkeypatch.setattr(utils, "prepare_request_data", blocking)
    g = guarded(ENFORCE, ledger="memory://")
    with LocalAnthropicServer() as srv:
        async def go() -> Any:
            async with anthropic.AsyncAnthropic(base_url=srv.base_url, api_key="sk", max_retries=0) as client:
                return await client.messages.create(model="claude-haiku-4-5", max_tokens=32, messages=[
                    {"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type":
                                                  "image/png", "data": image}}, {"type": "text", "text": "hi"}]}])

        reply = asyncio.run(go())
    assert reply.content
    (decision,) = [r for r in g.receipts() if r["kind"] == "decision"]
    assert decision["action"] == "allow"


def test_a_background_response_settles_at_its_reservation_then_is_corrected(server: Any,
                                                                            guarded: GuardFactory) -> None:
    g = guarded(ENFORCE)  # the embedded SQLite ledger
    client = _client(server)
    queued = client.responses.create(model=MODEL, input="Summarise the quarter.", background=True)
    assert queued.status == "queued" and queued.usage is None
    (settlement,) = _settlements(g)
    assert (settlement["outcome"], settlement["cost_source"], settlement["degraded"]) == ("deferred", "estimated",
                                                                                         False)
    assert settlement["actual_nano"] == settlement["estimated_nano"]  # never $0 for work accepted
    (counter,) = g.guard.ledger.states()
    assert counter.spent_nano == settlement["actual_nano"]

    done = client.responses.retrieve(queued.id)  # the result, fetched through the guarded client
    assert done.status == "completed" and done.usage is not None
    (adjustment,) = [r for r in g.receipts() if r["kind"] == "adjustment"]
    assert adjustment["settlement"] == settlement["hash"] and adjustment["previous_nano"] == settlement["actual_nano"]
    assert 0 < adjustment["actual_nano"] < settlement["actual_nano"]
    assert adjustment["delta_nano"] == adjustment["actual_nano"] - settlement["actual_nano"]
    (counter,) = g.guard.ledger.states()
    assert (counter.spent_nano, counter.held_nano) == (adjustment["actual_nano"], 0)
    client.responses.retrieve(queued.id)  # fetched again: corrected once only
    assert len([r for r in g.receipts() if r["kind"] == "adjustment"]) == 1
    assert g.verify().ok


@pytest.mark.parametrize(("timeout", "retries", "expected"), [
    (openai.Timeout(None, connect=1.0), 0, 600.0 + 60.0),  # no read limit: the guard's long default
    (openai.Timeout(30.0, connect=1.0), 2, (1.0 + 30.0 + 30.0 + 30.0) * 3 + 60.0),  # every phase, every attempt
    (20.0, 0, 4 * 20.0 + 60.0),
])
def test_a_hold_lasts_the_call_s_whole_possible_duration(timeout: Any, retries: int, expected: float,
                                                        server: Any, guarded: GuardFactory,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    g = guarded(ENFORCE, ledger="memory://")
    ttls: list[float] = []
    reserve = g.guard.ledger.reserve
    monkeypatch.setattr(g.guard.ledger, "reserve", lambda specs, amount, ttl: ttls.append(ttl) or reserve(
        specs, amount, ttl))
    openai.OpenAI(base_url=server.base_url, api_key="sk", max_retries=retries, timeout=timeout) \
        .chat.completions.create(model=MODEL, messages=MESSAGES)
    assert ttls == [pytest.approx(expected)]


def test_the_largest_of_the_output_limits_and_every_best_of_choice_are_in_the_bound(server: Any,
                                                                                   guarded: GuardFactory) -> None:
    g = guarded(ENFORCE, ledger="memory://")
    client = _client(server)
    client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10, max_completion_tokens=2000)
    for best_of in (1, 20):
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi", max_tokens=10, best_of=best_of)
    chat, one, twenty = [r for r in g.receipts() if r["kind"] == "decision"]
    assert chat["max_output_tokens"] == 2000  # a server may honour either field: the larger is the bound
    price = g.guard.prices.lookup("openai", "gpt-3.5-turbo-instruct")
    assert price is not None
    all_choices = g.guard.prices.bound_cost_nano(price, 0, 20 * 10)
    assert one["estimated_nano"] < all_choices <= twenty["estimated_nano"]


def test_a_dearer_model_answering_than_any_asked_for_is_flagged(server: Any, guarded: GuardFactory,
                                                               otel: Telemetry) -> None:
    g = guarded(ENFORCE, ledger="memory://")
    server.answer_as("o1-pro")  # the provider routed the call to a model far dearer than gpt-4o-mini
    try:
        _client(server).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16)
    finally:
        server.answer_as(None)
    (settlement,) = _settlements(g)
    assert settlement["response_model"] == "o1-pro" and settlement["provider_model_mismatch"] is True
    assert settlement["actual_nano"] > settlement["estimated_nano"] and settlement["overshoot_nano"] > 0
    (span,) = [s for s in otel.finished() if "agentguard.decision.action" in s.attributes]
    assert span.attributes["agentguard.provider_model_mismatch"] is True
    _client(server).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16)
    assert _settlements(g)[-1]["provider_model_mismatch"] is False


def test_a_client_with_its_tracing_off_gets_no_guard_span_but_its_receipts(guarded: GuardFactory,
                                                                           otel: Telemetry) -> None:
    g = guarded(ENFORCE, ledger="memory://")
    with LocalAnthropicServer() as srv:
        for tracing in (False, None):  # off, then the default (on)
            anthropic.Anthropic(base_url=srv.base_url, api_key="sk", max_retries=0, open_telemetry=tracing) \
                .messages.create(model="claude-haiku-4-5", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    ours = [s for s in otel.finished() if s.instrumentation_scope.name == "agentguard_otel.telemetry"]
    assert len(ours) == 1  # only the traced client's call
    assert len(_settlements(g)) == 2
