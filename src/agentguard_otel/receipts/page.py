"""The self-contained /verify page: receipts verified in the auditor's browser, nothing installed.

The page is one HTML file with its script and style inline, so it works opened from disk and needs no
network; its Content-Security-Policy allows exactly that inline script and style (by their SHA-256),
nothing else. ``verifier_script()`` is the verifier alone, for a page that verifies receipts in place
(``verifyReceiptLine``, ``verifyLog``); it reproduces ``verify()``'s checks and reason texts.
"""

from __future__ import annotations

import base64
import hashlib
from importlib import resources
from pathlib import Path

from agentguard_otel.receipts.keys import StrPath

_PACKAGE = "agentguard_otel.receipts"


def _asset(name: str) -> str:
    return resources.files(_PACKAGE).joinpath(name).read_text(encoding="utf-8")


def verifier_script() -> str:
    """The JavaScript verifier: defines ``AgentGuardVerify`` (``verifyReceiptLine(line, keys)``,
    ``verifyLog(files, keys, expectHeads, onProgress)``, ``loadKeys(files)``) on ``globalThis``."""
    return _asset("verify.js")


def _csp_source(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def verify_page_html() -> str:
    """The whole page: verifier, UI script and style inline, a CSP that permits nothing else."""
    script = verifier_script() + "\n" + _asset("verify_ui.js")
    style = _asset("verify_page.css")
    if "</" in script or "</" in style:  # would end the inline element early
        raise ValueError("the verify page's script or style contains '</'")
    csp = (f"default-src 'none'; script-src {_csp_source(script)}; style-src {_csp_source(style)}; "
           "img-src data:; base-uri 'none'; form-action 'none'")
    return (_asset("verify_page.html").replace("{{CSP}}", csp).replace("{{STYLE}}", style)
            .replace("{{SCRIPT}}", script))


def write_verify_page(output: StrPath) -> Path:
    """Write the page to ``output`` (UTF-8); returns the path written."""
    target = Path(output)
    target.write_text(verify_page_html(), encoding="utf-8")
    return target
