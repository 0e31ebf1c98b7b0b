"""``agentguard serve``: the local console and its JSON API on the standard library's HTTP server.

Read-only by construction: GET only; the ledger is read from a copy (``usage.read_states``), the
receipt logs are opened for reading. On a loopback address a request must name that address in its
``Host`` (a web page that re-binds its DNS name to 127.0.0.1 cannot read the console); any other
address needs ``--auth-token``, and then every request carries ``Authorization: Bearer TOKEN``, or
``?token=TOKEN`` for the HTML pages, compared in constant time. Request logs never show a query
string (a token may be in it).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agentguard_otel.console import pages
from agentguard_otel.console.records import (
    TRACE_ID,
    Entry,
    Status,
    Verdicts,
    calls,
    chains,
    newest,
    receipt_files,
    view,
)
from agentguard_otel.console.usage import Counter, counters, read_states, shown_url, usage_json
from agentguard_otel.errors import AgentGuardError
from agentguard_otel.policy import Policy
from agentguard_otel.receipts.page import verify_page_html
from agentguard_otel.receipts.verify import segment_order

DEFAULT_LIMIT = 50
MAX_LIMIT = 5000


class BadRequest(ValueError):
    """A query the console cannot answer (a bad limit); its text is the answer."""


@dataclass
class Console:
    """What the console reads: a ledger URL, receipt directories or files, the trusted keys."""

    ledger: str
    receipts: list[Path]
    keys: Mapping[str, Ed25519PublicKey]
    key_pems: list[tuple[str, str]]  # (file name, PEM text) for the in-browser verifier
    policy: Policy | None = None

    def __post_init__(self) -> None:
        self.verdicts = Verdicts(self.keys)

    def files(self) -> list[Path]:
        return receipt_files(self.receipts)

    def judged(self) -> tuple[list[Path], Callable[[Entry], Status]]:
        """The receipt files and each line's verdict (chains verified again only where they grew)."""
        files = self.files()
        return files, self.verdicts.judge(files)

    def counters(self) -> list[Counter]:
        return counters(read_states(self.ledger), self.policy)

    def footer(self) -> str:
        where = ", ".join(str(p) for p in self.receipts) or "none"
        return pages.esc(f"ledger {shown_url(self.ledger)} · receipts {where} · trusted keys "
                        f"{', '.join(sorted(self.keys)) or 'none'} · read-only")


def _limit(query: Mapping[str, str]) -> int:
    text = query.get("limit") or str(DEFAULT_LIMIT)
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise BadRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}, got {text!r}")
    return int(text)


def _choice(query: Mapping[str, str], name: str, options: tuple[str, ...]) -> str | None:
    value = query.get(name) or None
    if value is not None and value not in options:
        raise BadRequest(f"{name} must be one of {', '.join(options)}, got {value!r}")
    return value


def _matcher(query: Mapping[str, str]) -> Callable[[Entry], bool]:
    """The receipts a query asks for: by kind, action, trace id and scope values (all optional)."""
    kind = _choice(query, "kind", pages.KINDS)
    action = _choice(query, "action", pages.ACTIONS)
    trace = (query.get("trace") or "").strip().lower() or None
    if trace is not None and not TRACE_ID.fullmatch(trace):
        raise BadRequest(f"trace must be a trace id of 32 hex digits, got {query['trace']!r}")
    wanted = {name: query[name] for name in pages.SCOPE_FILTERS if query.get(name)}

    def match(entry: Entry) -> bool:
        if kind is not None and entry.text("kind") != kind:
            return False
        if action is not None and entry.text("action") != action:
            return False
        if trace is not None and entry.trace_id != trace:
            return False
        scope = entry.scope
        return all(scope.get(name) == value for name, value in wanted.items())

    return match


class _Handler(BaseHTTPRequestHandler):
    server: ConsoleServer
    server_version = "agentguard-console"
    sys_version = ""
    timeout = 30  # seconds a client may take to send its request: a silent one does not keep a thread

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {name: values[-1] for name, values in parse_qs(url.query).items()}
        api = url.path.startswith("/api/")
        if not self._allowed(query, api):
            return
        routes: dict[str, Callable[[Mapping[str, str]], None]] = {
            "/": self._spend, "/decisions": self._decisions, "/receipts": self._receipts, "/verify": self._verify,
            "/api/usage": self._api_usage, "/api/receipts": self._api_receipts,
        }
        route = routes.get(url.path)
        if route is None:
            self._error(HTTPStatus.NOT_FOUND, f"no such page: {url.path}", api)
            return
        try:
            route(query)
        except BadRequest as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc), api)
        except (AgentGuardError, OSError) as exc:
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, f"{type(exc).__name__}: {exc}", api)

    def _refuse(self) -> None:
        self._error(HTTPStatus.METHOD_NOT_ALLOWED, "the console is read-only: GET only", True)

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

    def _allowed(self, query: Mapping[str, str], api: bool) -> bool:
        # A page of another site may make the browser send requests here (with the loopback Host): a
        # browser says so in Sec-Fetch-Site, and the console answers only its own pages and people.
        if self.headers.get("Sec-Fetch-Site", "none").lower() not in ("same-origin", "none"):
            self._error(HTTPStatus.FORBIDDEN, "the console answers requests from its own pages only", api)
            return False
        token = self.server.token
        if token is None:
            if self.headers.get("Host", "").lower() not in self.server.hosts:
                self._error(HTTPStatus.MISDIRECTED_REQUEST, "this console answers to its own address only", api)
                return False
            return True
        given = self.headers.get("Authorization", "")
        offered = given[7:] if given.startswith("Bearer ") else (query.get("token", "") if not api else "")
        if hmac.compare_digest(offered.encode("utf-8", "surrogateescape"), token.encode("utf-8")):
            return True
        self._error(HTTPStatus.UNAUTHORIZED, "send Authorization: Bearer <token>"
                    + ("" if api else " or add ?token=<token>"), api, {"WWW-Authenticate": "Bearer"})
        return False

    def _page_token(self, query: Mapping[str, str]) -> str | None:
        """The ``?token=`` a page was opened with, carried on its links (a header token is not)."""
        return query.get("token") if self.server.token is not None else None

    def _page(self, title: str, current: str, body: str, query: Mapping[str, str], script: str | None = None) -> None:
        self._html(pages.layout(title, current, body, token=self._page_token(query),
                                footer=self.server.console.footer(), script=script))

    def _spend(self, query: Mapping[str, str]) -> None:
        self._page("Spend per tenant, team and task", "/", pages.spend_body(self.server.console.counters()), query)

    def _decisions(self, query: Mapping[str, str]) -> None:
        files, judge = self.server.console.judged()
        found = calls(files, _matcher(query), _limit(query))
        body = pages.decisions_body([(call, judge(call.decision)) for call in found], query,
                                    self._page_token(query))
        self._page("Recent decisions", "/decisions", body, query)

    def _receipts(self, query: Mapping[str, str]) -> None:
        console = self.server.console
        files, judge = console.judged()
        summary = []
        for group in chains(files):
            report, _ = console.verdicts.report(group)
            error = report.first_error
            status: Status = {"status": "ok", "reason": None} if error is None else {
                "status": "bad", "reason": f"{error['file']}:{error['line']} seq {error['seq']}: {error['reason']}"}
            directory, stem, _ = segment_order(group[0])
            summary.append((str(Path(directory) / stem), status, report.receipts))
        found = newest(files, _matcher(query), _limit(query))
        body = pages.receipts_body([(entry, judge(entry)) for entry in found], pages.chains_body(summary),
                                   query, self._page_token(query)) + pages.keys_block(console.key_pems)
        self._page("Receipts and their verification", "/receipts", body, query, pages.receipts_script())

    def _verify(self, query: Mapping[str, str]) -> None:
        self._html(verify_page_html())

    def _api_usage(self, query: Mapping[str, str]) -> None:
        self._json(usage_json(self.server.console.counters(), query.get("tenant") or None))

    def _api_receipts(self, query: Mapping[str, str]) -> None:
        files, judge = self.server.console.judged()
        found = newest(files, _matcher(query), _limit(query))
        self._json({"receipts": [view(entry, judge(entry)) for entry in found]})

    def _html(self, page: str) -> None:
        self._send(HTTPStatus.OK, page.encode("utf-8"), "text/html; charset=utf-8", pages.csp_for(page))

    def _json(self, value: Any, status: HTTPStatus = HTTPStatus.OK) -> None:
        self._send(status, json.dumps(value, indent=2).encode("utf-8"), "application/json")

    def _error(self, status: HTTPStatus, message: str, api: bool, extra: Mapping[str, str] | None = None) -> None:
        if api:
            self._send(status, json.dumps({"error": message}).encode("utf-8"), "application/json", extra=extra)
        else:
            page = pages.layout(f"{status.value} {status.phrase}", "", f"<p>{pages.esc(message)}</p>", token=None,
                                footer="")
            self._send(status, page.encode("utf-8"), "text/html; charset=utf-8", pages.csp_for(page), extra)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, csp: str | None = None,
              extra: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", csp or "default-src 'none'; frame-ancestors 'none'")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """One line per request on stderr, without the query string (a token may be in it)."""
        path = urlsplit(self.path).path if hasattr(self, "path") else "-"
        code = args[1] if len(args) > 1 and format.startswith('"%s"') else "-"
        sys.stderr.write(f"{self.address_string()} {self.command or '-'} {path} {code}\n")


class ConsoleServer(ThreadingHTTPServer):
    """The console's HTTP server (one thread a request)."""

    daemon_threads = True

    def __init__(self, console: Console, host: str, port: int, token: str | None) -> None:
        if token is not None and not token:
            raise AgentGuardError("--auth-token must not be empty")
        if token is None and not is_loopback(host):
            raise AgentGuardError(f"serve binds {host} only with --auth-token (any address but loopback "
                                  "can be reached by others)")
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _Handler)
        self.console = console
        self.token = token
        bound = self.server_address[1]
        self.hosts = {f"{name}:{bound}" for name in ("127.0.0.1", "localhost", "[::1]", _url_host(host))}

    @property
    def url(self) -> str:
        return f"http://{_url_host(str(self.server_address[0]))}:{self.server_address[1]}/"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
