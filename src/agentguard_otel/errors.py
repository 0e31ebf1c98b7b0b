"""Errors raised to users. ``AgentGuardBlocked`` deliberately subclasses no SDK error so SDK retry
loops never retry a blocked call."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class AgentGuardError(Exception):
    """Base class for every error this package raises on purpose."""


class ConfigError(AgentGuardError):
    """Bad arguments or environment variables given to the instrumentor or CLI."""


class PolicyError(AgentGuardError):
    """A policy failed to load. Names the file, line and field so it can be fixed in one go."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        self.file = file
        self.line = line
        self.field = field
        self.reason = message
        location = ":".join(str(part) for part in (file, line) if part is not None)
        prefix = f"{location}: " if location else ""
        where = f"{field}: " if field else ""
        super().__init__(f"{prefix}{where}{message}")


class LedgerUnavailable(AgentGuardError):
    """The ledger could not be reached or timed out; the policy's ``failure_mode`` decides."""


class AgentGuardBlocked(AgentGuardError):
    """A guarded call was blocked before it reached the provider."""

    def __init__(self, *, action: str, reason: str, cap: Mapping[str, Any] | None,
                 scope: Mapping[str, str | None], receipt_hash: str | None, rule_id: str | None = None) -> None:
        self.action = action
        self.reason = reason
        self.cap = dict(cap) if cap is not None else None
        self.scope = dict(scope)
        self.receipt_hash = receipt_hash
        self.rule_id = rule_id
        super().__init__(f"agentguard blocked the call: {reason}")
