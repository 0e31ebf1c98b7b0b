"""The self-contained verify page, in Chromium opened from file://: the CLI's verdict and reason on every
tampering, shared receipt links, progress on a large log, and the canonical form byte for byte."""

from __future__ import annotations

import base64
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa, x25519
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from playwright.sync_api import Page

from agentguard_otel.cli import main
from agentguard_otel.receipts import ReceiptWriter, SigningKey, canonical_json, load_public_keys, verify
from agentguard_otel.receipts.page import verifier_script, verify_page_html
from tests.receipts.conftest import decision_body, segments
from tests.receipts.strategies import receipt_values

from . import tamper


@pytest.fixture(scope="module")
def page_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The page as ``agentguard verify-page`` writes it."""
    path = tmp_path_factory.mktemp("page") / "verify.html"
    assert main(["verify-page", "--output", str(path)]) == 0
    return path


def cli_lines(case: tamper.Case, root: Path, capsys: pytest.CaptureFixture[str],
              monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What ``agentguard verify`` prints for the case, files named relative to their directory (the
    names a browser gives picked files)."""
    monkeypatch.chdir(root)
    args = ["verify", *(p.name for p in case.files)]
    for key in case.keys:
        args += ["--public-key", key.name]
    for head in case.expect:
        args += ["--expect-head", head]
    capsys.readouterr()
    main(args)
    return capsys.readouterr().out.splitlines()


def page_verdict(page: Page, case: tamper.Case) -> tuple[str, str, str]:
    """Pick the case's files in the page, verify; (data-verdict, verdict text, summary text)."""
    page.set_input_files("#receipts", [str(p) for p in case.files])
    page.set_input_files("#keys", [str(p) for p in case.keys])
    page.fill("#expect-head", " ".join(case.expect))
    page.click("#verify")
    page.wait_for_selector("#verdict[data-verdict]")
    return (page.get_attribute("#verdict", "data-verdict") or "", page.inner_text("#verdict"),
            page.inner_text("#summary"))


@pytest.mark.parametrize("name", list(tamper.CASES))
def test_the_page_reaches_the_cli_verdict_and_reason(name: str, page: Page, page_file: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    case = tamper.build(name, tmp_path / "case")
    expected = cli_lines(case, tmp_path / "case", capsys, monkeypatch)
    page.goto(page_file.as_uri())
    verdict, text, summary = page_verdict(page, case)
    assert text == expected[-1]
    assert summary.splitlines() == expected[:-1]
    assert verdict == ("ok" if expected[-1].startswith("OK: ") else "bad")


def test_the_corpus_covers_ok_and_every_kind_of_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    reasons = set()
    for name in tamper.CASES:
        root = tmp_path / name
        last = cli_lines(tamper.build(name, root), root, capsys, monkeypatch)[-1]
        reasons.add("OK" if last.startswith("OK: ") else re.sub(r"[:(].*", "", last.split(": ", 2)[2]))
    assert reasons >= {"OK", "hash mismatch", "untrusted key ed25519", "bad signature", "edited line",
                       "out of order", "missing start", "truncated", "missing chain", "torn last line",
                       "malformed line", "malformed receipt", "broken link", "bad checkpoint",
                       "key_id ed25519"}


def _log(directory: Path, key: SigningKey, count: int, **options: Any) -> list[Path]:
    writer = ReceiptWriter(directory, key, **options)
    for n in range(count):
        writer.append("decision", {**decision_body(n), "note": "x" * (n % 50)})
    writer.close()
    return segments(directory)


def test_a_large_log_verifies_with_progress_to_100_percent(page: Page, page_file: Path, tmp_path: Path) -> None:
    key = SigningKey.generate(tmp_path / "signer.key")
    files = _log(tmp_path / "log", key, 12_000, segment_max_bytes=2 << 20)
    assert len(files) > 1
    page.set_default_timeout(180_000)  # a few seconds here; CI machines are shared
    page.goto(page_file.as_uri())
    page.evaluate("""() => { window.seen = [];
        new MutationObserver(() => window.seen.push(document.getElementById('progress').value))
          .observe(document.getElementById('progress'), {attributes: true}); }""")
    verdict, text, summary = page_verdict(page, tamper.Case(files, [tmp_path / "signer.key.pub"]))
    assert (verdict, text) == ("ok", "OK: every receipt verifies against the trusted keys")
    report = verify(files, load_public_keys([tmp_path / "signer.key.pub"]))
    assert report.receipts > 12_000
    assert summary.splitlines()[0] == f"receipts checked: {report.receipts} in 1 chain(s)"
    assert page.inner_text("#progress-text") == "100.0%"
    seen = page.evaluate("window.seen")
    assert len(seen) > 3 and seen == sorted(seen) and seen[-1] == 100 and 0 < seen[1] < 100


def _shared_link(page_file: Path, line: bytes) -> str:
    return page_file.as_uri() + "#r=" + base64.urlsafe_b64encode(line).decode().rstrip("=")


def test_a_shared_receipt_link_verifies_against_the_auditors_key(page: Page, page_file: Path,
                                                                   tmp_path: Path) -> None:
    key = SigningKey.generate(tmp_path / "signer.key")
    lines = _log(tmp_path / "log", key, 3)[0].read_bytes().splitlines()
    line = lines[1]
    receipt = json.loads(line)
    page.goto(_shared_link(page_file, line))
    assert page.inner_text("#fields tr:has(th:text-is('hash')) td") == receipt["hash"]
    assert page.inner_text("#fields tr:has(th:text-is('estimated_nano')) td") == str(receipt["estimated_nano"])
    page.set_input_files("#keys", str(tmp_path / "signer.key.pub"))
    page.wait_for_selector("#verdict[data-verdict]")
    assert page.get_attribute("#verdict", "data-verdict") == "ok"
    assert page.inner_text("#verdict") == (f"OK: receipt chain {receipt['chain']} seq 1 verifies "
                                           "against the trusted keys")
    # Another link opened in the same tab is read and verified with the key already picked.
    page.evaluate("(hash) => { location.hash = hash; }", _shared_link(page_file, lines[2]).split("#", 1)[1])
    page.wait_for_selector("#verdict:has-text('seq 2 ')")  # (wait_for_function polls by eval: the CSP refuses)
    assert page.get_attribute("#verdict", "data-verdict") == "ok"
    assert page.inner_text("#fields tr:has(th:text-is('seq')) td") == "2"


@pytest.mark.parametrize(("old", "new", "reason"), [
    (b'"estimated_nano":1234568', b'"estimated_nano":1', "hash mismatch: the receipt was edited"),
    (b"", b"", "untrusted key {key_id}"),
    (b'"}', b'"} ', "edited line: its bytes are not the serialization of the signed receipt"),
])
def test_a_tampered_or_foreign_shared_receipt_fails(old: bytes, new: bytes, reason: str, page: Page,
                                                    page_file: Path, tmp_path: Path) -> None:
    key = SigningKey.generate(tmp_path / "signer.key")
    stranger = SigningKey.generate(tmp_path / "stranger.key")
    line = _log(tmp_path / "log", key, 3)[0].read_bytes().splitlines()[1]
    trusted = "stranger.key.pub" if "untrusted" in reason else "signer.key.pub"
    page.goto(_shared_link(page_file, line.replace(old, new, 1) if old else line))
    page.set_input_files("#keys", str(tmp_path / trusted))
    page.wait_for_selector("#verdict[data-verdict]")
    assert page.get_attribute("#verdict", "data-verdict") == "bad"
    chain = json.loads(line)["chain"]
    assert page.inner_text("#verdict") == (f"FAILED: shared receipt chain {chain} seq 1: "
                                           + reason.format(key_id=key.key_id))
    assert stranger.key_id != key.key_id


def _public_pem(private: Any) -> bytes:
    return bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo))


BAD_KEY_FILES: dict[str, Any] = {
    "private key": lambda case: (case / "signer.key").read_bytes(),
    "raw seed": lambda case: bytes(range(32)),
    "hex seed": lambda case: b"ab" * 32 + b"\n",
    "empty": lambda case: b"",
    "text between blocks": lambda case: (case / "signer.key.pub").read_bytes() + b"# ok\n\nnot a comment\n",
    "another PEM label": lambda case: b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    "text after a carriage return": lambda case: b"# note\rnot a comment\n" + (case / "signer.key.pub").read_bytes(),
    "no-break space": lambda case: b"\xa0\n" + (case / "signer.key.pub").read_bytes(),
    "RSA key": lambda case: _public_pem(rsa.generate_private_key(65537, 2048)),
    "EC key": lambda case: _public_pem(ec.generate_private_key(ec.SECP256R1())),
    "Ed448 key": lambda case: _public_pem(ed448.Ed448PrivateKey.generate()),
    "X25519 key": lambda case: _public_pem(x25519.X25519PrivateKey.generate()),
}


@pytest.mark.parametrize(("keys", "expect"), [*((name, []) for name in BAD_KEY_FILES), (None, ["no-equals-sign"]),
                                              (None, ["chain="])])
def test_keys_and_expected_heads_the_cli_refuses_are_refused_alike(keys: str | None, expect: list[str], page: Page,
                                                                   page_file: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "case"
    case = tamper.build("valid", root)
    if keys is not None:
        (root / "given.pub").write_bytes(BAD_KEY_FILES[keys](root))
        case.keys = [root / "given.pub"]
    case.expect = expect
    monkeypatch.chdir(root)
    args = ["verify", case.files[0].name, "--public-key", case.keys[0].name]
    assert main([*args, *(f"--expect-head={head}" for head in expect)]) == 2
    expected = capsys.readouterr().err.strip()
    page.goto(page_file.as_uri())
    verdict, text, _ = page_verdict(page, case)
    assert (verdict, text) == ("error", expected)


def test_without_receipt_files_the_page_asks_for_them(page: Page, page_file: Path, tmp_path: Path) -> None:
    """Zero receipts would verify (as an empty directory does for the CLI): the page asks instead."""
    case = tamper.build("valid", tmp_path / "case")
    page.goto(page_file.as_uri())
    assert page_verdict(page, tamper.Case([], case.keys))[:2] == ("error", "Pick the receipt segment files first.")
    page.set_input_files("#keys", [])
    page.click("#verify")
    page.wait_for_selector("#verdict:has-text('key')")
    assert page.inner_text("#verdict") == "Pick the trusted public key file(s) first."


def test_the_page_fetches_nothing_and_allows_only_its_own_inline_code(page: Page, page_file: Path) -> None:
    html = verify_page_html()
    assert page_file.read_text(encoding="utf-8") == html
    assert verifier_script() in html
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", html)
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html)
    assert csp is not None and "default-src 'none'" in csp.group(1) and "unsafe" not in csp.group(1)
    requests: list[str] = []
    console: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.on("console", lambda message: console.append(message.text))
    page.goto(page_file.as_uri())
    assert page.evaluate("typeof globalThis.AgentGuardVerify") == "object"
    assert requests == [page_file.as_uri()]
    # The inline style is allowed by its hash too: it applies.
    assert page.evaluate("getComputedStyle(document.querySelector('main')).maxWidth") == "832px"
    blocked = page.evaluate("""async () => { try { await fetch('http://127.0.0.1:9/'); return 'fetched'; }
                                             catch (e) { return 'blocked'; } }""")
    assert blocked == "blocked"
    violations = [text for text in console if "Content Security Policy" in text]
    assert violations and all("127.0.0.1:9" in text for text in violations)  # only the fetch, not the page


# Receipt-shaped values as JSON text, plus integers of any size (parsed exactly, refused past 2**53 - 1).
json_values = st.recursive(
    st.one_of(receipt_values, st.integers()),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=4), children,
                                                                               max_size=4)),
    max_leaves=20,
)


def _python_canonical(text: str) -> str:
    try:
        return canonical_json(json.loads(text)).decode("utf-8")
    except (TypeError, ValueError) as exc:
        return f"error: {exc}"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=json_values, ascii_only=st.booleans())
def test_the_js_canonical_form_is_the_python_one(value: Any, ascii_only: bool, page: Page, page_file: Path) -> None:
    if page.url != page_file.as_uri():
        page.goto(page_file.as_uri())
    text = json.dumps(value, ensure_ascii=ascii_only)
    got = page.evaluate("""(text) => { const V = AgentGuardVerify;
        try { return V.canonicalText(V.parseLine(new TextEncoder().encode(text + '\\n')).value); }
        catch (e) { if (!(e instanceof Error) || e instanceof TypeError) throw e; return 'error: ' + e.message; } }""",
                        text)
    assert got == _python_canonical(text)


@pytest.fixture(scope="module")
def flip_source(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[bytes], Path]:
    """A short log whose lines hold escapes, non-ASCII, nested values and checkpoints; its key file."""
    directory = tmp_path_factory.mktemp("flip")
    key = SigningKey.generate(directory / "signer.key")
    writer = ReceiptWriter(directory / "log", key, checkpoint_every=2)
    writer.append("decision", {**decision_body(0), "note": "ctl \x01\x1f \" \\ é 😀 \u2028"})
    writer.append("settlement", {"decision": "ab" * 32, "usage": {"input_tokens": 12, "output": [1, None]}})
    writer.append("decision", decision_body(2))
    writer.close()
    (path,) = segments(directory / "log")
    return path.read_bytes().splitlines(keepends=True), directory / "signer.key.pub"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_flipped_byte_gets_the_cli_reason(data: st.DataObject, flip_source: tuple[list[bytes], Path],
                                              page: Page, page_file: Path) -> None:
    lines, key_file = flip_source
    index = data.draw(st.integers(0, len(lines) - 1), label="line")
    position = data.draw(st.integers(0, len(lines[index]) - 1), label="byte")
    mask = data.draw(st.sampled_from([1, 2, 4, 8, 16, 32, 64, 128]) | st.integers(1, 255), label="xor")
    line = bytearray(lines[index])
    line[position] ^= mask
    log = b"".join([*lines[:index], bytes(line), *lines[index + 1:]])
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "flipped.00000.ndjson"
        path.write_bytes(log)
        expected = verify([path], load_public_keys([key_file])).as_dict()
    if page.url != page_file.as_uri():
        page.goto(page_file.as_uri())
    got = page.evaluate("""async ([log, key]) => { const V = AgentGuardVerify;
        const keys = await V.loadKeys([{name: 'signer.key.pub', bytes: V.base64Decode(key)}]);
        const report = await V.verifyLog([{name: 'flipped.00000.ndjson', bytes: V.base64Decode(log)}], keys, []);
        if (report.first_error) report.first_error.seq = report.first_error.seq?.toString() ?? null;
        return report; }""", [base64.b64encode(log).decode(), base64.b64encode(key_file.read_bytes()).decode()])
    error = expected["first_error"]
    if error is not None:
        error["file"] = error["file"] and "flipped.00000.ndjson"
        error["seq"] = None if error["seq"] is None else str(error["seq"])
    for name in ("ok", "receipts", "first_error"):
        assert got[name] == expected[name], (index, position, mask)


class _FloatText(str):
    """A float as its literal: the page keeps a float's text (it only ever reports its type)."""

    def __repr__(self) -> str:
        return str(self)


def _python_reading(raw: bytes) -> str:
    """How verify's stdlib path reads a line: the repr of its value, or the error message."""
    try:
        return "value: " + repr(json.loads(raw, parse_float=_FloatText, parse_constant=_FloatText))
    except ValueError as exc:
        return f"error: {exc}"


json_noise = st.lists(st.sampled_from([
    "{", "}", "[", "]", ",", ":", '"', "\\", "\\u", "d83d", "de00", "00e9", "0", "1", "-", ".", "e", "E", "+", "nul",
    "null", "true", "false", "NaN", "Infinity", "-Infinity", " ", "\t", "\r", "\n", "a", "é", "😀", "\x01", "\u2028",
    "\ufeff", '"k"', '"v":', '"x\'y"', "12345678901234567890123", "1.5e3", "\\n", "\\/", "\\x", '\\"',
]), max_size=24).map("".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=st.one_of(json_noise.map(lambda text: text.encode("utf-8", "surrogatepass")),
                      st.builds(lambda text, tail: text.encode() + tail, json_noise, st.binary(max_size=6)),
                      st.binary(max_size=12)))
def test_a_line_reads_as_json_loads_reads_it(line: bytes, page: Page, page_file: Path) -> None:
    if page.url != page_file.as_uri():
        page.goto(page_file.as_uri())
    got = page.evaluate("""(raw) => { const V = AgentGuardVerify;
        try { return 'value: ' + V.pyRepr(V.parseLine(V.base64Decode(raw)).value); }
        catch (e) { if (e instanceof TypeError || e instanceof RangeError) throw e;
                    return 'error: ' + e.message; } }""",
                        base64.b64encode(line + b"\n").decode())
    assert got == _python_reading(line + b"\n")
