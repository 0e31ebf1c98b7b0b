"""The shipped JSON Schema is generated from the models and kept current."""

from __future__ import annotations

import json
from typing import Any

from agentguard_otel.policy import policy_json_schema
from agentguard_otel.policy.model import SCHEMA_PATH, render_policy_schema


def test_committed_schema_is_current() -> None:
    assert SCHEMA_PATH.read_text(encoding="utf-8") == render_policy_schema(), (
        "policy.schema.json is stale; regenerate it with: python -c "
        "'from agentguard_otel.policy.model import write_policy_schema; write_policy_schema()'")


def objects(node: Any) -> list[dict[str, Any]]:
    """Every JSON Schema object that declares properties."""
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        if "properties" in node:
            found.append(node)
        for value in node.values():
            found.extend(objects(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(objects(item))
    return found


def test_schema_shape() -> None:
    schema = policy_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "agentguard-otel policy"
    assert schema["required"] == ["version"]
    assert schema["properties"]["version"]["const"] == 1
    assert {"Cap", "ModelRule", "Rule", "UnknownModelPrice"} <= set(schema["$defs"])
    assert all(obj["additionalProperties"] is False for obj in objects(schema))  # unknown keys are errors
    rule = schema["$defs"]["Rule"]["properties"]
    assert rule["match"]["propertyNames"]["enum"] == ["tenant", "team", "user", "agent", "task", "capability"]
    window = schema["$defs"]["Cap"]["properties"]["window"]
    assert window["enum"] == ["call", "minute", "hour", "day", "week", "month"]
    assert json.loads(render_policy_schema()) == schema
