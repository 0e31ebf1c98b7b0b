"""Signed capability claims: the only way a capability crosses a process boundary. A claim grants
its capability when an issuer the policy lists signed it, it is valid now, and every scope field it
binds matches the call's; anything else blocks with the reason."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import baggage, context

from agentguard_otel import AgentGuardBlocked, scope
from agentguard_otel.cli import main as agentguard
from agentguard_otel.receipts import SigningKey
from agentguard_otel.scope import CapabilityClaim, ClaimRefused, Scope, encode_claim, verify_claim
from tests.conftest import GuardFactory


def _policy(tmp_path: Path) -> dict[str, Any]:
    key = tmp_path / "idp.key"
    if not key.exists():
        SigningKey.generate(key)
    return {"version": 1, "mode": "enforce",
            "capability_issuers": [{"id": "payments-idp", "public_key": str(key) + ".pub"}],
            "rules": [{"id": "pay", "match": {"task": "payment-approval"}, "require_capability": "payment_execute"}]}


def _claim(key_path: Path, *, issuer: str = "payments-idp", ttl: int = 900, start: int | None = None,
           **bound: str) -> str:
    now = int(time.time()) if start is None else start
    claim = CapabilityClaim(issuer=issuer, capability="payment_execute", scope=bound, not_before=now,
                            expires=now + ttl, claim_id="claim-1")
    return encode_claim(claim, SigningKey.load(key_path).sign)


def _pay(server: Any) -> Any:
    return openai.OpenAI(base_url=server.base_url, api_key="sk", max_retries=0).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "approve invoice 4711"}])


def test_a_valid_claim_grants_its_capability_and_is_recorded(server: Any, guarded: GuardFactory,
                                                            tmp_path: Path) -> None:
    g = guarded(_policy(tmp_path), ledger="memory://")
    token = _claim(tmp_path / "idp.key", tenant="acme", user="alice")
    with scope(tenant="acme", user="alice", task="payment-approval", capability_claim=token):
        assert _pay(server).choices
    (decision,) = [r for r in g.receipts() if r["kind"] == "decision"]
    assert decision["action"] == "allow"
    assert decision["capability_claim"] == {"issuer": "payments-idp", "id": "claim-1"}
    assert decision["scope"]["capability"] == "payment_execute"


def test_a_claim_in_inbound_baggage_needs_no_trust_in_baggage(server: Any, guarded: GuardFactory,
                                                             tmp_path: Path) -> None:
    guarded(_policy(tmp_path), ledger="memory://")
    token = _claim(tmp_path / "idp.key", user="alice")
    ctx = baggage.set_baggage("agentguard.capability_claim", token)
    attached = context.attach(ctx)
    try:
        with scope(user="alice", task="payment-approval"):
            assert _pay(server).choices
    finally:
        context.detach(attached)


@pytest.mark.parametrize(("case", "reason"), [
    ("forged", "invalid signature"),
    ("expired", "not valid now"),
    ("not yet valid", "not valid now"),
    ("other user", "bound to another user"),
    ("untrusted issuer", "is not trusted by the policy"),
    ("garbage", "malformed"),
])
def test_a_claim_that_grants_nothing_blocks_with_the_reason(case: str, reason: str, server: Any,
                                                           guarded: GuardFactory, tmp_path: Path) -> None:
    guarded(_policy(tmp_path), ledger="memory://")
    key = tmp_path / "idp.key"
    other = tmp_path / "other.key"
    SigningKey.generate(other)
    now = int(time.time())
    token = {
        "forged": _claim(other, user="alice"),  # names the trusted issuer, signed by another key
        "expired": _claim(key, user="alice", start=now - 1000, ttl=900),
        "not yet valid": _claim(key, user="alice", start=now + 600),
        "other user": _claim(key, user="bob"),
        "untrusted issuer": _claim(key, issuer="someone-else", user="alice"),
        "garbage": "agc1.not-a-claim",
    }[case]
    with scope(user="alice", task="payment-approval", capability_claim=token), \
            pytest.raises(AgentGuardBlocked) as blocked:
        _pay(server)
    assert "requires capability payment_execute, caller has none" in blocked.value.reason
    assert reason in blocked.value.reason
    assert token not in blocked.value.reason
    assert server.requests == []


def test_claim_issue_prints_a_token_the_guard_accepts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "idp.key"
    SigningKey.generate(key)
    assert agentguard(["claim", "issue", "--key", str(key), "--issuer", "payments-idp", "--capability",
                       "payment_execute", "--tenant", "acme", "--user", "alice", "--ttl", "15m"]) == 0
    token = capsys.readouterr().out.strip()
    issuers = {"payments-idp": SigningKey.load(key).public_key}
    claim = verify_claim(token, issuers, Scope(tenant="acme", user="alice"), time.time())
    assert (claim.capability, dict(claim.scope), claim.expires - claim.not_before) == (
        "payment_execute", {"tenant": "acme", "user": "alice"}, 900)


_names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(bound=st.dictionaries(st.sampled_from(["tenant", "team", "user", "task"]), _names, max_size=4),
       position=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
def test_claim_tokens_round_trip_and_any_altered_byte_is_refused(bound: dict[str, str], position: int,
                                                                 flip: int, tmp_path_factory: Any) -> None:
    key = tmp_path_factory.getbasetemp() / "prop.key"
    if not key.exists():
        SigningKey.generate(key)
    signing = SigningKey.load(key)
    now = int(time.time())
    token = encode_claim(CapabilityClaim("idp", "data_write", bound, now - 1, now + 60, "c"), signing.sign)
    caller = Scope(**bound)
    issuers = {"idp": signing.public_key}
    assert verify_claim(token, issuers, caller, now).scope == bound
    index = position % len(token)
    altered = token[:index] + chr((ord(token[index]) + flip) % 128 or 1) + token[index + 1:]
    if altered != token:
        with pytest.raises(ClaimRefused):
            verify_claim(altered, issuers, caller, now)


@pytest.mark.parametrize("expires", ["1E400", "1796156787.5", "true", "[1]", "9" * 5000])
def test_a_signed_claim_whose_instants_are_not_integers_is_malformed(expires: str, tmp_path: Any) -> None:
    """The property test above found an altered byte turning exp into 1E400 (infinity): refused, never raised."""
    signing = SigningKey.generate(tmp_path / "k.key")
    body = b'{"cap":"data_write","exp":' + expires.encode() + b',"iss":"idp","jti":"c","nbf":1,"scope":{},"v":1}'
    encoded = base64.urlsafe_b64encode(body).rstrip(b"=").decode()
    signature = base64.urlsafe_b64encode(signing.sign(body)).rstrip(b"=").decode()
    with pytest.raises(ClaimRefused, match="malformed"):
        verify_claim(f"agc1.{encoded}.{signature}", {"idp": signing.public_key}, Scope(), 2)
