"""Rule matching, model allow/deny and the policy digest."""

from __future__ import annotations

from typing import Any, get_args

import pytest

from agentguard_otel.policy import CapabilityLevel, Policy, Rule, ScopeField, load_policy
from agentguard_otel.scope import CAPABILITY_LEVELS, SCOPE_FIELDS, Scope


def rule(**fields: Any) -> Rule:
    return Rule.model_validate({"id": "r", **fields})


def test_literals_follow_the_scope_module() -> None:
    assert get_args(ScopeField) == SCOPE_FIELDS
    assert get_args(CapabilityLevel) == CAPABILITY_LEVELS


@pytest.mark.parametrize(("match", "scope", "expected"), [
    ({}, Scope(), True),
    ({"team": "eng"}, Scope(team="eng"), True),
    ({"team": "eng"}, Scope(team="engineering"), False),
    ({"team": "eng*"}, Scope(team="engineering"), True),
    ({"team": "eng*"}, Scope(team="Engineering"), False),  # case-sensitive
    ({"team": "eng"}, Scope(user="eng"), False),  # an unset field never matches a constraint
    ({"team": "*"}, Scope(), False),
    ({"team": "*"}, Scope(team="anything"), True),
    ({"team": ["ops", "eng"]}, Scope(team="eng"), True),
    ({"team": ["ops", "sec*"]}, Scope(team="eng"), False),
    ({"team": "eng", "task": "code-*"}, Scope(team="eng", task="code-review"), True),
    ({"team": "eng", "task": "code-*"}, Scope(team="eng", task="research"), False),
    ({"team": "eng", "task": "code-*"}, Scope(team="eng"), False),
    ({"user": "a[1]"}, Scope(user="a[1]"), True),  # equal names match even when they look like globs
    ({"user": "a[12]"}, Scope(user="a2"), True),
    ({"user": "a?c"}, Scope(user="abc"), True),
    ({"capability": ["payment_*"]}, Scope(capability="payment_execute"), True),
    ({"tenant": "acme", "agent": "bot-?"}, Scope(tenant="acme", agent="bot-7", user="x"), True),
])
def test_rule_matches(match: dict[str, Any], scope: Scope, expected: bool) -> None:
    assert rule(match=match).matches(scope) is expected


def test_matching_rules_are_in_file_order() -> None:
    policy = load_policy({"version": 1, "rules": [
        {"id": "all"}, {"id": "eng", "match": {"team": "eng"}}, {"id": "ops", "match": {"team": "ops"}},
        {"id": "eng-alice", "match": {"team": "e*", "user": "alice"}},
    ]})
    alice = Scope(team="eng", user="alice")
    assert [r.id for r in policy.matching_rules(alice)] == ["all", "eng", "eng-alice"]
    assert [r.id for r in policy.matching_rules(Scope(team="ops"))] == ["all", "ops"]
    assert [r.id for r in policy.matching_rules(Scope())] == ["all"]


@pytest.mark.parametrize(("models", "provider", "model", "expected"), [
    (None, "openai", "gpt-4o", True),
    ({}, "openai", "gpt-4o", True),
    ({"allow": ["openai/gpt-5-mini"]}, "openai", "gpt-5-mini", True),
    ({"allow": ["openai/gpt-5-mini"]}, "openrouter", "gpt-5-mini", False),
    ({"allow": ["gpt-5-mini"]}, "openrouter", "gpt-5-mini", True),  # a bare glob matches any provider
    ({"allow": ["anthropic/claude-haiku-4-5"]}, "openrouter", "anthropic/claude-haiku-4-5", True),
    ({"allow": ["anthropic/claude-haiku-4-5"]}, "anthropic", "claude-haiku-4-5", True),
    ({"allow": ["anthropic/claude-haiku-4-5"]}, "anthropic", "claude-opus-4-1", False),
    ({"allow": ["openai/*"]}, "openai", "gpt-4o", True),
    ({"allow": ["*mini*"]}, "openrouter", "openai/gpt-4o-mini:floor", True),
    ({"allow": ["openai/*", "anthropic/*"]}, "aws", "us.anthropic.claude-3-5-haiku", False),
    ({"allow": []}, "openai", "gpt-4o", False),
    ({"deny": ["*-preview"]}, "openai", "gpt-4.5-preview", False),
    ({"deny": ["*-preview"]}, "openai", "gpt-4o", True),
    ({"allow": ["openai/*"], "deny": ["openai/o1*"]}, "openai", "o1-pro", False),  # deny wins
    ({"allow": ["openai/*"], "deny": ["openai/o1*"]}, "openai", "gpt-5", True),
    ({"deny": ["openrouter/*"]}, "openrouter", "anthropic/claude-haiku-4-5", False),
    ({"max_input_usd_per_mtok": "0.2"}, "openai", "gpt-4o", True),  # price ceilings are the guard's job
])
def test_model_allowed_by_name(models: dict[str, Any] | None, provider: str, model: str,
                               expected: bool) -> None:
    assert rule(models=models).model_allowed_by_name(provider, model) is expected


def test_per_fields() -> None:
    assert rule().per_fields == ()
    assert rule(per="user").per_fields == ("user",)
    assert rule(per=["tenant", "user"]).per_fields == ("tenant", "user")


def test_models_are_frozen_and_reject_unknown_keys() -> None:
    policy = load_policy({"version": 1})
    with pytest.raises(ValueError, match="frozen"):
        policy.mode = "shadow"
    with pytest.raises(ValueError, match="Extra inputs"):
        Policy.model_validate({"version": 1, "surprise": True})


SAMPLE: dict[str, Any] = {
    "version": 1,
    "id": "p",
    "timezone": "Europe/Berlin",
    "rules": [{"id": "a", "match": {"team": "eng", "user": ["alice", "bob"]}, "per": "user",
               "caps": [{"limit_usd": "1.25", "window": "day", "reason": "daily"}]}],
}


def reorder(value: Any) -> Any:
    """The same data with every mapping's keys in reverse order."""
    if isinstance(value, dict):
        return {key: reorder(value[key]) for key in reversed(list(value))}
    if isinstance(value, list):
        return [reorder(item) for item in value]
    return value


def test_digest_is_stable_across_key_order_and_defaults() -> None:
    digest = load_policy(SAMPLE).digest
    assert digest.startswith("sha256:") and len(digest) == len("sha256:") + 64
    assert load_policy(reorder(SAMPLE)).digest == digest
    assert load_policy({**SAMPLE, "mode": "enforce", "estimation": "strict"}).digest == digest  # defaults
    assert load_policy(SAMPLE).digest == digest


@pytest.mark.parametrize("change", [
    {"mode": "shadow"},
    {"timezone": "UTC"},
    {"id": "q"},
    {"rules": [{**SAMPLE["rules"][0], "caps": [{"limit_usd": "1.26", "window": "day", "reason": "daily"}]}]},
    {"rules": [{**SAMPLE["rules"][0], "match": {"team": "eng", "user": ["bob", "alice"]}}]},
    {"rules": [{**SAMPLE["rules"][0], "per": ["user"]}]},
])
def test_digest_changes_with_any_value(change: dict[str, Any]) -> None:
    assert load_policy({**SAMPLE, **change}).digest != load_policy(SAMPLE).digest


def test_digest_is_recomputed_after_model_copy() -> None:
    policy = load_policy(SAMPLE)
    shadow = load_policy({**SAMPLE, "mode": "shadow"})
    assert policy.model_copy(update={"mode": "shadow"}).digest == shadow.digest
