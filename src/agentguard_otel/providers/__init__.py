"""Provider integrations: each SDK module here exposes ``INTEGRATION``; the instrumentor patches an SDK
when the application imports it (never importing it itself), if it is installed in a supported version.
Adding a provider = one module + one line below."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from agentguard_otel.guard import Guard, Refusal

GuardRef = Callable[[], "Guard | Refusal | None"]


class Hook(Protocol):
    """Patches one SDK's choke point; undone exactly by ``uninstrument``."""

    def instrument(self) -> None: ...

    def uninstrument(self) -> None: ...


class Hooks:
    """Several hooks of one SDK, patched and unpatched together."""

    def __init__(self, *hooks: Hook) -> None:
        self._hooks = hooks

    def instrument(self) -> None:
        for hook in self._hooks:
            hook.instrument()

    def uninstrument(self) -> None:
        for hook in reversed(self._hooks):
            hook.uninstrument()


@dataclass(frozen=True)
class Integration:
    requirement: str | None  # the SDK versions the adapter supports, e.g. "openai >= 1.60"; None: any
    make_hook: Callable[[GuardRef], Hook]


# (our provider module, the attribute there holding the Integration, the module whose import
# triggers the patch): ours is imported only once the SDK's is.
INTEGRATION_MODULES: tuple[tuple[str, str, str], ...] = (
    ("agentguard_otel.providers.openai", "INTEGRATION", "openai"),
    ("agentguard_otel.providers.bedrock", "INTEGRATION", "botocore.client"),
    ("agentguard_otel.providers.anthropic", "INTEGRATION", "anthropic"),
    # the transport tripwire, for HTTP sent outside every SDK choke point
    ("agentguard_otel.providers.tripwire", "INTEGRATIONS", "http.client"),
    ("agentguard_otel.providers.tripwire", "INTEGRATIONS", "httpx"),
    ("agentguard_otel.providers.tripwire", "INTEGRATIONS", "httpx2"),
    ("agentguard_otel.providers.tripwire", "INTEGRATIONS", "aiohttp"),
)


def integration(module: str, attribute: str, trigger: str) -> Integration:
    """The integration an ``INTEGRATION_MODULES`` entry names (imports our module, not the SDK)."""
    found = getattr(importlib.import_module(module), attribute)
    chosen: Integration = found[trigger] if isinstance(found, Mapping) else found
    return chosen
