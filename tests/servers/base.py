"""The HTTP side of the local provider servers the tests talk to through the real SDKs (stdlib only).

:class:`LocalServer` is a threaded HTTP/1.1 keep-alive server on 127.0.0.1 (port 0 picks a free
port), a context manager or ``start()``/``stop()``. A subclass speaks one provider's API: it maps
a request to an endpoint (:meth:`LocalServer.route`) and writes that provider's errors
(:meth:`LocalServer.error_reply`); everything else lives here, the same for every wire format:

- Framing: a JSON body with ``Content-Length``, or a stream of frames (SSE events, or binary
  ``application/vnd.amazon.eventstream`` messages), one frame per chunk of a
  ``Transfer-Encoding: chunked`` body, so a kept-alive connection stays reusable after a stream.
  A request body without a valid ``Content-Length`` is refused (411) and the connection closed.
- Recording: :attr:`LocalServer.requests` (credential headers are never recorded),
  :attr:`LocalServer.connections_accepted`, :meth:`LocalServer.reset`.
- Response-shape controls, each applying to the next request(s) that reach an endpoint of the API
  (a 404 or a provider's service call such as OpenRouter's ``GET /key`` does not consume them):

  - :meth:`LocalServer.fail_next`: the provider's error format with that status and message.
  - :meth:`LocalServer.usage_next`: every usage the next reply reports (a JSON body's usage, a
    stream's usage chunk or events, usage headers) is the given value verbatim, or with
    :data:`OMIT_USAGE` is left out; each server's docstring says where its usage is.
  - :meth:`LocalServer.truncate_next`: the headers, then the first half of the body's bytes (for a
    stream: whole frames up to the middle, then part of the frame across it), then the
    connection is closed.
  - :meth:`LocalServer.cut_stream_after`: the next stream sends that many whole frames, then the
    connection is closed (JSON replies are not cut).
  - :meth:`LocalServer.delay_next`: the next API reply is sent only after that many seconds (a
    long call; the connection stays open and silent meanwhile).
  - :meth:`LocalServer.call_tool_next`: the next model reply is a call of that function tool
    instead of a message, billed as the message would have been (an agent's tool turn).
  - :meth:`LocalServer.bill_with`: every reply from now on bills what a function of the request
    says (a :class:`Bill`: e.g. :mod:`tests.servers.worst_bill`'s worst bill a provider could send),
    instead of the token accounting below; the reply generates as many output tokens as it bills.

Token accounting is the demo endpoint's (:mod:`agentguard_otel.demo.server`): prompt tokens are
``ceil(utf8_bytes / 4)`` per text + 3 per message + 3, the reply is ``reply_words`` words of its
sentence, one token each.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, TypeVar

JSONObject = dict[str, Any]
SSE = "text/event-stream; charset=utf-8"
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "api-key", "x-api-key"})

Server = TypeVar("Server", bound="LocalServer")


class _Omit:
    def __repr__(self) -> str:
        return "OMIT_USAGE"


OMIT_USAGE: Any = _Omit()
"""``usage_next(OMIT_USAGE)``: the next reply reports no usage at all. As a value in a JSON object
given to :func:`encode_json`, the key is left out."""


def _without_omitted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_omitted(v) for k, v in value.items() if v is not OMIT_USAGE}
    if isinstance(value, list):
        return [_without_omitted(v) for v in value if v is not OMIT_USAGE]
    return value


def encode_json(value: Any) -> bytes:
    """Compact JSON; keys whose value is :data:`OMIT_USAGE` are left out."""
    return json.dumps(_without_omitted(value), separators=(",", ":")).encode("utf-8")


def sse(payload: Any, event: str | None = None) -> bytes:
    """One SSE event: ``data: <json>``, after an ``event: <name>`` line when named."""
    named = b"" if event is None else b"event: " + event.encode() + b"\n"
    return named + b"data: " + encode_json(payload) + b"\n\n"


def retry_now(status: int) -> tuple[tuple[str, str], ...]:
    """Headers that make the openai and anthropic SDKs retry a 429/5xx at once (they ignore a zero
    ``retry-after`` and back off, but honour ``retry-after-ms: 1``)."""
    return (("retry-after", "0"), ("retry-after-ms", "1")) if status == 429 or status >= 500 else ()


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it; credential headers are never recorded."""

    method: str
    path: str
    body: JSONObject | None
    headers: dict[str, str]


@dataclass(frozen=True)
class Reply:
    """An HTTP answer: ``body`` (any JSON value, see :func:`encode_json`) with Content-Length, or
    ``frames`` sent chunked, one frame per chunk."""

    status: int
    body: Any = None
    frames: Sequence[bytes] | None = None
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def stream(cls, frames: Sequence[bytes], *, content_type: str = SSE,
               headers: tuple[tuple[str, str], ...] = ()) -> Reply:
        return cls(200, frames=frames, content_type=content_type, headers=headers)


class ApiError(Exception):
    """An error answer, written in the provider's format by :meth:`LocalServer.error_reply`.

    ``code`` is the provider's error code (OpenAI ``error.code``, Anthropic ``error.type``,
    Bedrock ``x-amzn-ErrorType``; None: the provider's usual one for the status); ``param`` is
    OpenAI's ``error.param``."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param


@dataclass(frozen=True)
class UsageReport:
    """What one reply reports as usage: what the server computed, unless ``usage_next`` replaced it.
    Call it with the computed usage; the result may be :data:`OMIT_USAGE`."""

    replaced: bool = False
    value: Any = None

    def __call__(self, computed: Any) -> Any:
        return self.value if self.replaced else computed

    @property
    def omitted(self) -> bool:
        return self.replaced and self.value is OMIT_USAGE


Endpoint = Callable[[JSONObject], Reply]


@dataclass(frozen=True)
class Bill:
    """The tokens one reply bills (see :meth:`LocalServer.bill_with`); cache writes are part of
    ``input_tokens``."""

    input_tokens: int
    output_tokens: int
    cache_write_tokens: int = 0  # 5-minute cache writes
    cache_write_1h_tokens: int = 0


Biller = Callable[[str, JSONObject], Bill]  # (request path, JSON body) -> what the reply bills


@dataclass
class _Controls:
    failures: deque[ApiError] = field(default_factory=deque)
    usages: deque[Any] = field(default_factory=deque)
    truncations: int = 0
    cut_after: int | None = None
    delays: deque[float] = field(default_factory=deque)
    tool_calls: deque[tuple[str, str]] = field(default_factory=deque)


class _HTTPServer(ThreadingHTTPServer):
    """Knows its LocalServer; accepts bursts of connections."""

    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: LocalServer) -> None:
        self.app = app
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet about clients that hang up (normal for keep-alive pools); loud about real bugs."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # small JSON replies and stream frames leave at once
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.app._connection_opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.app._connection_closed(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests and benchmarks must not drown in access logs."""

    def _dispatch(self) -> None:
        app = self.server.app
        length = self.headers.get("content-length", "0").strip()
        if not length.isdigit() or "transfer-encoding" in self.headers:
            # A body we cannot frame would desynchronise the keep-alive stream: answer, then hang up.
            self.close_connection = True
            error = ApiError(411, "Send the request body with a valid Content-Length header.")
            self._send(app.error_reply(error), truncate=False, cut=None)
            return
        raw = self.rfile.read(int(length))
        reply, truncate, cut = app._answer(self.command, self.path, raw, dict(self.headers.items()))
        self._send(reply, truncate=truncate, cut=cut)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

    def _head(self, reply: Reply, framing: str) -> bytes:
        phrase = self.responses.get(reply.status, ("Error",))[0]
        extra = "".join(f"{name}: {value}\r\n" for name, value in reply.headers)
        close = "Connection: close\r\n" if self.close_connection else ""
        return (f"HTTP/1.1 {reply.status} {phrase}\r\nContent-Type: {reply.content_type}\r\n{framing}{extra}{close}"
                "\r\n").encode("latin-1")

    def _send(self, reply: Reply, *, truncate: bool, cut: int | None) -> None:
        if reply.frames is None:
            body = encode_json(reply.body)
            head = self._head(reply, f"Content-Length: {len(body)}\r\n")
            self.wfile.write(head + (body[: len(body) // 2] if truncate else body))
            if truncate:
                self._hang_up()
            return
        cache = "Cache-Control: no-cache\r\n" if reply.content_type == SSE else ""
        self.wfile.write(self._head(reply, f"{cache}Transfer-Encoding: chunked\r\n"))
        frames = list(reply.frames if cut is None else reply.frames[:cut])
        if truncate:
            frames = _first_half(frames)
        for frame in frames:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(frame), frame))
        if cut is None and not truncate:
            self.wfile.write(b"0\r\n\r\n")
            return
        self._hang_up()  # no terminating chunk: the client sees an incomplete chunked body

    def _hang_up(self) -> None:
        self.close_connection = True
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)


def _first_half(frames: list[bytes]) -> list[bytes]:
    """Whole frames up to the middle of their bytes, then the start of the frame across it."""
    left = sum(map(len, frames)) // 2
    kept = []
    for frame in frames:
        if left <= 0:
            break
        kept.append(frame[:left])
        left -= len(frame)
    return kept


class LocalServer(ABC):
    """A provider's API on a local port; subclasses implement :meth:`route` and :meth:`error_reply`."""

    thread_name = "agentguard-local-server"
    invalid_json_message = "The request body is not a JSON object."

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, reply_words: int = 24) -> None:
        if reply_words < 0:
            raise ValueError("reply_words must be >= 0")
        self.host = host
        self.port = port
        self.reply_words = reply_words
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._controls = _Controls()
        self._connections_accepted = 0
        self._open_connections: set[socket.socket] = set()
        self._ids = itertools.count(1)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._biller: Biller | None = None
        self._handling = threading.local()  # the bill of the request this handler thread answers

    # lifecycle ----------------------------------------------------------------------------------

    def start(self: Server) -> Server:
        """Bind (port 0 picks a free port) and serve from a daemon thread."""
        if self._httpd is not None:
            raise RuntimeError("server already started")
        self._httpd = _HTTPServer((self.host, self.port), self)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop open keep-alive connections, so no stale connection is answered."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            sockets = list(self._open_connections)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join()

    def __enter__(self: Server) -> Server:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server."""
        if self._httpd is None:
            raise RuntimeError("server not started")
        return f"http://{self.host}:{self.port}"

    @property
    def base_path(self) -> str:
        """What the SDK's ``base_url`` adds to :attr:`url` (OpenAI's ``/v1``; none by default)."""
        return ""

    @property
    def base_url(self) -> str:
        """The SDK's ``base_url`` (``endpoint_url`` for boto3)."""
        return self.url + self.base_path

    # recording ----------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Snapshot of every request received since start or the last reset()."""
        with self._lock:
            return list(self._requests)

    @property
    def connections_accepted(self) -> int:
        """TCP connections accepted since start or the last reset() (proves keep-alive reuse)."""
        with self._lock:
            return self._connections_accepted

    def reset(self) -> None:
        """Forget recorded requests, pending controls and the connection count."""
        with self._lock:
            self._requests.clear()
            self._controls = _Controls()
            self._connections_accepted = 0

    # response-shape controls --------------------------------------------------------------------

    def fail_next(self, status: int, *, message: str = "injected failure", code: str | None = None,
                  count: int = 1) -> None:
        """Answer the next ``count`` API requests with the provider's error of HTTP ``status`` and
        ``message`` (``code``: see :class:`ApiError`)."""
        if not 400 <= status <= 599 or count < 1:
            raise ValueError("status must be 4xx/5xx and count >= 1")
        with self._lock:
            self._controls.failures.extend(ApiError(status, message, code=code) for _ in range(count))

    def usage_next(self, value: Any, *, count: int = 1) -> None:
        """Report ``value`` verbatim (any JSON value) as the usage of the next ``count`` replies
        that carry usage, or no usage at all with :data:`OMIT_USAGE`."""
        if count < 1:
            raise ValueError("count must be >= 1")
        if value is not OMIT_USAGE:
            encode_json(value)  # a JSON value, or a TypeError now rather than in the server thread
        with self._lock:
            self._controls.usages.extend([value] * count)

    def truncate_next(self, count: int = 1) -> None:
        """Send the next ``count`` API replies' headers and the first half of their body, then hang up."""
        if count < 1:
            raise ValueError("count must be >= 1")
        with self._lock:
            self._controls.truncations += count

    def cut_stream_after(self, frames: int) -> None:
        """Make the next streaming reply send ``frames`` whole frames (events), then hang up."""
        if frames < 0:
            raise ValueError("frames must be >= 0")
        with self._lock:
            self._controls.cut_after = frames

    def delay_next(self, seconds: float) -> None:
        """Answer the next API request only after ``seconds`` (nothing is sent before then)."""
        if seconds < 0:
            raise ValueError("seconds must be >= 0")
        with self._lock:
            self._controls.delays.append(seconds)

    def call_tool_next(self, name: str, arguments: str = "{}") -> None:
        """Answer the next model request with a call of function tool ``name`` (JSON ``arguments``)."""
        json.loads(arguments)  # a JSON text, or a ValueError now rather than in the server thread
        with self._lock:
            self._controls.tool_calls.append((name, arguments))

    def bill_with(self, biller: Biller | None) -> None:
        """Bill every API reply from now on as ``biller(path, body)`` says (None: the server's own
        token accounting again). Survives :meth:`reset`."""
        self._biller = biller

    # for subclasses -----------------------------------------------------------------------------

    def current_bill(self) -> Bill | None:
        """What the reply being built bills under :meth:`bill_with`; None: the server's own accounting."""
        return getattr(self._handling, "bill", None)

    @abstractmethod
    def route(self, method: str, path: str) -> Endpoint | None:
        """The endpoint answering ``method path``; None: a 404 (:meth:`not_found`)."""

    @abstractmethod
    def error_reply(self, error: ApiError) -> Reply:
        """``error`` in the provider's format."""

    def not_found(self, method: str, path: str) -> Reply:
        return self.error_reply(ApiError(404, f"Not found: {method} {path}"))

    def service_reply(self, method: str, path: str) -> Reply | None:
        """The answer to a request that is not an API call (no control applies to it); None: none."""
        return None

    def record(self, method: str, path: str, body: JSONObject | None, headers: dict[str, str]) -> RecordedRequest:
        """What :attr:`requests` keeps of one request (``headers`` are already without credentials)."""
        return RecordedRequest(method, path, body, headers)

    def take_usage(self) -> UsageReport:
        """Consume the pending ``usage_next``, if any: call while building a reply that carries usage."""
        with self._lock:
            if not self._controls.usages:
                return UsageReport()
            return UsageReport(True, self._controls.usages.popleft())

    def take_tool_call(self) -> tuple[str, str] | None:
        """Consume the pending ``call_tool_next`` (name, arguments), if any: call while building a
        model reply."""
        with self._lock:
            return self._controls.tool_calls.popleft() if self._controls.tool_calls else None

    def next_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):024x}"

    # request handling ---------------------------------------------------------------------------

    def _answer(self, method: str, path: str, raw: bytes,
                headers: Mapping[str, str]) -> tuple[Reply, bool, int | None]:
        """(reply, truncate it, frames to cut its stream after)."""
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        body = parsed if isinstance(parsed, dict) else None
        kept = {k.lower(): v for k, v in headers.items() if k.lower() not in SECRET_HEADERS}
        recorded = self.record(method, path, body, kept)
        with self._lock:
            self._requests.append(recorded)
        service = self.service_reply(method, path)
        if service is not None:
            return service, False, None
        endpoint = self.route(method, path)
        if endpoint is None:
            return self.not_found(method, path), False, None
        with self._lock:
            controls = self._controls
            failure = controls.failures.popleft() if controls.failures else None
            truncate = controls.truncations > 0
            if truncate:
                controls.truncations -= 1
            delay = controls.delays.popleft() if controls.delays else 0.0
        time.sleep(delay)
        biller = self._biller
        self._handling.bill = biller(path, body) if biller is not None and body is not None else None
        reply = self.error_reply(failure) if failure is not None else self._call(endpoint, body)
        cut = None
        if reply.frames is not None:
            with self._lock:
                cut, self._controls.cut_after = self._controls.cut_after, None
        return reply, truncate, cut

    def _call(self, endpoint: Endpoint, body: JSONObject | None) -> Reply:
        try:
            if body is None:
                raise ApiError(400, self.invalid_json_message)
            return endpoint(body)
        except ApiError as error:
            return self.error_reply(error)

    def _connection_opened(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections_accepted += 1
            self._open_connections.add(sock)

    def _connection_closed(self, sock: socket.socket) -> None:
        with self._lock:
            self._open_connections.discard(sock)
