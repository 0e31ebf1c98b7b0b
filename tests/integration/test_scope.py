"""Scope precedence (explicit > baggage > environment) and isolation across threads and tasks."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest
from opentelemetry import baggage, context

from agentguard_otel.scope import Scope, current_scope, env_defaults, scope, set_defaults


@pytest.fixture(autouse=True)
def _no_defaults() -> None:
    set_defaults({})


def test_explicit_beats_baggage_beats_environment() -> None:
    set_defaults(env_defaults({"AGENTGUARD_TENANT": "env-tenant", "AGENTGUARD_TEAM": "env-team",
                               "AGENTGUARD_USER": "env-user"}))
    token = context.attach(baggage.set_baggage("agentguard.team", "bag-team",
                                               baggage.set_baggage("agentguard.user", "bag-user")))
    try:
        with scope(user="alice"):
            resolved = current_scope()
    finally:
        context.detach(token)
    assert resolved == Scope(tenant="env-tenant", team="bag-team", user="alice")


def test_scope_is_written_to_baggage_for_propagation() -> None:
    with scope(tenant="acme", task="research"):
        assert baggage.get_baggage("agentguard.tenant") == "acme"
        assert baggage.get_baggage("agentguard.task") == "research"
    assert baggage.get_baggage("agentguard.tenant") is None


def test_nested_scopes_inherit_and_restore() -> None:
    with scope(tenant="acme", team="eng"):
        with scope(team="ops", user="bob"):
            assert current_scope() == Scope(tenant="acme", team="ops", user="bob")
        assert current_scope() == Scope(tenant="acme", team="eng")
    assert current_scope() == Scope()


def test_threads_do_not_see_each_others_scope() -> None:
    seen: dict[str, Scope] = {}
    barrier = threading.Barrier(2)

    def work(user: str) -> None:
        with scope(user=user):
            barrier.wait()
            seen[user] = current_scope()

    threads = [threading.Thread(target=work, args=(u,)) for u in ("alice", "bob")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"alice": Scope(user="alice"), "bob": Scope(user="bob")}


def test_copied_context_carries_scope_into_a_thread() -> None:
    result: list[Scope] = []
    with scope(team="eng"):
        ctx = contextvars.copy_context()
    t = threading.Thread(target=lambda: result.append(ctx.run(current_scope)))
    t.start()
    t.join()
    assert result == [Scope(team="eng")]


def test_asyncio_tasks_keep_their_own_scope() -> None:
    async def task(user: str) -> Scope:
        with scope(user=user):
            await asyncio.sleep(0.01)
            return current_scope()

    async def main() -> list[Scope]:
        return list(await asyncio.gather(task("alice"), task("bob")))

    assert asyncio.run(main()) == [Scope(user="alice"), Scope(user="bob")]


def test_bad_scope_values_are_rejected() -> None:
    with pytest.raises(TypeError, match="unknown scope field"), scope(project="x"):
        pass
    with pytest.raises(ValueError, match="unknown capability"), scope(capability="root"):
        pass
    with pytest.raises(ValueError, match="unknown capability"):
        env_defaults({"AGENTGUARD_CAPABILITY": "root"})
