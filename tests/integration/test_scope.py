"""Scope precedence (explicit > baggage > environment) and isolation across threads and tasks."""

from __future__ import annotations

import asyncio
import contextvars
import string
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import baggage, context

from agentguard_otel.scope import (
    Scope,
    carry_into_threads,
    current_claim,
    current_scope,
    env_defaults,
    scope,
    set_defaults,
    stop_carrying_into_threads,
)


@pytest.fixture(autouse=True)
def _no_defaults() -> None:
    set_defaults({})


def test_explicit_beats_trusted_baggage_beats_environment() -> None:
    set_defaults(env_defaults({"AGENTGUARD_TENANT": "env-tenant", "AGENTGUARD_TEAM": "env-team",
                               "AGENTGUARD_USER": "env-user"}), trusted_baggage=["team", "user"])
    token = context.attach(baggage.set_baggage("agentguard.team", "bag-team",
                                               baggage.set_baggage("agentguard.user", "bag-user")))
    try:
        with scope(user="alice"):
            resolved = current_scope()
    finally:
        context.detach(token)
    assert resolved == Scope(tenant="env-tenant", team="bag-team", user="alice")


def _inbound(header: str) -> object:
    """The context an OTel server instrumentation extracts from an inbound request's headers."""
    from opentelemetry.baggage.propagation import W3CBaggagePropagator

    return W3CBaggagePropagator().extract({"baggage": header})


def test_inbound_baggage_is_not_trusted_by_default() -> None:
    set_defaults(env_defaults({"AGENTGUARD_TEAM": "capped-team"}))
    token = context.attach(_inbound("agentguard.team=other,agentguard.user=u-42,"  # type: ignore[arg-type]
                                    "agentguard.capability=payment_execute"))
    try:
        resolved = current_scope()
    finally:
        context.detach(token)
    assert resolved == Scope(team="capped-team")


def test_a_capability_is_never_taken_from_baggage() -> None:
    with pytest.raises(ValueError, match="baggage can be trusted for"):
        set_defaults({}, trusted_baggage=["capability"])
    set_defaults({}, trusted_baggage=["tenant"])
    token = context.attach(_inbound("agentguard.tenant=acme,agentguard.capability=payment_execute"))  # type: ignore[arg-type]
    try:
        assert current_scope() == Scope(tenant="acme")
    finally:
        context.detach(token)


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


def test_the_scope_follows_work_into_thread_pools(server: Any, guarded: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import openai

    from agentguard_otel import AgentGuardBlocked

    policy = {"version": 1, "mode": "enforce", "rules": [{"id": "eng", "match": {"team": "engineering"}, "caps": [
        {"limit_usd": "0.000000001", "window": "call", "action": "block", "reason": "engineering is capped"}]}]}
    g = guarded(policy, ledger="memory://")
    client = openai.OpenAI(base_url=server.base_url, api_key="sk", max_retries=0)

    def call() -> str:
        try:
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        except AgentGuardBlocked as exc:
            return exc.reason
        return "sent"

    with scope(team="engineering", user="alice"), ThreadPoolExecutor(2) as pool:
        seen = pool.submit(current_scope).result()
        outcomes = list(pool.map(lambda _: call(), range(3)))
    assert (seen.team, seen.user) == ("engineering", "alice")
    assert outcomes == ["engineering is capped"] * 3  # the cap applies in the workers too
    assert server.requests == []
    g.instrumentor.uninstrument()
    with scope(team="engineering"), ThreadPoolExecutor(1) as pool:
        assert pool.submit(current_scope).result().team is None  # carried only while instrumented


def test_an_inbound_capability_does_not_pass_a_rule_that_requires_it(server: Any, guarded: Any) -> None:
    import openai

    from agentguard_otel import AgentGuardBlocked

    policy = {"version": 1, "mode": "enforce", "trust_baggage": ["tenant", "team", "user"],
              "rules": [{"id": "pay", "require_capability": "payment_execute"}]}
    guarded(policy, ledger="memory://")
    token = context.attach(_inbound("agentguard.capability=payment_execute,agentguard.tenant=acme"))  # type: ignore[arg-type]
    try:
        with pytest.raises(AgentGuardBlocked, match="requires capability payment_execute, caller has none"):
            openai.OpenAI(base_url=server.base_url, api_key="sk", max_retries=0).chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "pay invoice 4711"}])
    finally:
        context.detach(token)
    assert server.requests == []


def test_asyncio_to_thread_carries_the_scope() -> None:
    """``asyncio.to_thread`` runs the function in a copy of the caller's context, instrumented or not."""
    async def main() -> Scope:
        with scope(team="eng", user="alice"):
            return await asyncio.to_thread(current_scope)

    assert asyncio.run(main()) == Scope(team="eng", user="alice")


ENGINEERING_CAPPED = {"version": 1, "mode": "enforce", "trust_baggage": ["team"], "rules": [
    {"id": "eng", "match": {"team": "engineering"},
     "caps": [{"limit_usd": "0.000000001", "window": "call", "action": "block", "reason": "engineering is capped"}]}]}


def _outcome(client: Any) -> str:
    """What a call from a worker thread came to: sent, or the reason it was blocked."""
    from agentguard_otel import AgentGuardBlocked

    try:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    except AgentGuardBlocked as exc:
        return exc.reason
    return "sent"


def test_loop_run_in_executor_carries_the_scope(server: Any, guarded: Any) -> None:
    """``loop.run_in_executor`` hands work to a ThreadPoolExecutor (the loop's default one, or the
    caller's): the work runs in the submitter's scope, so the team's cap applies there."""
    import openai

    guarded(ENGINEERING_CAPPED, ledger="memory://")
    client = openai.OpenAI(base_url=server.base_url, api_key="sk", max_retries=0)

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        with scope(team="engineering"), ThreadPoolExecutor(1) as own:
            return [await loop.run_in_executor(executor, work, *args)
                    for work, args in ((current_scope, ()), (_outcome, (client,))) for executor in (None, own)]

    assert asyncio.run(main()) == [Scope(team="engineering")] * 2 + ["engineering is capped"] * 2
    assert server.requests == []


def test_a_scope_from_trusted_baggage_follows_work_into_thread_pools(server: Any, guarded: Any) -> None:
    """A team that arrived in trusted baggage (an upstream service's scope) is the worker's team
    too, and a claim baggage carries is the worker's claim, as they would be with OTel's
    threading instrumentation carrying the context."""
    import openai

    guarded(ENGINEERING_CAPPED, ledger="memory://")
    client = openai.OpenAI(base_url=server.base_url, api_key="sk", max_retries=0)
    token = context.attach(_inbound("agentguard.team=engineering,agentguard.capability_claim=agc1.signed"))  # type: ignore[arg-type]
    try:
        with ThreadPoolExecutor(2) as pool:
            seen = pool.submit(current_scope).result()
            claim = pool.submit(current_claim).result()
            outcomes = list(pool.map(lambda _: _outcome(client), range(2)))
    finally:
        context.detach(token)
    assert (seen, claim) == (Scope(team="engineering"), "agc1.signed")
    assert outcomes == ["engineering is capped"] * 2
    assert server.requests == []


_FIELDS = ("tenant", "team", "user", "agent", "task")
_VALUES = st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=1, max_size=8)


@settings(max_examples=40, deadline=None)
@given(explicit=st.dictionaries(st.sampled_from(_FIELDS), _VALUES),
       carried=st.dictionaries(st.sampled_from(_FIELDS), _VALUES),
       trusted=st.sets(st.sampled_from(_FIELDS)))
def test_every_way_into_a_thread_resolves_the_submitters_scope(explicit: dict[str, str], carried: dict[str, str],
                                                                trusted: set[str]) -> None:
    """Whatever mix of explicit fields, baggage and trust: a pool's submit and map,
    ``loop.run_in_executor`` and ``asyncio.to_thread`` resolve the scope the submitter resolves."""
    set_defaults({}, trusted_baggage=sorted(trusted))
    ctx = context.get_current()
    for name, value in carried.items():
        ctx = baggage.set_baggage(f"agentguard.{name}", value, ctx)
    token = context.attach(ctx)
    carry_into_threads()

    async def from_the_loop() -> list[Scope]:
        return [await asyncio.get_running_loop().run_in_executor(None, current_scope),
                await asyncio.to_thread(current_scope)]

    try:
        with scope(**explicit), ThreadPoolExecutor(1) as pool:
            expected = current_scope()
            seen = [pool.submit(current_scope).result(), *pool.map(lambda _: current_scope(), [0]),
                    *asyncio.run(from_the_loop())]
    finally:
        stop_carrying_into_threads()
        context.detach(token)
    assert expected == Scope(**{name: explicit.get(name) or (carried.get(name) if name in trusted else None)
                               for name in _FIELDS})
    assert seen == [expected] * 4
