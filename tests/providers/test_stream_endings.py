"""A stream that ends without the usage event that closes it is read as unreliable (its call then
settles at the reservation), never as the partial counts it carried so far."""

from __future__ import annotations

from agentguard_otel.pricing import TokenUsage
from agentguard_otel.providers.anthropic import MessagesReader
from agentguard_otel.providers.stream import BodyObserver

START = (b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","model":"claude-haiku-4-5",'
         b'"usage":{"input_tokens":12,"output_tokens":1}}}\n\n')
DELTA = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
         b'"delta":{"type":"text_delta","text":"hello there"}}\n\n')
FINAL = (b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
         b'"usage":{"output_tokens":9}}\n\n')
STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'


def _read(*events: bytes) -> MessagesReader:
    reader = MessagesReader()
    observer = BodyObserver(reader, sse=True, on_progress=lambda: None, on_end=lambda info, complete: None)
    for event in events:
        assert observer.feed(event) == event  # nothing hidden from the caller
    observer.flush()
    return reader


def test_a_complete_anthropic_stream_reports_its_final_usage() -> None:
    reader = _read(START, DELTA, FINAL, STOP)
    assert reader.complete and reader.info.problem is None
    assert reader.info.usage == TokenUsage(input_tokens=12, output_tokens=9)


def test_an_anthropic_stream_stopping_without_its_final_usage_is_not_trusted() -> None:
    reader = _read(START, DELTA, STOP)
    assert reader.complete
    assert reader.info.problem == "the stream ended without its final usage (message_delta)"
