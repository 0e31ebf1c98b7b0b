"""Who is calling. Explicit ``scope(...)`` wins over OTel baggage, baggage over environment defaults.

The explicit scope lives in a contextvar (so it follows asyncio tasks and ``contextvars.copy_context``)
and is also written to baggage, so it crosses process boundaries with normal context propagation.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, fields
from types import MappingProxyType

from opentelemetry import baggage, context

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
        return {f.name: getattr(self, f.name) for f in fields(self)}


def capability_satisfies(held: str | None, required: str) -> bool:
    """True when ``held`` is at least ``required`` in the capability order."""
    if held is None or held not in CAPABILITY_LEVELS:
        return False
    return CAPABILITY_LEVELS.index(held) >= CAPABILITY_LEVELS.index(required)


_NO_SCOPE: Mapping[str, str] = MappingProxyType({})
_explicit: ContextVar[Mapping[str, str]] = ContextVar("agentguard_scope", default=_NO_SCOPE)


def _validate(values: Mapping[str, str | None]) -> dict[str, str]:
    unknown = set(values) - set(SCOPE_FIELDS)
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


def env_defaults(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Scope defaults from ``AGENTGUARD_TENANT``, ``AGENTGUARD_TEAM`` and the other fields."""
    env = os.environ if environ is None else environ
    found = {name: env.get(ENV_PREFIX + name.upper()) or None for name in SCOPE_FIELDS}
    return _validate(found)


_defaults: dict[str, str] = {}


def set_defaults(defaults: Mapping[str, str]) -> None:
    """Install the lowest-precedence scope values (the instrumentor passes the environment's)."""
    global _defaults
    _defaults = _validate(defaults)


def current_scope() -> Scope:
    """Resolve the caller's scope: explicit, then baggage, then defaults."""
    explicit = _explicit.get()
    carried = baggage.get_all()
    resolved: dict[str, str | None] = {}
    for name in SCOPE_FIELDS:
        value = explicit.get(name)
        if value is None:
            from_baggage = carried.get(BAGGAGE_PREFIX + name)
            value = from_baggage if isinstance(from_baggage, str) and from_baggage else None
        if value is None:
            value = _defaults.get(name)
        resolved[name] = value
    return Scope(**resolved)
