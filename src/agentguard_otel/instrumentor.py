"""``AgentGuardInstrumentor``: settings -> guard; patch and unpatch each installed SDK."""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import logging
from collections.abc import Collection
from typing import Any

from opentelemetry.instrumentation.dependencies import get_dependency_conflicts
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from agentguard_otel import config, scope
from agentguard_otel.guard import Guard
from agentguard_otel.ledger import open_ledger
from agentguard_otel.policy import load_policy
from agentguard_otel.pricing import PriceBook
from agentguard_otel.providers import INTEGRATION_MODULES, Hook, Integration
from agentguard_otel.receipts import ReceiptWriter
from agentguard_otel.telemetry import Telemetry

logger = logging.getLogger(__name__)


class AgentGuardInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Spend governance for LLM SDK calls; see the package README for arguments."""

    _guard: Guard | None = None
    _hooks: list[Hook]

    def instrumentation_dependencies(self) -> Collection[str]:
        # Each provider SDK is optional: integrations check their own SDK, so none is required here.
        return ()

    @property
    def guard(self) -> Guard | None:
        """The active guard (None when not instrumented)."""
        return self._guard

    def _instrument(self, **kwargs: Any) -> None:
        settings = config.resolve(kwargs)
        policy = load_policy(settings.policy)
        prices = PriceBook(overrides=settings.pricing, catalog_dir=settings.catalog_dir)
        key = config.signing_key(settings.signing_key)
        ledger = open_ledger(settings.ledger)
        telemetry = Telemetry(kwargs.get("tracer_provider"), kwargs.get("meter_provider"),
                              kwargs.get("logger_provider"))
        receipts = ReceiptWriter(settings.receipts, key, on_checkpoint=telemetry.emit_receipt)
        scope.set_defaults(settings.scope_defaults)
        self._guard = Guard(policy=policy, prices=prices, ledger=ledger, receipts=receipts, telemetry=telemetry)
        self._hooks = []
        for integration in _installed_integrations():
            hook = integration.make_hook(lambda: self._guard)
            hook.instrument()
            self._hooks.append(hook)
        atexit.register(self._close)

    def _uninstrument(self, **kwargs: Any) -> None:
        for hook in self._hooks:
            hook.uninstrument()
        self._hooks = []
        atexit.unregister(self._close)
        self._close()

    def _close(self) -> None:
        guard, self._guard = self._guard, None
        if guard is not None:
            guard.receipts.close()
            guard.ledger.close()


def _installed_integrations() -> list[Integration]:
    """Integrations whose SDK is installed in a version the adapter supports (others are skipped,
    a version conflict with a warning: those calls would not be guarded)."""
    found = []
    for module, sdk in INTEGRATION_MODULES:
        if importlib.util.find_spec(sdk) is None:
            continue
        integration: Integration = importlib.import_module(module).INTEGRATION
        conflict = get_dependency_conflicts([integration.requirement])
        if conflict is not None:
            logger.warning("agentguard: %s; calls through %s are NOT guarded", conflict, sdk)
            continue
        found.append(integration)
    return found
