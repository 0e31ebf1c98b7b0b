"""Who is calling. Explicit ``scope(...)`` wins over trusted OTel baggage, baggage over environment defaults;
a capability comes from an explicit ``scope(capability=...)`` or from a signed capability claim.

The explicit scope lives in a contextvar (so it follows asyncio tasks and ``contextvars.copy_context``)
and is also written to baggage, so it crosses process boundaries with normal context propagation.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import rfc8785
import wrapt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from opentelemetry import baggage, context
from opentelemetry.instrumentation.utils import unwrap

SCOPE_FIELDS: tuple[str, ...] = ("tenant", "team", "user", "agent", "task", "capability")
BAGGAGE_PREFIX = "agentguard."
ENV_PREFIX = "AGENTGUARD_"

# Capabilities are ordered: a caller holding a higher one satisfies a rule requiring a lower one.
CAPABILITY_LEVELS: tuple[str, ...] = ("read_only", "data_write", "payment_initiate", "payment_execute")


@dataclass(frozen=True)
class Scope:
    tenant: str | None = None
    team: str | None = None
    user: str | None = None
    agent: str | None = None
    task: str | None = None
    capability: str | None = None

    def get(self, field: str) -> str | None:
        value: str | None = getattr(self, field)
        return value

    def as_dict(self) -> dict[str, str | None]:
        return {name: getattr(self, name) for name in SCOPE_FIELDS}


def capability_satisfies(held: str | None, required: str) -> bool:
    """True when ``held`` is at least ``required`` in the capability order."""
    if held is None or held not in CAPABILITY_LEVELS:
        return False
    return CAPABILITY_LEVELS.index(held) >= CAPABILITY_LEVELS.index(required)


_NO_SCOPE: Mapping[str, str] = MappingProxyType({})
_explicit: ContextVar[Mapping[str, str]] = ContextVar("agentguard_scope", default=_NO_SCOPE)


CLAIM_FIELD = "capability_claim"  # a signed claim travels beside the scope (explicitly or in baggage)


def _validate(values: Mapping[str, str | None]) -> dict[str, str]:
    unknown = set(values) - set(SCOPE_FIELDS) - {CLAIM_FIELD}
    if unknown:
        raise TypeError(f"unknown scope field(s): {', '.join(sorted(unknown))}; known: {', '.join(SCOPE_FIELDS)}")
    clean: dict[str, str] = {}
    for key, value in values.items():
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            raise TypeError(f"scope field {key!r} must be a non-empty string, got {value!r}")
        clean[key] = value
    capability = clean.get("capability")
    if capability is not None and capability not in CAPABILITY_LEVELS:
        raise ValueError(f"unknown capability {capability!r}; known: {', '.join(CAPABILITY_LEVELS)}")
    return clean


@contextmanager
def scope(**values: str | None) -> Iterator[Scope]:
    """Set scope fields for the calls made inside the block; nested blocks inherit unset fields."""
    merged = {**_explicit.get(), **_validate(values)}
    token = _explicit.set(merged)
    ctx = context.get_current()
    for key, value in merged.items():
        ctx = baggage.set_baggage(BAGGAGE_PREFIX + key, value, ctx)
    otel_token = context.attach(ctx)
    try:
        yield current_scope()
    finally:
        context.detach(otel_token)
        _explicit.reset(token)


def _run_in_scope(values: Mapping[str, str], fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    token = _explicit.set(values)
    try:
        return fn(*args, **kwargs)
    finally:
        _explicit.reset(token)


def _carried() -> Mapping[str, str]:
    """What a worker thread needs to resolve the submitter's scope: the explicit values, over the
    fields trusted baggage gave and a claim baggage carries (baggage stays behind in the thread;
    the defaults are the process's)."""
    values = dict(_explicit.get())
    for name in (*_trusted_baggage, CLAIM_FIELD):
        if name not in values and (value := _from_baggage(name)) is not None:
            values[name] = value
    return values


def _submit_in_scope(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> Any:
    values = _carried()
    if not values or not args:
        return wrapped(*args, **kwargs)
    return wrapped(_run_in_scope, values, *args, **kwargs)


def carry_into_threads() -> None:
    """Let work handed to a ``ThreadPoolExecutor`` (and so ``litellm.batch_completion`` and the
    like) run in the scope of the code that submitted it, as OTel's threading instrumentation
    carries the OTel context: explicit and trusted-baggage fields alike. Only the scope is carried,
    no other context variable."""
    if not isinstance(vars(ThreadPoolExecutor)["submit"], wrapt.FunctionWrapper):
        wrapt.wrap_function_wrapper(ThreadPoolExecutor, "submit", _submit_in_scope)


def stop_carrying_into_threads() -> None:
    if isinstance(vars(ThreadPoolExecutor)["submit"], wrapt.FunctionWrapper):
        unwrap(ThreadPoolExecutor, "submit")


def env_defaults(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Scope defaults from ``AGENTGUARD_TENANT``, ``AGENTGUARD_TEAM`` and the other fields."""
    env = os.environ if environ is None else environ
    found = {name: env.get(ENV_PREFIX + name.upper()) or None for name in SCOPE_FIELDS}
    return _validate(found)


_defaults: dict[str, str] = {}
_trusted_baggage: frozenset[str] = frozenset()

# Fields inbound baggage may ever supply: a capability is granted in-process or by a signed claim.
BAGGAGE_FIELDS: tuple[str, ...] = tuple(name for name in SCOPE_FIELDS if name != "capability")


def set_defaults(defaults: Mapping[str, str], trusted_baggage: Iterable[str] = ()) -> None:
    """Install the lowest-precedence scope values (the instrumentor passes the environment's) and
    the fields inbound baggage is trusted for (the policy's ``trust_baggage``; default none)."""
    global _defaults, _trusted_baggage
    trusted = frozenset(trusted_baggage)
    if not trusted <= set(BAGGAGE_FIELDS):
        raise ValueError(f"baggage can be trusted for {', '.join(BAGGAGE_FIELDS)} only")
    _defaults = _validate(defaults)
    _trusted_baggage = trusted


def current_claim() -> str | None:
    """The capability claim presented with the call: given to ``scope(capability_claim=...)`` or
    carried in baggage (``agentguard.capability_claim``; being signed, it needs no trust in baggage)."""
    explicit = _explicit.get().get(CLAIM_FIELD)
    return explicit if explicit is not None else _from_baggage(CLAIM_FIELD)


def _from_baggage(name: str) -> str | None:
    """The non-empty string baggage carries for scope field ``name`` (trusted or not)."""
    value = baggage.get_baggage(BAGGAGE_PREFIX + name)
    return value if isinstance(value, str) and value else None


# -- signed capability claims -----------------------------------------------------------------

CLAIM_PREFIX = "agc1"  # token format version
CLAIM_SCOPE_FIELDS = ("tenant", "team", "user", "task")  # what a claim may bind its capability to


class ClaimRefused(ValueError):
    """A capability claim that grants nothing; the message says why (never the token itself)."""


@dataclass(frozen=True)
class CapabilityClaim:
    """An issuer's signed statement: whoever matches ``scope`` holds ``capability`` until ``expires``."""

    issuer: str
    capability: str
    scope: Mapping[str, str]
    not_before: int  # seconds since the epoch
    expires: int
    claim_id: str

    def payload(self) -> dict[str, Any]:
        return {"v": 1, "iss": self.issuer, "cap": self.capability, "scope": dict(self.scope),
                "nbf": self.not_before, "exp": self.expires, "jti": self.claim_id}


def encode_claim(claim: CapabilityClaim, sign: Callable[[bytes], bytes]) -> str:
    """The compact token: ``agc1.<payload>.<signature>``, base64url, the payload RFC 8785 canonical
    JSON and the signature Ed25519 over those bytes."""
    if claim.capability not in CAPABILITY_LEVELS:
        raise ValueError(f"unknown capability {claim.capability!r}; known: {', '.join(CAPABILITY_LEVELS)}")
    unknown = set(claim.scope) - set(CLAIM_SCOPE_FIELDS)
    if unknown:
        raise ValueError(f"a claim binds {', '.join(CLAIM_SCOPE_FIELDS)} only, not {', '.join(sorted(unknown))}")
    body = rfc8785.dumps(claim.payload())
    return f"{CLAIM_PREFIX}.{_b64(body)}.{_b64(sign(body))}"


def verify_claim(token: str, issuers: Mapping[str, Ed25519PublicKey], scope: Scope, now: float) -> CapabilityClaim:
    """The claim, if it is well formed, signed by the issuer it names (one the policy lists), in its
    validity period, and bound to scope fields that all match the call's; else :class:`ClaimRefused`."""
    prefix, _, rest = token.partition(".")
    body_text, _, sig_text = rest.partition(".")
    try:
        if prefix != CLAIM_PREFIX:
            raise ValueError("not an agc1 token")
        body, signature = _unb64(body_text), _unb64(sig_text)
        payload = json.loads(body)
        claim = CapabilityClaim(issuer=str(payload["iss"]), capability=str(payload["cap"]),
                                scope={str(k): str(v) for k, v in dict(payload["scope"]).items()},
                                not_before=_whole(payload["nbf"]), expires=_whole(payload["exp"]),
                                claim_id=str(payload["jti"]))
        canonical = rfc8785.dumps(claim.payload()) == body and payload.get("v") == 1
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as exc:
        raise ClaimRefused("capability claim is malformed") from exc
    key = issuers.get(claim.issuer)
    if key is None:
        raise ClaimRefused(f"capability claim issuer {claim.issuer!r} is not trusted by the policy")
    try:
        key.verify(signature, body)
    except InvalidSignature as exc:
        raise ClaimRefused(f"capability claim {claim.claim_id!r} has an invalid signature") from exc
    if not canonical or claim.capability not in CAPABILITY_LEVELS:
        raise ClaimRefused(f"capability claim {claim.claim_id!r} is malformed")
    if not claim.not_before <= now < claim.expires:
        raise ClaimRefused(f"capability claim {claim.claim_id!r} is not valid now (expired or not yet valid)")
    mismatched = [f for f, value in claim.scope.items() if scope.get(f) != value]
    if mismatched:
        raise ClaimRefused(f"capability claim {claim.claim_id!r} is bound to another {', '.join(mismatched)}")
    return claim


def _whole(value: object) -> int:
    """A JSON integer (an instant): a float such as ``1e400``, which is infinity, is no instant."""
    if type(value) is not int:
        raise ValueError("not an integer")
    return value


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not text or not all(c.isascii() and (c.isalnum() or c in "-_") for c in text):
        raise ValueError("not base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(data) != text:  # only the canonical spelling: no two tokens for one claim
        raise ValueError("not canonical base64url")
    return data


def current_scope() -> Scope:
    """Resolve the caller's scope: explicit, then trusted baggage, then defaults. Baggage arrives
    from upstream requests (any HTTP client can send it), so only the fields the policy trusts are
    read from it."""
    explicit = _explicit.get()
    resolved: dict[str, str | None] = {}
    for name in SCOPE_FIELDS:
        value = explicit.get(name)
        if value is None and name in _trusted_baggage:
            value = _from_baggage(name)
        if value is None:
            value = _defaults.get(name)
        resolved[name] = value
    return Scope(**resolved)
