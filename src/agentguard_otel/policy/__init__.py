"""Policy: what may be spent, by whom, on which models — validated at load, never at the first call."""

from agentguard_otel.policy.loader import load_policy
from agentguard_otel.policy.model import (
    DEFAULT_POLICY,
    Cap,
    CapabilityLevel,
    CapAction,
    CreditCheck,
    ModelRule,
    Policy,
    Rule,
    ScopeField,
    UnknownModelPrice,
    Window,
    policy_json_schema,
)

__all__ = [
    "DEFAULT_POLICY",
    "Cap",
    "CapAction",
    "CapabilityLevel",
    "CreditCheck",
    "ModelRule",
    "Policy",
    "Rule",
    "ScopeField",
    "UnknownModelPrice",
    "Window",
    "load_policy",
    "policy_json_schema",
]
