"""pytest plugin loaded into BOTH runs of an SDK's own suite (``-p offline_plugin``, with this folder
on PYTHONPATH): the same deselection and the same tripwire, so plain and shadow runs see one test set.

Stainless SDKs (``openai``, ``anthropic``) test their generated resource methods against a mock
server of the API spec (Prism / Steady on ``TEST_API_BASE_URL``, default ``http://127.0.0.1:4010``),
which is not available here. Such a test takes the suite's root-conftest ``client`` /
``async_client`` fixture (built with ``base_url`` = the mock server) and mocks no HTTP
(``respx_mock`` / ``respx2_mock``): those are the *candidates*. Many candidates never send a request
(webhook verification, response parsing), so which candidates need the server is measured once:

* probe (``SDK_SUITES_PROBE=1``): only the candidates run, and a socket connect to the mock
  server's address records the test in ``$SDK_SUITES_TRIPWIRE`` and raises at once (a
  ``BaseException``, which no SDK retry loop catches, so no test waits out retries and back-off);
* the two compared runs (``SDK_SUITES_DESELECT=<file>``): the tests the probe recorded are
  deselected, nothing else; the tripwire only records, so a test that reaches the mock server in a
  compared run all the same is reported rather than hidden.
"""

from __future__ import annotations

import inspect
import ipaddress
import os
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

MOCK_SERVER_FIXTURES = ("client", "async_client")
HTTP_MOCK_FIXTURES = ("respx_mock", "respx2_mock")

_mock_url = urlsplit(os.environ.get("TEST_API_BASE_URL") or "http://127.0.0.1:4010")
_mock_port = _mock_url.port or (443 if _mock_url.scheme == "https" else 80)
_mock_host = _mock_url.hostname or "127.0.0.1"
_PROBE = os.environ.get("SDK_SUITES_PROBE") == "1"
_current = {"test": "<outside a test>"}
_lock = threading.Lock()


class MockServerNeeded(BaseException):  # a BaseException: no SDK retry loop catches it
    """Raised in a probe run when a test connects to the mock API server."""


def _is_mock_address(address: Any) -> bool:
    if not isinstance(address, tuple) or len(address) < 2 or address[1] != _mock_port:
        return False
    host = str(address[0])
    if host in (_mock_host, "localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback and _mock_host in ("127.0.0.1", "localhost", "::1")
    except ValueError:
        return False


def _record(sock: socket.socket, address: Any) -> None:
    path = os.environ.get("SDK_SUITES_TRIPWIRE")
    if path:
        with _lock, open(path, "a", encoding="utf-8") as out:
            out.write(f"{_current['test']}\t{address!r}\n")
    if _PROBE:
        # closed here: left to the garbage collector, its ResourceWarning (an error under the suites'
        # filterwarnings) would fail the setup of whichever test runs next, before that one connects
        sock.close()
        raise MockServerNeeded(f"connect to the mock API server at {address!r}")


_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex


def _tripwire_connect(self: socket.socket, address: Any) -> None:
    if _is_mock_address(address):
        _record(self, address)
    return _connect(self, address)


def _tripwire_connect_ex(self: socket.socket, address: Any) -> int:
    if _is_mock_address(address):
        _record(self, address)
    return _connect_ex(self, address)


socket.socket.connect = _tripwire_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _tripwire_connect_ex  # type: ignore[method-assign]


def _fixture_file(fixturedefs: Any) -> Path | None:
    if not fixturedefs:
        return None
    func = fixturedefs[-1].func  # the definition that applies to this test (the closest override)
    try:
        return Path(inspect.getfile(inspect.unwrap(func))).resolve()
    except (TypeError, OSError):
        return None


def is_candidate(item: pytest.Item, root_conftest: Path) -> bool:
    """The test takes the root conftest's mock-server client and mocks no HTTP."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    names = set(info.names_closure)
    if names & set(HTTP_MOCK_FIXTURES):
        return False
    return any(name in names and _fixture_file(info.name2fixturedefs.get(name)) == root_conftest
               for name in MOCK_SERVER_FIXTURES)


def _write_once(env: str, lines: list[str]) -> None:
    path = os.environ.get(env)
    # every xdist worker collects the same items: one writer is enough
    if path and os.environ.get("PYTEST_XDIST_WORKER", "gw0") == "gw0":
        Path(path).write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    if _PROBE:
        root_conftest = (Path(str(config.rootpath)) / "tests" / "conftest.py").resolve()
        drop = {i.nodeid for i in items if not is_candidate(i, root_conftest)}
        _write_once("SDK_SUITES_CANDIDATES", [i.nodeid for i in items if i.nodeid not in drop])
    else:
        listing = os.environ.get("SDK_SUITES_DESELECT")
        drop = set(Path(listing).read_text(encoding="utf-8").splitlines()) if listing else set()
    kept = [i for i in items if i.nodeid not in drop]
    dropped = [i for i in items if i.nodeid in drop]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
    _write_once("SDK_SUITES_DESELECTED", [i.nodeid for i in dropped])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    _current["test"] = item.nodeid
    try:
        yield
    finally:
        _current["test"] = "<between tests>"
