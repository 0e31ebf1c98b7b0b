"""The orchestration of one call: scope -> rules -> price bound -> reservation -> decision ->
signed receipt -> (the call) -> usage -> actual cost -> settlement -> signed receipt.

The guard knows no SDK: the lifecycle hands it an :class:`LLMRequest` and a :class:`ResponseInfo`.
Its own failures never reach a caller whose request the provider answered: they settle the call at
its reservation, marked degraded.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, Literal, NoReturn, TypeVar
from urllib.parse import quote

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agentguard_otel.alerts import BudgetEvent, WebhookSender, reached, threshold_label
from agentguard_otel.call import (
    AUTO_TIER,
    STANDARD_TIER,
    Action,
    CapRef,
    Decision,
    LLMRequest,
    RequestChanges,
    ResponseInfo,
    Unchangeable,
    UnknownEndpoint,
)
from agentguard_otel.errors import AgentGuardBlocked, LedgerUnavailable
from agentguard_otel.ledger import CounterSpec, CounterState, Ledger, Reservation
from agentguard_otel.ledger.base import TRIPPED, counter_state, mark_ttl, window_id
from agentguard_otel.money import MAX_AMOUNT_NANO, format_usd
from agentguard_otel.policy import Policy, Rule
from agentguard_otel.pricing import (
    ModelPrice,
    PriceBook,
    TokenUsage,
    fallback_price,
    input_token_bound,
)
from agentguard_otel.receipts import ReceiptWriter
from agentguard_otel.receipts.format import Sealed
from agentguard_otel.scope import (
    CapabilityClaim,
    ClaimRefused,
    Scope,
    capability_satisfies,
    current_claim,
    current_scope,
    verify_claim,
)
from agentguard_otel.telemetry import (
    BLOCKED_ERROR_TYPE,
    METRIC_SCOPE_FIELDS,
    BudgetReading,
    CallSpan,
    Settled,
    Telemetry,
)

logger = logging.getLogger(__name__)

_SEVERITY: dict[str, int] = {"allow": 0, "shadow": 1, "downgrade": 2, "block": 3}
DEFAULT_TIMEOUT_SECONDS = 600.0
HOLD_GRACE_SECONDS = 60.0
MAX_DEFERRED = 10_000  # deferred results this process remembers for a later correction
MAX_KEPT = 65_536  # entries of each per-caller cache (counter specs, callers' caps, known marks)


_K = TypeVar("_K")
_V = TypeVar("_V")


def _kept(cache: dict[_K, _V], key: _K, build: Callable[[], _V]) -> _V:
    """``cache[key]``, built on first use."""
    found = cache.get(key)
    return found if found is not None else _keep(cache, key, build())


def _keep(cache: dict[_K, _V], key: _K, value: _V) -> _V:
    """Store ``value`` at ``key``; a full cache starts over (what it forgets is built again)."""
    if len(cache) >= MAX_KEPT and key not in cache:
        cache.clear()
    cache[key] = value
    return value


def _new_call_id() -> str:
    """128 random bits as 32 hex digits (a uuid4's entropy, without building a UUID object)."""
    return secrets.token_hex(16)


@dataclass(frozen=True)
class _Pricing:
    """The model a call would be sent as, its price and the call's price bound."""

    model: str
    price: ModelPrice
    unknown: bool
    estimate: int


@dataclass(frozen=True)
class _Plan:
    request: LLMRequest
    scope: Scope
    call_id: str
    caps: tuple[CapRef, ...]
    price: ModelPrice  # of the requested model
    unknown: bool
    fallback_prices: tuple[ModelPrice, ...]
    output_bound: int | None
    clamp: int | None  # the output limit to write into the request, if any
    violation: _Outcome | None

    @property
    def ledger_caps(self) -> list[CapRef]:
        return [c for c in self.caps if c.cap.window != "call"]

    def pricing(self, guard: Guard, model: str | None = None) -> _Pricing:
        """The requested model (with every fallback candidate), or a downgrade target alone."""
        if model is None or model == self.request.model:
            prices = [self.price, *self.fallback_prices]
            return _Pricing(self.request.model, self.price, self.unknown,
                            guard._estimate(self.request, prices, self.output_bound))
        price, unknown = guard._price(self.request, model)
        return _Pricing(model, price, unknown, guard._estimate(self.request, [price], self.output_bound))


@dataclass
class _Outcome:
    action: Action
    reason: str
    rule_id: str | None = None
    cap: CapRef | None = None


def counter_key(rule: Rule, index: int, scope: Scope) -> str:
    """Stable ledger identity of a cap for this caller: ``rule#index`` plus the ``per`` values."""
    return f"{rule.id}#{index}" + "".join(f"|{name}={_escape(scope.get(name))}" for name in rule.per_fields)


def _escape(value: str | None) -> str:
    """Scope values are free text: escape the key's separators so two callers never share a counter."""
    if value is None:
        return ""  # scope values are never empty, so this cannot collide
    return quote(value, safe="") if any(c in value for c in "|=%") else value


class Guard:
    """Decides, reserves, signs and settles; one instance per instrumentation."""

    def __init__(self, *, policy: Policy, prices: PriceBook, ledger: Ledger, receipts: ReceiptWriter,
                 telemetry: Telemetry, guarded_hosts: tuple[str, ...] = (),
                 issuers: Mapping[str, Ed25519PublicKey] | None = None) -> None:
        self.policy = policy
        self.issuers = dict(issuers or {})  # capability claim issuers the policy trusts, by id
        self.guarded_hosts = guarded_hosts  # hosts besides the known LLM hosts that the tripwire watches
        self.prices = prices
        self.ledger = ledger
        self.receipts = receipts
        self.telemetry = telemetry
        self._policy_ref = {"id": policy.id, "version": policy.version, "digest": policy.digest}
        self._in_flight = 0
        self._closing = False
        self._flight_lock = threading.Lock()
        self._deferred: OrderedDict[str, GuardedCall] = OrderedDict()  # response id -> call settled in advance
        self._specs: dict[tuple[str, int, str, bool, bool], CounterSpec] = {}
        self._by_scope: dict[Scope, tuple[list[Rule], tuple[CapRef, ...], int | None]] = {}
        # counter -> (its current window, the marks this process recorded or found there; see _watch)
        self._marks: dict[str, tuple[str, set[str]]] = {}
        self.webhook = WebhookSender(policy.alerts.webhook) if policy.alerts.webhook else None

    @property
    def enforcing(self) -> bool:
        return self.policy.mode == "enforce"

    def close(self) -> None:
        """Close the ledger and the receipt writer once every call in flight has settled (a stream
        read after ``uninstrument()`` still writes its settlement receipt)."""
        with self._flight_lock:
            self._closing = True
            if self._in_flight:
                return
        self._close_now()

    def _close_now(self, wait_for_webhook: bool = True) -> None:
        try:
            self.receipts.close()
        finally:
            try:
                if self.webhook is not None:
                    if wait_for_webhook:
                        self.webhook.close()
                    else:  # delivered by a thread of its own, which the interpreter waits for at exit
                        threading.Thread(target=self.webhook.close, name="agentguard-webhook-close").start()
            finally:
                self.ledger.close()

    def _landed(self) -> None:
        with self._flight_lock:
            self._in_flight -= 1
            last = self._closing and not self._in_flight
        if last:  # the last call of a closed guard, on its caller's thread: nothing here may reach the caller
            try:
                self._close_now(wait_for_webhook=False)
            except Exception:
                logger.exception("agentguard: closing the guard after its last call failed")

    def awaits(self, response_id: str) -> bool:
        """Whether a call of this process settled in advance waits for this response's usage."""
        with self._flight_lock:
            return response_id in self._deferred

    def defer(self, response_id: str, call: GuardedCall) -> None:
        with self._flight_lock:
            self._deferred[response_id] = call
            while len(self._deferred) > MAX_DEFERRED:
                self._deferred.popitem(last=False)  # the oldest stays settled at its reservation

    def adjust(self, response_id: str, info: ResponseInfo) -> None:
        """A deferred result arrived with its usage: correct the call's settlement to the actual
        cost with a signed adjustment receipt. Never raises: the caller has its result."""
        with self._flight_lock:
            call = self._deferred.get(response_id)
            if call is None or info.deferred or info.problem is not None:
                return  # still pending, or a result that cannot be trusted: the reservation stands
            del self._deferred[response_id]
        try:
            call.adjust(info)
        except Exception:
            logger.exception("agentguard: adjusting deferred call %s failed", call.decision.call_id)

    def unguarded(self, endpoint: UnknownEndpoint) -> None:
        """A request no adapter can price: blocked in enforce mode under ``unknown_endpoint: block``
        (raises), otherwise let through with a degraded decision receipt. Signed either way."""
        scope = current_scope()
        blocked = self.enforcing and self.policy.unknown_endpoint == "block"
        reason = f"endpoint {endpoint.description} is not guarded (unknown_endpoint: {self.policy.unknown_endpoint})"
        request = LLMRequest(provider=endpoint.provider, price_provider=endpoint.provider, operation="unknown",
                             model="", stream=False, input_bytes=0, input_items=0, input_images=0,
                             max_output_tokens=None, server_address=endpoint.server_address)
        span = self.telemetry.start_call(request, scope)
        body = {"call_id": _new_call_id(), "scope": scope.as_dict(), "policy": self._policy_ref,
                "action": "block" if blocked else "allow", "reason": reason, "provider": endpoint.provider,
                "operation": endpoint.description, "unknown_endpoint": True, "degraded": not blocked}
        receipt: dict[str, Any] | None
        try:
            receipt = self._sign("decision", body, span)
        except (OSError, ValueError, TypeError) as exc:
            logger.error("agentguard: could not write the decision receipt of an unguarded request: %s", exc)
            if self.policy.failure_mode == "closed":
                blocked = True  # no request may pass unrecorded in closed mode
            receipt = None
        if blocked:
            error = AgentGuardBlocked(action="block", reason=reason, cap=None, scope=scope.as_dict(),
                                      receipt_hash=receipt.get("hash") if receipt else None)
            span.fail(BLOCKED_ERROR_TYPE, reason)
            raise error
        logger.warning("agentguard: %s; let through (degraded)", reason)
        span.end()

    def unreadable(self, exc: BaseException) -> None:
        """An adapter could not read a request it recognised: blocked in enforce mode, sent as it
        is (unrecorded) in shadow mode."""
        logger.error("agentguard: could not read a request (%s)", type(exc).__name__)
        if self.enforcing:
            raise AgentGuardBlocked(action="block", reason=f"agentguard could not read the request "
                                    f"({type(exc).__name__}); blocked in enforce mode", cap=None,
                                    scope=current_scope().as_dict(), receipt_hash=None)

    # -- decision ---------------------------------------------------------------------------

    def begin(self, request: LLMRequest) -> GuardedCall:
        """Decide the call and place its hold; raises :class:`AgentGuardBlocked` when blocked."""
        scope, claim, claim_error = self._caller()
        if request.deployment is not None:
            # The deployment decides which model answers: price and allow-list what it serves.
            request = replace(request, model=self.policy.azure_deployments.get(request.deployment, request.deployment))
        span = self.telemetry.start_call(request, scope)
        try:
            decision = self._decide(request, scope, claim_error)
        except Exception as exc:  # a bug of ours: block in enforce mode, let it through (recorded) in shadow
            logger.exception("agentguard: could not decide a call")
            decision = self._undecided(request, exc)
        receipt: dict[str, Any] | None
        body = self._decision_body(request, scope, decision)
        body["capability_claim"] = {"issuer": claim.issuer, "id": claim.claim_id} if claim else None
        try:
            receipt = self._sign("decision", body, span)
        except (OSError, ValueError) as exc:
            decision = self._unsigned(decision, exc)
            receipt = None
        self.telemetry.on_decision(span, request, scope, decision, receipt)
        if decision.action == "block":
            error = AgentGuardBlocked(
                action=decision.action,
                reason=decision.reason,
                cap=decision.cap.describe() if decision.cap else None,
                scope=scope.as_dict(),
                receipt_hash=receipt.get("hash") if receipt else None,
                rule_id=decision.rule_id,
            )
            span.fail(BLOCKED_ERROR_TYPE, error.reason)
            raise error
        with self._flight_lock:
            self._in_flight += 1
        return GuardedCall(self, request, scope, decision, receipt, span)

    def _undecided(self, request: LLMRequest, exc: Exception) -> Decision:
        fallback = self.policy.unknown_model_price
        price = fallback_price(request.price_provider, request.model, fallback.input_nano_per_mtok,
                               fallback.output_nano_per_mtok)
        action: Action = "block" if self.enforcing else "allow"
        return Decision(call_id=_new_call_id(), action=action, reason=f"agentguard internal error "
                        f"({type(exc).__name__})", model_requested=request.model, model_effective=request.model,
                        estimated_nano=0, price=price, max_output_tokens=request.max_output_tokens,
                        changes=RequestChanges(), degraded=True)

    def _caller(self) -> tuple[Scope, CapabilityClaim | None, str | None]:
        """The caller's scope, with the capability of a valid signed claim when it presents one and
        holds none explicitly; and the claim, or why it was refused."""
        scope = current_scope()
        token = current_claim()
        if token is None or scope.capability is not None:
            return scope, None, None
        try:
            claim = verify_claim(token, self.issuers, scope, time.time())
        except ClaimRefused as refused:
            return scope, None, str(refused)
        return replace(scope, capability=claim.capability), claim, None

    def _decide(self, request: LLMRequest, scope: Scope, claim_error: str | None = None) -> Decision:
        plan = self._plan(request, scope, claim_error)
        if not self.enforcing:
            return self._shadow(plan)
        if plan.violation is not None:
            return self._decision(plan, plan.violation, plan.pricing(self))
        return self._enforce(plan)

    def _plan(self, request: LLMRequest, scope: Scope, claim_error: str | None) -> _Plan:
        """Everything the decision needs that the ledger does not say: the rules, the prices of
        every model that may answer, the checks that need no ledger, the caps and the output bound."""
        rules, caps, clamp = self._applicable(scope)
        price, unknown = self._price(request, request.model)
        # OpenRouter-style fallback lists: any candidate may answer, so each must be allowed and the
        # reservation must cover the most expensive one (until a downgrade pins the model).
        fallbacks = [self._price(request, m) for m in request.fallback_models]
        unknown = unknown or any(flag for _, flag in fallbacks)
        candidates = [(request.model, price), *((m, p) for m, (p, _) in zip(request.fallback_models, fallbacks,
                                                                              strict=True))]
        output_bound, inject = self._output_bound(request, clamp, bool(caps))
        return _Plan(request=request, scope=scope, call_id=_new_call_id(), caps=caps, price=price, unknown=unknown,
                     fallback_prices=tuple(p for p, _ in fallbacks), output_bound=output_bound,
                     clamp=output_bound if inject and self.enforcing else None,
                     violation=self._violation(request, scope, rules, candidates, unknown, claim_error))

    def _applicable(self, scope: Scope) -> tuple[list[Rule], tuple[CapRef, ...], int | None]:
        """The rules matching a caller, their caps with the caller's counters, and the tightest
        output limit they set: a function of the scope alone (the policy is frozen), kept per scope."""
        def build() -> tuple[list[Rule], tuple[CapRef, ...], int | None]:
            rules = self.policy.matching_rules(scope)
            caps = tuple(CapRef(rule, i, cap, counter_key(rule, i, scope)) for rule in rules
                         for i, cap in enumerate(rule.caps))
            return rules, caps, min((r.max_output_tokens for r in rules if r.max_output_tokens is not None),
                                    default=None)

        return _kept(self._by_scope, scope, build)

    def _shadow(self, plan: _Plan) -> Decision:
        """Shadow mode: hold everything, enforce nothing, record what enforcement would have done."""
        pricing = plan.pricing(self)
        held = self._reserve(plan, [self._spec(c, False) for c in plan.ledger_caps], pricing)
        if isinstance(held, Decision):
            return held
        self._watch(plan.caps, held.states, plan.scope)
        noted = self._over_after(plan.caps, held.states, pricing.estimate, lambda c: True)
        worst = plan.violation or (max(noted, key=lambda o: _SEVERITY[o.action]) if noted else None)
        if worst is None:
            return self._decision(plan, _Outcome("allow", "within budget"), pricing, held)
        shadow = _Outcome("shadow", f"{worst.reason} (shadow: would {worst.action})", worst.rule_id, worst.cap)
        return self._decision(plan, shadow, pricing, held, would=worst.action)

    def _enforce(self, plan: _Plan) -> Decision:
        """Reserve against every cap; a tripped downgrade cap switches the model and tries again
        without it, a tripped block cap blocks."""
        pricing = plan.pricing(self)
        tripped: set[str] = set()
        outcome = _Outcome("allow", "within budget")
        for _ in range(len(plan.caps) + 1):
            over = [c for c in plan.caps if c.cap.window == "call" and c.cap.action != "shadow"
                    and c.counter not in tripped and pricing.estimate > c.cap.limit_nano]
            if not over:
                specs = [self._spec(c, c.cap.action != "shadow" and c.counter not in tripped) for c in plan.ledger_caps]
                held = self._reserve(plan, specs, pricing)
                if isinstance(held, Decision):
                    return held
                self._watch(plan.caps, held.states, plan.scope, held.exceeded)
                if held.admitted:
                    return self._admitted(plan, outcome, pricing, held)
                by_counter = {c.counter: c for c in plan.ledger_caps}
                over = [by_counter[spec.key] for spec in held.exceeded]
            blocking = [c for c in over if c.cap.action == "block"]
            if blocking:
                first = blocking[0]
                return self._decision(plan, _Outcome("block", self._cap_reason(first), first.rule.id, first), pricing)
            # Only downgrade caps are exceeded: switch model, stop enforcing those caps, try again.
            first = over[0]
            tripped.update(c.counter for c in over)
            target = first.cap.downgrade_to or pricing.model
            if target != pricing.model:
                pricing = plan.pricing(self, target)  # the adapter pins the fallback list to the target
            outcome = _Outcome("downgrade", f"{self._cap_reason(first)}: downgraded to {pricing.model}",
                               first.rule.id, first)
        raise AssertionError("every pass trips at least one cap, so the loop ends within len(caps) passes")

    def _admitted(self, plan: _Plan, outcome: _Outcome, pricing: _Pricing, held: Reservation) -> Decision:
        if outcome.action == "allow":
            noted = self._over_after(plan.caps, held.states, pricing.estimate, lambda c: c.cap.action == "shadow")
            if noted:
                outcome = _Outcome("shadow", f"{noted[0].reason} (shadow cap)", noted[0].rule_id, noted[0].cap)
        return self._decision(plan, outcome, pricing, held, would="block" if outcome.action == "shadow" else None)

    def _reserve(self, plan: _Plan, specs: list[CounterSpec], pricing: _Pricing) -> Reservation | Decision:
        """The ledger's hold, or the decision ``failure_mode`` makes when the ledger is unreachable."""
        try:
            return self.ledger.reserve(specs, pricing.estimate, self._ttl(plan.request))
        except LedgerUnavailable as exc:
            if self.policy.failure_mode == "closed":
                return self._decision(plan, _Outcome("block", f"ledger unavailable (failure_mode closed): {exc}"),
                                      pricing, degraded=True)
            logger.warning("agentguard: ledger unavailable, allowing the call (failure_mode open): %s", exc)
            return self._decision(plan, _Outcome("allow", f"ledger unavailable (failure_mode open): {exc}"),
                                  pricing, degraded=True)

    def _decision(self, plan: _Plan, outcome: _Outcome, pricing: _Pricing, reservation: Reservation | None = None,
                  would: Action | None = None, degraded: bool = False) -> Decision:
        request = plan.request
        if outcome.action == "downgrade" and request.deployment is not None:
            # rewriting the model does not move a call off its deployment: it cannot be downgraded
            if reservation is not None and reservation.hold_id is not None:
                self.ledger.release(reservation.hold_id)
            outcome = replace(outcome, action="block", reason=f"{outcome.reason}; a call routed by the deployment "
                              f"{request.deployment} cannot be downgraded, so it is blocked")
            reservation = None
        admitted = outcome.action != "block"
        changes = RequestChanges(model=pricing.model if pricing.model != request.model else None,
                                 max_output_tokens=plan.clamp,
                                 ask_stream_usage=self.enforcing) if admitted else RequestChanges()
        return Decision(call_id=plan.call_id, action=outcome.action, reason=outcome.reason, rule_id=outcome.rule_id,
                        cap=outcome.cap, model_requested=request.model, model_effective=pricing.model,
                        estimated_nano=pricing.estimate, price=pricing.price, max_output_tokens=plan.output_bound,
                        changes=changes, would=would, unknown_model=pricing.unknown, degraded=degraded,
                        hold_id=reservation.hold_id if reservation and admitted else None, caps=plan.caps)

    def _over_after(self, caps: tuple[CapRef, ...], states: tuple[CounterState, ...], estimate: int,
                    considered: Callable[[CapRef], bool]) -> list[_Outcome]:
        """Caps that an admitted call pushes past their limit (noted, not enforced), as outcomes
        carrying the cap's own action."""
        totals = {s.key: s.spent_nano + s.held_nano for s in states}
        noted = []
        for c in caps:
            if not considered(c):
                continue
            used = estimate if c.cap.window == "call" else totals.get(c.counter, 0)
            if used > c.cap.limit_nano:
                noted.append(_Outcome(c.cap.action, self._cap_reason(c), c.rule.id, c))
        return noted

    def _unsigned(self, decision: Decision, exc: BaseException) -> Decision:
        """The decision receipt could not be written: no call may pass unrecorded in ``closed``
        mode; ``open`` mode lets it through, marked degraded."""
        logger.error("agentguard: could not write the decision receipt of call %s: %s", decision.call_id, exc)
        if self.policy.failure_mode == "open" or decision.action == "block":
            return replace(decision, degraded=True)
        if decision.hold_id is not None:
            self.ledger.release(decision.hold_id)
        return replace(decision, action="block", reason=f"receipts unavailable (failure_mode closed): {exc}",
                       hold_id=None, changes=RequestChanges(), degraded=True)

    def _violation(self, request: LLMRequest, scope: Scope, rules: list[Rule],
                   candidates: list[tuple[str, ModelPrice]], unknown: bool, claim_error: str | None) -> _Outcome | None:
        """Checks that need no ledger: capability, model allow-lists (for every model that may
        answer), unknown model."""
        for rule in rules:
            required = rule.require_capability
            if required is not None and not capability_satisfies(scope.capability, required):
                held = scope.capability or "none"
                why = f" ({claim_error})" if claim_error else ""
                return _Outcome("block", f"rule {rule.id} requires capability {required}, caller has {held}{why}",
                                rule.id)
            models = rule.models
            if models is None:
                continue
            ceiling = models.max_input_nano_per_mtok
            for model, price in candidates:
                if not rule.model_allowed_by_name(request.provider, model):
                    return _Outcome("block", f"model {model} is not allowed by rule {rule.id}", rule.id)
                if ceiling is not None and (price.source == "fallback" or price.max_input > ceiling):
                    return _Outcome("block", f"model {model} costs more than rule {rule.id} allows "
                                    f"per 1M input tokens", rule.id)
        if request.unknown_output_limit is not None and self.policy.estimation == "strict":
            return _Outcome("block", f"the output limit of {request.unknown_output_limit} cannot be read, so the "
                            "call cannot be bounded (refused in strict estimation; converse works for every model)")
        if request.unproven_bound is not None and self.policy.estimation == "strict":
            return _Outcome("block", f"{request.unproven_bound} cannot be bounded (refused in strict estimation)")
        if request.unseen_input is not None and self.policy.estimation == "strict":
            unbounded = [model for model, price in candidates if price.context_window is None]
            if unbounded:
                return _Outcome("block", f"input the request does not carry ({request.unseen_input}) cannot be "
                                f"bounded: the context window of {', '.join(unbounded)} is unknown "
                                "(refused in strict estimation)")
        check = self.policy.credit_check
        remaining = request.credit_remaining_nano
        if check is not None and remaining is not None and remaining < check.min_remaining_nano:
            return _Outcome("block", f"provider key has {format_usd(remaining)} credit left, below the policy's "
                            f"minimum of {format_usd(check.min_remaining_nano)}")
        if unknown and self.policy.unknown_model == "block":
            names = [m for m, p in candidates if p.source == "fallback"]
            return _Outcome("block", f"unknown model {', '.join(names)} has no price (unknown_model: block)")
        return None

    def _tier(self, request: LLMRequest) -> str | None:
        """The tier a call is priced at before it is sent: the one it asks for; for ``auto``, the
        dearest there is in strict estimation (an unknown tier is priced so) and standard otherwise."""
        if request.service_tier == AUTO_TIER and self.policy.estimation != "strict":
            return None
        return request.service_tier

    def _price(self, request: LLMRequest, model: str) -> tuple[ModelPrice, bool]:
        price = self.prices.lookup(request.price_provider, model, self._tier(request))
        if price is not None:
            return price, False
        fallback = self.policy.unknown_model_price
        return fallback_price(request.price_provider, model, fallback.input_nano_per_mtok,
                              fallback.output_nano_per_mtok), True

    def _output_bound(self, request: LLMRequest, clamp: int | None, capped: bool) -> tuple[int | None, bool]:
        """The output-token bound and whether it must be written into the request."""
        if not request.produces_output:
            return 0, False
        asked = request.max_output_tokens
        if clamp is not None and (asked is None or asked > clamp):
            return clamp, True
        if asked is not None:
            return asked, False
        if capped:
            return self.policy.default_max_output_tokens, True
        return self.policy.default_max_output_tokens, False

    def _estimate(self, request: LLMRequest, prices: list[ModelPrice], output_bound: int | None) -> int:
        """The price bound of the call: of its most expensive candidate model. Input the request
        does not carry is bounded by each model's context window (the request is refused in strict
        mode when a window is unknown: see _violation)."""
        shown = input_token_bound(request.input_bytes, request.input_items, request.input_images,
                                  self.policy.estimation) + request.input_overhead_tokens
        output_tokens = (output_bound or 0) * request.output_multiplier + request.fixed_output_tokens

        def input_tokens(price: ModelPrice) -> int:
            if request.unseen_input is None or price.context_window is None:
                return shown
            return max(shown, price.context_window)

        return max(self.prices.bound_cost_nano(price, input_tokens(price), output_tokens,
                                               characters=request.input_characters,
                                               audio_seconds=request.input_audio_seconds) for price in prices)

    def _spec(self, ref: CapRef, enforce: bool) -> CounterSpec:
        """The counter of a cap for this caller; built (and validated) once per counter and kept,
        as the same few counters are reserved against call after call."""
        return _kept(self._specs, (ref.counter, ref.cap.limit_nano, ref.cap.window, ref.cap.rolling, enforce),
                     lambda: CounterSpec(key=ref.counter, limit_nano=ref.cap.limit_nano,
                                         window=ref.cap.window,  # type: ignore[arg-type]
                                         rolling=ref.cap.rolling, timezone=self.policy.timezone, enforce=enforce))

    @staticmethod
    def _cap_reason(ref: CapRef) -> str:
        kind = "rolling " if ref.cap.rolling else ""
        text = ref.cap.reason or f"{kind}{ref.cap.window} cap of rule {ref.rule.id} reached"
        return text

    @staticmethod
    def _ttl(request: LLMRequest) -> float:
        return (request.timeout_seconds or DEFAULT_TIMEOUT_SECONDS) + HOLD_GRACE_SECONDS

    # -- budget events ----------------------------------------------------------------------

    def _watch(self, caps: tuple[CapRef, ...], states: tuple[CounterState, ...], scope: Scope,
               tripped: tuple[CounterSpec, ...] = ()) -> None:
        """Mark the thresholds the counters reached and the caps that tripped, once per counter and
        window across every process sharing the ledger; the process whose mark is first emits the
        threshold's budget event. Reads only what the ledger just returned: the common case (no
        threshold newly reached) costs a few integer comparisons. Never raises."""
        try:
            by_counter = {c.counter: c for c in caps}
            tripped_keys = {spec.key for spec in tripped}
            now = time.time()
            for state in states:
                ref = by_counter.get(state.key)
                if ref is None:
                    continue
                labels: dict[str, Decimal | None] = {
                    threshold_label(t): t
                    for t in reached(ref.cap.thresholds, state.spent_nano + state.held_nano, state.limit_nano)}
                trip = TRIPPED.get(ref.cap.action) if state.key in tripped_keys else None
                if trip is not None:
                    labels[trip] = None
                if not labels:
                    continue
                window = window_id(state.window_start, ref.cap.window, state.limit_nano, now)
                current = self._marks.get(state.key)
                if current is None or current[0] != window:  # a forgotten mark is asked again: once
                    current = _keep(self._marks, state.key, (window, set()))
                known = current[1]
                for label, threshold in labels.items():
                    if label in known:
                        continue
                    try:
                        first = self.ledger.mark(state.key, window, label, mark_ttl(ref.cap.window))
                    except LedgerUnavailable as exc:
                        logger.warning("agentguard: could not record a budget mark of %s: %s", state.key, exc)
                        continue
                    known.add(label)
                    if first and threshold is not None:
                        self._emit(BudgetEvent(
                            counter=state.key, rule_id=ref.rule.id, window=ref.cap.window,
                            window_start=state.window_start.isoformat() if state.window_start else None,
                            threshold=threshold, spent_nano=state.spent_nano, held_nano=state.held_nano,
                            limit_nano=state.limit_nano, scope=scope.as_dict(), ts=now))
        except Exception:
            logger.exception("agentguard: watching budget thresholds failed")

    def _emit(self, event: BudgetEvent) -> None:
        self.telemetry.emit_budget_event(event)
        if self.webhook is not None:
            self.webhook.send(event)

    def readings(self, caps: tuple[CapRef, ...], states: tuple[CounterState, ...],
                 scope: Scope) -> tuple[BudgetReading, ...]:
        """What the budget gauges show of each counter: how full, its state as this process knows
        it, and the scope fields the counter is kept per."""
        by_counter = {c.counter: c for c in caps}
        now = time.time()
        found = []
        for s in states:
            ref = by_counter.get(s.key)
            if ref is None:
                continue
            current = self._marks.get(s.key)  # the window's id is formatted only for a counter with marks
            marks = current[1] if current is not None and current[0] == window_id(
                s.window_start, ref.cap.window, s.limit_nano, now) else ()
            labels = tuple((name, value) for name in ref.rule.per_fields
                           if name in METRIC_SCOPE_FIELDS and (value := scope.get(name)) is not None)
            found.append(BudgetReading(s.key, ref.rule.id, ref.cap.window, s.spent_nano + s.held_nano, s.limit_nano,
                                       counter_state(marks), labels))
        return tuple(found)

    # -- receipts ---------------------------------------------------------------------------

    def _decision_body(self, request: LLMRequest, scope: Scope, d: Decision) -> dict[str, Any]:
        return {
            "call_id": d.call_id,
            "scope": scope.as_dict(),
            "policy": self._policy_ref,
            "action": d.action,
            "would": d.would,
            "reason": d.reason,
            "rule_id": d.rule_id,
            "cap": d.cap.describe() if d.cap else None,
            "provider": request.provider,
            "operation": request.operation,
            "deployment": request.deployment,
            "stream": request.stream,
            "model_requested": d.model_requested,
            "model_effective": d.model_effective,
            "max_output_tokens": d.max_output_tokens,
            "estimation": self.policy.estimation,
            "estimated_nano": d.estimated_nano,
            "price_source": d.price.source,
            "unknown_model": d.unknown_model,
            "degraded": d.degraded,
        }

    def _sign(self, kind: Literal["decision", "settlement", "adjustment"], body: dict[str, Any],
              span: CallSpan) -> Sealed:
        body.update(span.ids)
        receipt = self.receipts.append(kind, body)
        self.telemetry.emit_receipt(receipt, span)
        return receipt


class Refusal:
    """Stands in for the guard when none could be built (zero-code startup with a bad policy, ledger
    URL, key or missing driver): every request an adapter recognises is blocked, naming the error."""

    def __init__(self, error: BaseException) -> None:
        self.reason = (f"the guard is not configured ({type(error).__name__}: {error}); no LLM call is "
                       "sent until the configuration is fixed")

    def refuse(self) -> NoReturn:
        raise AgentGuardBlocked(action="block", reason=self.reason, cap=None, scope=current_scope().as_dict(),
                                receipt_hash=None)


class GuardedCall:
    """A decided call in flight: settles exactly once, however it ends, and never raises doing so."""

    def __init__(self, guard: Guard, request: LLMRequest, scope: Scope, decision: Decision,
                 receipt: Mapping[str, Any] | None, span: CallSpan) -> None:
        self.guard = guard
        self.request = request
        self.scope = scope
        self.decision = decision
        self.decision_hash = str(receipt["hash"]) if receipt else None
        self.span = span
        self.started = time.monotonic()
        # A long stream renews its hold a quarter of the hold's lifetime after the last renewal.
        self._ttl = Guard._ttl(request)
        self._renew_at = math.inf if decision.hold_id is None else self.started + self._ttl / 4
        self._done = False
        self._lock = threading.Lock()
        self._settled: tuple[int, str | None] = (0, None)  # a deferred call's (amount, receipt hash)

    @property
    def changes(self) -> RequestChanges:
        return self.decision.changes

    def keepalive(self) -> None:
        """A long stream renews its hold so it does not expire while chunks flow."""
        now = time.monotonic()
        hold = self.decision.hold_id
        if now < self._renew_at or hold is None:  # the common case, once per chunk: nothing to do
            return
        self._renew_at = now + self._ttl / 4
        try:
            self.guard.ledger.renew(hold, self._ttl)
        except Exception as exc:
            logger.warning("agentguard: could not renew hold %s: %s", hold, type(exc).__name__)

    def finish(self, info: ResponseInfo, *, complete: bool = True) -> None:
        """Settle to the real cost (or to an estimate when a stream ended early)."""
        self._settle(info, "ok" if complete else "abandoned", None, None, True)

    def fail(self, exc: BaseException, status: int | None = None, sent: bool = True) -> None:
        """The provider call raised. An error status the provider answered with, or a request that
        never left (the connection failed), releases the hold; anything else — a timeout, a cut
        body, a cancellation, a reply the SDK could not read — may have been done and billed, so it
        settles the reservation, marked degraded."""
        self._settle(ResponseInfo(), "error", exc, status if sent else None, sent)

    def unsent(self, exc: BaseException) -> None:
        """The guard could not apply its own changes: the hold is released, and the request is
        blocked in enforce mode or sent unchanged in shadow mode."""
        logger.error("agentguard: could not apply the decision to call %s (%s)", self.decision.call_id,
                     type(exc).__name__)
        self._settle(ResponseInfo(), "unsent", exc, None, False)
        if self.guard.enforcing:
            why = str(exc) if isinstance(exc, Unchangeable) else type(exc).__name__
            raise AgentGuardBlocked(action="block", reason=f"agentguard could not apply its decision "
                                    f"({why}); blocked in enforce mode", cap=None,
                                    scope=self.scope.as_dict(), receipt_hash=self.decision_hash)

    def _settle(self, info: ResponseInfo, outcome: str, exc: BaseException | None, status: int | None,
                sent: bool) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        try:
            self._record(info, outcome, exc, status, sent)
        except Exception:  # the last line of defence: the caller has its response, the call must not fail
            logger.exception("agentguard: settling call %s failed", self.decision.call_id)
            self._release_quietly()
        finally:
            self.guard._landed()

    def _record(self, info: ResponseInfo, outcome: str, exc: BaseException | None, status: int | None,
                sent: bool) -> None:
        guard = self.guard
        actual, source, problem = self._actual_cost(info, outcome, exc, status, sent)
        if problem is not None:
            logger.warning("agentguard: call %s settled at its reservation: %s", self.decision.call_id, problem)
        states: tuple[CounterState, ...] = ()
        ledger_error = None
        hold = self.decision.hold_id
        deferred = info.deferred and problem is None and outcome == "ok"
        if deferred:
            outcome = "deferred"
        try:
            if hold is not None and source == "none":
                guard.ledger.release(hold)
            elif hold is not None:
                states = guard.ledger.settle(hold, actual, adjustable=deferred)
        except LedgerUnavailable as err:
            ledger_error = str(err)
            logger.error("agentguard: could not settle call %s: %s", self.decision.call_id, err)
        guard._watch(self.decision.caps, states, self.scope)  # an overshoot may reach a threshold
        body: dict[str, Any] = {
            "call_id": self.decision.call_id,
            "decision": self.decision_hash,
            "scope": self.scope.as_dict(),
            "policy": guard._policy_ref,
            "outcome": outcome,
            "model_effective": self.decision.model_effective,
            "response_model": info.response_model,
            # a fallback list answered by another candidate: provable resilience, priced as answered
            "fallback": bool(self.request.fallback_models) and info.response_model not in (
                None, self.decision.model_effective),
            # the one case strict cannot prove: the provider answered with a dearer model than any asked for
            "provider_model_mismatch": self._mismatch(info, actual),
            "actual_nano": actual,
            "estimated_nano": self.decision.estimated_nano,
            # 0 in strict estimation (the bound is proven); in expected estimation, reported here.
            "overshoot_nano": max(0, actual - self.decision.estimated_nano),
            "cost_source": source,
            "usage": _usage_dict(info.usage) if problem is None else None,
            "error_type": type(exc).__name__ if exc is not None else None,
            "http_status": status,
            "problem": problem,
            "degraded": self.decision.degraded or ledger_error is not None or problem is not None,
        }
        receipt: dict[str, Any] | None
        try:
            receipt = guard._sign("settlement", body, self.span)
        except (OSError, ValueError, TypeError) as err:
            logger.error("agentguard: could not write settlement receipt for %s: %s", self.decision.call_id, err)
            receipt = None
        if deferred and info.response_id:
            self._settled = (actual, str(receipt["hash"]) if receipt else None)
            guard.defer(info.response_id, self)
        guard.telemetry.on_settlement(self.span, Settled(
            request=self.request, scope=self.scope, decision=self.decision, info=info if problem is None else
            replace(info, usage=None), actual_nano=actual, cost_source=source, receipt=receipt,
            budget=guard.readings(self.decision.caps, states, self.scope), duration_s=time.monotonic() - self.started,
            error_type=type(exc).__qualname__ if exc is not None else None, http_status=status,
            provider_model_mismatch=body["provider_model_mismatch"]))

    def adjust(self, info: ResponseInfo) -> None:
        """Correct a deferred settlement (made at the reservation) to the cost the result reports."""
        guard = self.guard
        settled, settlement_hash = self._settled
        actual, source = self._reported_cost(info, "ok")
        if actual is None or not 0 <= actual <= MAX_AMOUNT_NANO:
            return  # no usage after all: the reservation stands
        hold = self.decision.hold_id
        states = guard.ledger.adjust(hold, actual) if hold is not None else ()
        guard._sign("adjustment", {
            "call_id": self.decision.call_id,
            "settlement": settlement_hash,
            "scope": self.scope.as_dict(),
            "policy": guard._policy_ref,
            "response_model": info.response_model,
            "previous_nano": settled,
            "actual_nano": actual,
            "delta_nano": actual - settled,
            "cost_source": source,
            "usage": _usage_dict(info.usage),
        }, self.span)
        guard._watch(self.decision.caps, states, self.scope)
        guard.telemetry.on_adjustment(guard.readings(self.decision.caps, states, self.scope))

    def _mismatch(self, info: ResponseInfo, actual: int) -> bool:
        answered = info.response_model
        return (answered is not None and actual > self.decision.estimated_nano
                and answered not in (self.decision.model_effective, *self.request.fallback_models)
                and not answered.startswith(self.decision.model_effective))  # a dated snapshot of the model

    def _release_quietly(self) -> None:
        hold = self.decision.hold_id
        if hold is not None:
            try:
                self.guard.ledger.release(hold)
            except Exception as exc:
                logger.error("agentguard: could not release hold %s (%s); it expires on its own", hold,
                             type(exc).__name__)

    def _actual_cost(self, info: ResponseInfo, outcome: str, exc: BaseException | None, status: int | None,
                     sent: bool) -> tuple[int, str, str | None]:
        """(actual nano-USD, cost source, why the reservation stands in for it). Never $0 for a call
        the provider may have done: without a trustworthy cost, the reservation is settled."""
        reservation = self.decision.estimated_nano
        if outcome == "unsent":
            return 0, "none", None
        if outcome == "error":
            if not sent or (status is not None and status >= 400):
                return 0, "none", None
            return reservation, "estimated", f"{type(exc).__name__} after the request was sent"
        if info.problem is not None:
            return reservation, "estimated", info.problem
        if info.deferred:
            return reservation, "estimated", None
        try:
            actual, source = self._reported_cost(info, outcome)
        except Exception as err:
            return reservation, "estimated", f"pricing the usage failed: {type(err).__name__}"
        if actual is None:
            return reservation, "estimated", "no usage reported"
        if not 0 <= actual <= MAX_AMOUNT_NANO:
            return reservation, "estimated", "reported cost out of range"
        return actual, source, None

    def _reported_cost(self, info: ResponseInfo, outcome: str) -> tuple[int | None, str]:
        guard = self.guard
        if info.provider_cost_nano is not None:
            return info.provider_cost_nano, "provider"
        price = self.decision.price
        # priced as the model that answered, at the tier the provider reports (else the one reserved at)
        model = info.response_model or self.decision.model_effective
        tier = guard._tier(self.request) if info.service_tier is None else (
            None if info.service_tier == STANDARD_TIER else info.service_tier)
        if model != self.decision.model_effective or tier != guard._tier(self.request):
            price = guard.prices.lookup(self.request.price_provider, model, tier) or price
        if outcome == "abandoned":
            # Closed before its final usage: what was delivered does not bound the bill (hidden
            # reasoning tokens, server tools, a generation running on after the client hung up).
            return self.decision.estimated_nano, "estimated"
        if info.usage is not None:
            return guard.prices.actual_cost_nano(price, info.usage), "local"
        return None, "none"


def _usage_dict(usage: TokenUsage | None) -> dict[str, int] | None:
    if usage is None:
        return None
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "cache_write_1h_tokens": usage.cache_write_1h_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        # media counts only where the call had them, so a text call's receipt keeps its shape
        **{name: getattr(usage, name) for name in _MEDIA_USAGE if getattr(usage, name)},
    }


_MEDIA_USAGE = ("input_audio_tokens", "input_image_tokens", "output_audio_tokens", "output_image_tokens",
                "input_characters", "input_audio_seconds")


__all__ = ["Decision", "Guard", "GuardedCall", "Refusal", "counter_key"]
