"""agentguard-otel: spend governance inside the process that calls the LLM.

Public face: :class:`AgentGuardInstrumentor`, :func:`scope`, :class:`AgentGuardBlocked`.
"""

from agentguard_otel.errors import AgentGuardBlocked
from agentguard_otel.instrumentor import AgentGuardInstrumentor
from agentguard_otel.scope import scope
from agentguard_otel.version import __version__

__all__ = ["AgentGuardBlocked", "AgentGuardInstrumentor", "__version__", "scope"]
