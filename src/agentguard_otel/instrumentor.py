"""``AgentGuardInstrumentor``: settings -> guard; patch each SDK when the application imports it, unpatch.

SDKs are patched from post-import hooks, so ``instrument()`` imports none of them (an app that never
uses ``anthropic`` does not pay its import time) and an SDK imported later is guarded all the same.
wrapt's hooks cannot be removed, so one dispatcher per module name is registered for the process and
the instrumentors' pending patches live in ``_PENDING``, which ``uninstrument()`` empties of its own.
"""

from __future__ import annotations

import atexit
import functools
import importlib
import importlib.util
import logging
import os
import sys
import threading
from collections.abc import Callable, Collection
from pathlib import Path
from types import ModuleType
from typing import Any

import wrapt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from opentelemetry.instrumentation.dependencies import get_dependency_conflicts
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from agentguard_otel import config, scope
from agentguard_otel.errors import ConfigError
from agentguard_otel.guard import Guard, Refusal
from agentguard_otel.ledger import open_ledger
from agentguard_otel.policy import Policy, load_policy
from agentguard_otel.pricing import PriceBook
from agentguard_otel.providers import INTEGRATION_MODULES, Hook, Integration, integration
from agentguard_otel.receipts import ReceiptWriter, load_public_keys
from agentguard_otel.telemetry import Telemetry

logger = logging.getLogger(__name__)


class AgentGuardInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Spend governance for LLM SDK calls; see the package README for arguments."""

    _guard: Guard | Refusal | None = None
    _settings: config.Settings | None = None
    _zero_code = False
    _hooks: list[Hook]
    _waiting: list[tuple[str, Callable[[ModuleType], None]]]

    def instrumentation_dependencies(self) -> Collection[str]:
        # Each provider SDK is optional: integrations check their own SDK, so none is required here.
        return ()

    @property
    def guard(self) -> Guard | None:
        """The active guard (None when not instrumented, or refusing every call for a bad configuration)."""
        return self._guard if isinstance(self._guard, Guard) else None

    def instrument(self, **kwargs: Any) -> Any:
        """As ``BaseInstrumentor.instrument``; a second call with other settings raises instead of
        being ignored (the first, perhaps laxer, guard would silently stay)."""
        if self._is_instrumented_by_opentelemetry:
            if self._settings is not None and config.resolve(kwargs) != self._settings:
                raise ConfigError("agentguard is already instrumented with other settings; "
                                  "call uninstrument() first")
            return None
        # opentelemetry-instrument (zero-code) passes skip_dep_check; there an error raised here would
        # be logged at DEBUG and the app would run unguarded, so the SDKs are patched to refuse instead.
        self._zero_code = kwargs.get("skip_dep_check") is True
        return super().instrument(**kwargs)

    def _instrument(self, **kwargs: Any) -> None:
        zero_code = self._zero_code
        try:
            self._settings = config.resolve(kwargs)
            self._guard = _build_guard(self._settings, kwargs)
        except Exception as exc:
            if not zero_code:
                raise
            self._settings = None
            self._guard = Refusal(exc)
            print(f"agentguard: {self._guard.reason}", file=sys.stderr)
        scope.carry_into_threads()
        self._hooks = []
        self._waiting = []
        for module, attribute, trigger in INTEGRATION_MODULES:
            if _supported(integration(module, attribute, trigger), trigger):
                patch = self._patcher(integration(module, attribute, trigger))
                self._waiting.append((trigger, patch))
                _when_imported(trigger, patch)
        atexit.register(self._close)

    def _patcher(self, found: Integration) -> Callable[[ModuleType], None]:
        def patch(_sdk: ModuleType) -> None:
            hook = found.make_hook(lambda: self._guard)
            hook.instrument()
            self._hooks.append(hook)
        return patch

    def _uninstrument(self, **kwargs: Any) -> None:
        with _PENDING_LOCK:
            for trigger, patch in self._waiting:
                if patch in _PENDING.get(trigger, ()):
                    _PENDING[trigger].remove(patch)
        self._waiting = []
        for hook in self._hooks:
            hook.uninstrument()
        self._hooks = []
        scope.stop_carrying_into_threads()
        atexit.unregister(self._close)
        self._close()

    def _close(self) -> None:
        guard, self._guard, self._settings = self._guard, None, None
        if isinstance(guard, Guard):
            guard.close()  # calls still in flight settle first, then the writer and ledger close


def _build_guard(settings: config.Settings, kwargs: dict[str, Any]) -> Guard:
    prices = PriceBook(overrides=settings.pricing, catalog_dir=settings.catalog_dir)
    policy = load_policy(settings.policy, priced=prices.knows)
    key = config.signing_key(settings.signing_key)
    ledger = open_ledger(settings.ledger)
    telemetry = Telemetry(kwargs.get("tracer_provider"), kwargs.get("meter_provider"), kwargs.get("logger_provider"))
    receipts = ReceiptWriter(settings.receipts, key, on_checkpoint=telemetry.emit_receipt)
    scope.set_defaults(settings.scope_defaults, policy.trust_baggage)
    logger.info("agentguard: ledger %s, receipts in %s", ledger.location, settings.receipts)
    return Guard(policy=policy, prices=prices, ledger=ledger, receipts=receipts, telemetry=telemetry,
                 guarded_hosts=settings.guarded_hosts, issuers=_issuers(policy, settings.policy))


def _issuers(policy: Policy, source: object) -> dict[str, Ed25519PublicKey]:
    """The claim issuers' public keys, each path relative to the policy file (or the working
    directory for a policy given as data); an unreadable or ambiguous key is a configuration error."""
    base = Path(os.fspath(source)).parent if isinstance(source, (str, os.PathLike)) else Path()
    issuers: dict[str, Ed25519PublicKey] = {}
    for index, issuer in enumerate(policy.capability_issuers):
        keys = list(load_public_keys([base / issuer.public_key]).values())
        if len(keys) != 1:
            raise ConfigError(f"capability_issuers[{index}].public_key: {issuer.public_key} must hold exactly one "
                              f"Ed25519 public key, it holds {len(keys)}")
        issuers[issuer.id] = keys[0]
    return issuers


def _supported(found: Integration, trigger: str) -> bool:
    """Whether the SDK is installed in a version the adapter supports, read from its distribution's
    metadata without importing it (a version conflict is warned about: those calls are not guarded)."""
    package = trigger.split(".", 1)[0]
    if importlib.util.find_spec(package) is None:
        return False
    conflict = get_dependency_conflicts([found.requirement]) if found.requirement else None
    if conflict is not None:
        logger.warning("agentguard: %s; calls through %s are NOT guarded", conflict, package)
        return False
    return True


_PENDING: dict[str, list[Callable[[ModuleType], None]]] = {}
_PENDING_LOCK = threading.RLock()


def _when_imported(name: str, patch: Callable[[ModuleType], None]) -> None:
    """Run ``patch`` once ``name`` is imported (at once if it already is)."""
    with _PENDING_LOCK:
        first = name not in _PENDING
        _PENDING.setdefault(name, []).append(patch)
    if first:
        wrapt.register_post_import_hook(functools.partial(_dispatch, name), name)
    elif name in sys.modules:
        _dispatch(name, sys.modules[name])


def _dispatch(name: str, module: ModuleType) -> None:
    with _PENDING_LOCK:
        patches, _PENDING[name] = _PENDING.get(name, []), []
    for patch in patches:
        patch(module)
