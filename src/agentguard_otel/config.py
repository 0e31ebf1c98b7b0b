"""Arguments and ``AGENTGUARD_*`` environment variables -> settings, with the embedded defaults.

Arguments win over the environment; the environment wins over the defaults, which live in the
user's data directory (``AGENTGUARD_HOME`` overrides it): a SQLite ledger, a receipts directory
and a signing key generated on first use.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from agentguard_otel.errors import ConfigError
from agentguard_otel.policy import Policy
from agentguard_otel.receipts import SigningKey
from agentguard_otel.scope import env_defaults

PolicySource = str | os.PathLike[str] | Mapping[str, Any] | Policy | None

_ARGUMENTS = {
    "policy": "AGENTGUARD_POLICY",
    "signing_key": "AGENTGUARD_SIGNING_KEY",
    "ledger": "AGENTGUARD_LEDGER",
    "receipts": "AGENTGUARD_RECEIPTS",
    "pricing": "AGENTGUARD_PRICING",
    "guarded_hosts": "AGENTGUARD_GUARDED_HOSTS",
}
# Arguments BaseInstrumentor passes through to every instrumentor.
_OTEL_ARGUMENTS = ("tracer_provider", "meter_provider", "logger_provider", "event_logger_provider")


@dataclass(frozen=True)
class Settings:
    policy: PolicySource
    signing_key: Path
    ledger: str
    receipts: Path
    pricing: str | os.PathLike[str] | Mapping[str, Any] | None
    catalog_dir: Path
    data_dir: Path
    scope_defaults: Mapping[str, str]
    guarded_hosts: tuple[str, ...] = ()  # LLM hosts (shell patterns) beyond the known ones


def data_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    home = env.get("AGENTGUARD_HOME")
    return Path(home).expanduser() if home else Path(platformdirs.user_data_dir("agentguard", appauthor=False))


def resolve(arguments: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``instrument(**arguments)`` and the environment; unknown arguments are errors."""
    env = os.environ if environ is None else environ
    unknown = set(arguments) - set(_ARGUMENTS) - set(_OTEL_ARGUMENTS) - {"skip_dep_check"}
    if unknown:
        raise ConfigError(f"unknown argument(s) to instrument(): {', '.join(sorted(unknown))}; "
                          f"known: {', '.join(_ARGUMENTS)}")

    def pick(name: str) -> Any:
        value = arguments.get(name)
        return value if value is not None else (env.get(_ARGUMENTS[name]) or None)

    home = data_dir(env)
    ledger = pick("ledger") or f"sqlite:///{home / 'ledger.db'}"
    if not isinstance(ledger, str):
        raise ConfigError(f"ledger must be a URL string (memory://, sqlite:///PATH), got {type(ledger).__name__}")
    try:
        defaults = env_defaults(env)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad scope default in the environment: {exc}") from exc
    return Settings(
        policy=pick("policy"),
        signing_key=Path(pick("signing_key") or home / "agentguard.key").expanduser(),
        ledger=ledger,
        receipts=Path(pick("receipts") or home / "receipts").expanduser(),
        pricing=pick("pricing"),
        catalog_dir=home / "pricing",
        data_dir=home,
        scope_defaults=defaults,
        guarded_hosts=_hosts(pick("guarded_hosts")),
    )


def _hosts(value: Any) -> tuple[str, ...]:
    """``guarded_hosts``: a list of host patterns, or a comma-separated string (the environment's)."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    if not all(isinstance(item, str) for item in items):
        raise ConfigError("guarded_hosts must be host names or patterns such as *.example.com")
    return tuple(item.strip() for item in items if item.strip())


def signing_key(path: Path) -> SigningKey:
    """Load the signing key, generating it on first use (its public key is announced once)."""
    if path.exists():
        return SigningKey.load(path)
    key = SigningKey.generate(path)
    print(f"agentguard: generated signing key {key.key_id} at {path} (mode 0600); "
          f"public key written to {path}.pub:\n{key.public_key_pem().decode().strip()}", file=sys.stderr)
    return key
