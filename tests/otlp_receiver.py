"""A minimal OTLP/HTTP (protobuf) receiver on 127.0.0.1 that keeps what it is sent, decoded.

It serves the signal paths under any prefix (``/v1/logs``, Loki's ``/otlp/v1/logs``, Prometheus'
``/api/v1/otlp/v1/metrics``), accepts gzip bodies (the collector's default) and records each
request's path and headers (names lower-cased), so a test can check where a collector sent what
and with which credentials."""

from __future__ import annotations

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

_MESSAGES: dict[str, type[Message]] = {"/v1/traces": ExportTraceServiceRequest,
                                       "/v1/metrics": ExportMetricsServiceRequest,
                                       "/v1/logs": ExportLogsServiceRequest}


def _attrs(items: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        value = item.get("value", {})
        out[item["key"]] = next(iter(value.values()), None) if value else None
    return out


class OTLPReceiver:
    def __init__(self) -> None:
        self.received: dict[str, list[dict[str, Any]]] = {path: [] for path in _MESSAGES}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                signal = next((path for path in _MESSAGES if self.path.endswith(path)), None)
                if signal is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                message = _MESSAGES[signal]()
                message.ParseFromString(body)
                with receiver._lock:
                    receiver.received[signal].append(MessageToDict(message))
                    receiver.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> OTLPReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def spans(self) -> list[dict[str, Any]]:
        return [dict(span, attributes=_attrs(span.get("attributes", [])))
                for req in self.received["/v1/traces"] for rs in req.get("resourceSpans", [])
                for ss in rs.get("scopeSpans", []) for span in ss.get("spans", [])]

    def metric_names(self) -> set[str]:
        return {m["name"] for req in self.received["/v1/metrics"] for rm in req.get("resourceMetrics", [])
                for sm in rm.get("scopeMetrics", []) for m in sm.get("metrics", [])}

    def logs(self) -> list[dict[str, Any]]:
        return [dict(rec, attributes=_attrs(rec.get("attributes", [])))
                for req in self.received["/v1/logs"] for rl in req.get("resourceLogs", [])
                for sl in rl.get("scopeLogs", []) for rec in sl.get("logRecords", [])]
