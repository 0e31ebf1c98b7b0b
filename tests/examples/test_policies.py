"""Every sample policy under examples/ loads and validates (what `agentguard policy check` runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentguard_otel.cli import main as agentguard
from agentguard_otel.policy import load_policy
from tests.examples.loader import EXAMPLES

POLICIES = sorted(EXAMPLES.rglob("*.yaml"))


def test_the_sample_policies_are_all_there() -> None:
    assert {p.relative_to(EXAMPLES).as_posix() for p in POLICIES} == {
        "policies/team.yaml", "policies/agent-loop.yaml", "policies/shadow-rollout.yaml",
        "openrouter_team/policy.yaml"}


@pytest.mark.parametrize("path", POLICIES, ids=lambda p: p.relative_to(EXAMPLES).as_posix())
def test_sample_policy_loads(path: Path) -> None:
    policy = load_policy(path)
    assert policy.id == path.stem if path.parent.name == "policies" else policy.id == "openrouter-team"
    assert policy.rules
    assert agentguard(["policy", "check", str(path)]) == 0


def test_shadow_rollout_enforces_nothing() -> None:
    policy = load_policy(EXAMPLES / "policies" / "shadow-rollout.yaml")
    assert policy.mode == "shadow" and policy.unknown_model == "allow"
