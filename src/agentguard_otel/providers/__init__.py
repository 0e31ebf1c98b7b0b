"""Provider integrations: each SDK module here exposes ``INTEGRATION``; the instrumentor enables those
whose SDK is installed in a supported version. Adding a provider = one module + one line below."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from agentguard_otel.guard import Guard

GuardRef = Callable[[], "Guard | None"]


class Hook(Protocol):
    """Patches one SDK's choke point; undone exactly by ``uninstrument``."""

    def instrument(self) -> None: ...

    def uninstrument(self) -> None: ...


@dataclass(frozen=True)
class Integration:
    requirement: str  # the SDK versions the adapter supports, e.g. "openai >= 1.60"
    make_hook: Callable[[GuardRef], Hook]


# (our provider module defining INTEGRATION, the SDK's import name): ours is imported only when the SDK is.
INTEGRATION_MODULES: tuple[tuple[str, str], ...] = (
    ("agentguard_otel.providers.openai", "openai"),
    ("agentguard_otel.providers.bedrock", "botocore"),
    ("agentguard_otel.providers.anthropic", "anthropic"),
)
