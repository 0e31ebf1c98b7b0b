"""The orchestration of one call: scope -> rules -> price bound -> reservation -> decision ->
signed receipt -> (the call) -> usage -> actual cost -> settlement -> signed receipt.

The guard knows no SDK: adapters hand it an :class:`LLMRequest` and a :class:`ResponseInfo`.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal
from urllib.parse import quote

from agentguard_otel.errors import AgentGuardBlocked, LedgerUnavailable
from agentguard_otel.ledger import CounterSpec, CounterState, Ledger, Reservation
from agentguard_otel.money import format_usd
from agentguard_otel.policy import Cap, Policy, Rule
from agentguard_otel.pricing import (
    ModelPrice,
    PriceBook,
    TokenUsage,
    fallback_price,
    input_token_bound,
)
from agentguard_otel.providers.base import LLMRequest, RequestChanges, ResponseInfo
from agentguard_otel.receipts import ReceiptWriter
from agentguard_otel.scope import Scope, capability_satisfies, current_scope
from agentguard_otel.telemetry import BudgetReading, CallSpan, Telemetry

logger = logging.getLogger(__name__)

Action = Literal["allow", "downgrade", "block", "shadow"]
_SEVERITY: dict[str, int] = {"allow": 0, "shadow": 1, "downgrade": 2, "block": 3}
DEFAULT_TIMEOUT_SECONDS = 600.0
HOLD_GRACE_SECONDS = 60.0


@dataclass(frozen=True)
class CapRef:
    """One cap of one rule, with the ledger counter it maps to for this caller."""

    rule: Rule
    index: int
    cap: Cap
    counter: str

    def describe(self) -> dict[str, Any]:
        return {
            "rule_id": self.rule.id,
            "index": self.index,
            "window": self.cap.window,
            "rolling": self.cap.rolling,
            "limit_nano": self.cap.limit_nano,
            "action": self.cap.action,
            "counter": self.counter,
        }


@dataclass(frozen=True)
class Decision:
    call_id: str
    action: Action
    reason: str
    model_requested: str
    model_effective: str
    estimated_nano: int
    price: ModelPrice
    max_output_tokens: int | None  # the output bound the estimate used
    changes: RequestChanges
    rule_id: str | None = None
    cap: CapRef | None = None
    would: Action | None = None  # in shadow: what enforcement would have done
    hold_id: str | None = None
    degraded: bool = False
    unknown_model: bool = False
    caps: tuple[CapRef, ...] = ()  # every cap that applied, to read the budget at settlement


@dataclass
class _Outcome:
    action: Action
    reason: str
    rule_id: str | None = None
    cap: CapRef | None = None


def budget_readings(caps: tuple[CapRef, ...], states: tuple[CounterState, ...]) -> tuple[BudgetReading, ...]:
    by_counter = {c.counter: c for c in caps}
    return tuple(BudgetReading(s.key, ref.rule.id, ref.cap.window, s.spent_nano + s.held_nano, s.limit_nano)
                 for s in states if (ref := by_counter.get(s.key)) is not None)


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
                 telemetry: Telemetry) -> None:
        self.policy = policy
        self.prices = prices
        self.ledger = ledger
        self.receipts = receipts
        self.telemetry = telemetry
        self._policy_ref = {"id": policy.id, "version": policy.version, "digest": policy.digest}

    # -- decision ---------------------------------------------------------------------------

    def begin(self, request: LLMRequest) -> GuardedCall:
        """Decide the call and place its hold; raises :class:`AgentGuardBlocked` when blocked."""
        scope = current_scope()
        span = self.telemetry.start_call(request, scope)
        try:
            decision = self._decide(request, scope)
        except BaseException as exc:
            span.fail(exc)
            raise
        receipt: dict[str, Any] | None
        try:
            receipt = self._sign("decision", self._decision_body(request, scope, decision), span)
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
            span.fail(error)
            raise error
        return GuardedCall(self, request, scope, decision, receipt, span)

    def _decide(self, request: LLMRequest, scope: Scope) -> Decision:
        policy = self.policy
        enforcing = policy.mode == "enforce"
        rules = policy.matching_rules(scope)
        price, unknown = self._price(request, request.model)
        # OpenRouter-style fallback lists: any candidate may answer, so each must be allowed and the
        # reservation must cover the most expensive one (until a downgrade pins the model).
        fallbacks = [self._price(request, m) for m in request.fallback_models]
        unknown = unknown or any(flag for _, flag in fallbacks)
        candidates = [(request.model, price), *((m, p) for m, (p, _) in zip(request.fallback_models, fallbacks,
                                                                              strict=True))]
        violation = self._violation(request, scope, rules, candidates, unknown)
        extra = [p for p, _ in fallbacks]
        caps = [CapRef(rule, i, cap, counter_key(rule, i, scope)) for rule in rules for i, cap in enumerate(rule.caps)]
        clamp = min((r.max_output_tokens for r in rules if r.max_output_tokens is not None), default=None)
        output_bound, inject = self._output_bound(request, clamp, bool(caps))
        clamp_change = output_bound if inject and enforcing else None
        base: dict[str, Any] = {"call_id": uuid.uuid4().hex, "model_requested": request.model,
                                "max_output_tokens": output_bound}

        def decided(outcome: _Outcome, model: str, estimate: int, price: ModelPrice, unknown: bool,
                    reservation: Reservation | None = None, would: Action | None = None,
                    degraded: bool = False) -> Decision:
            admitted = outcome.action != "block"
            changes = RequestChanges(model=model if model != request.model else None,
                                     max_output_tokens=clamp_change) if admitted else RequestChanges()
            return Decision(action=outcome.action, reason=outcome.reason, rule_id=outcome.rule_id,
                            cap=outcome.cap, model_effective=model, estimated_nano=estimate, price=price,
                            changes=changes, would=would, unknown_model=unknown, degraded=degraded,
                            hold_id=reservation.hold_id if reservation and admitted else None,
                            caps=tuple(caps), **base)

        def reserve(specs: list[CounterSpec], model: str, estimate: int, price: ModelPrice,
                    unknown: bool) -> Reservation | Decision:
            try:
                return self.ledger.reserve(specs, estimate, self._ttl(request))
            except LedgerUnavailable as exc:
                if policy.failure_mode == "closed":
                    return decided(_Outcome("block", f"ledger unavailable (failure_mode closed): {exc}"),
                                   model, estimate, price, unknown, degraded=True)
                logger.warning("agentguard: ledger unavailable, allowing the call (failure_mode open): %s", exc)
                return decided(_Outcome("allow", f"ledger unavailable (failure_mode open): {exc}"),
                               model, estimate, price, unknown, degraded=True)

        ledger_caps = [c for c in caps if c.cap.window != "call"]
        if not enforcing:
            # Shadow mode: hold everything, enforce nothing, record what enforcement would have done.
            estimate = self._estimate(request, [price, *extra], output_bound)
            held = reserve([self._spec(c, False) for c in ledger_caps], request.model, estimate, price, unknown)
            if isinstance(held, Decision):
                return held
            noted = self._over_after(caps, held.states, estimate, lambda c: True)
            worst = violation or (max(noted, key=lambda o: _SEVERITY[o.action]) if noted else None)
            if worst is None:
                return decided(_Outcome("allow", "within budget"), request.model, estimate, price, unknown, held)
            shadow = _Outcome("shadow", f"{worst.reason} (shadow: would {worst.action})", worst.rule_id, worst.cap)
            return decided(shadow, request.model, estimate, price, unknown, held, would=worst.action)

        if violation is not None:
            estimate = self._estimate(request, [price, *extra], output_bound)
            return decided(violation, request.model, estimate, price, unknown)

        model = request.model
        tripped: set[str] = set()
        outcome = _Outcome("allow", "within budget")
        for _ in range(len(caps) + 1):
            estimate = self._estimate(request, [price, *extra], output_bound)
            over = [c for c in caps if c.cap.window == "call" and c.cap.action != "shadow"
                    and c.counter not in tripped and estimate > c.cap.limit_nano]
            if not over:
                specs = [self._spec(c, c.cap.action != "shadow" and c.counter not in tripped) for c in ledger_caps]
                held = reserve(specs, model, estimate, price, unknown)
                if isinstance(held, Decision):
                    return held
                if held.admitted:
                    if outcome.action == "allow":
                        noted = self._over_after(caps, held.states, estimate, lambda c: c.cap.action == "shadow")
                        if noted:
                            outcome = _Outcome("shadow", f"{noted[0].reason} (shadow cap)", noted[0].rule_id,
                                               noted[0].cap)
                    return decided(outcome, model, estimate, price, unknown, held,
                                   would="block" if outcome.action == "shadow" else None)
                by_counter = {c.counter: c for c in ledger_caps}
                over = [by_counter[spec.key] for spec in held.exceeded]
            blocking = [c for c in over if c.cap.action == "block"]
            if blocking:
                first = blocking[0]
                return decided(_Outcome("block", self._cap_reason(first), first.rule.id, first),
                               model, estimate, price, unknown)
            # Only downgrade caps are exceeded: switch model, stop enforcing those caps, try again.
            first = over[0]
            tripped.update(c.counter for c in over)
            target = first.cap.downgrade_to or model
            if target != model:
                model = target
                price, unknown = self._price(request, model)
                extra = []  # the adapter pins the fallback list to the downgrade target
            outcome = _Outcome("downgrade", f"{self._cap_reason(first)}: downgraded to {model}", first.rule.id, first)
        raise AssertionError("every pass trips at least one cap, so the loop ends within len(caps) passes")

    def _over_after(self, caps: list[CapRef], states: tuple[CounterState, ...], estimate: int,
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
                   candidates: list[tuple[str, ModelPrice]], unknown: bool) -> _Outcome | None:
        """Checks that need no ledger: capability, model allow-lists (for every model that may
        answer), unknown model."""
        for rule in rules:
            required = rule.require_capability
            if required is not None and not capability_satisfies(scope.capability, required):
                held = scope.capability or "none"
                return _Outcome("block", f"rule {rule.id} requires capability {required}, caller has {held}",
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
        check = self.policy.credit_check
        remaining = request.credit_remaining_nano
        if check is not None and remaining is not None and remaining < check.min_remaining_nano:
            return _Outcome("block", f"provider key has {format_usd(remaining)} credit left, below the policy's "
                            f"minimum of {format_usd(check.min_remaining_nano)}")
        if unknown and self.policy.unknown_model == "block":
            names = [m for m, p in candidates if p.source == "fallback"]
            return _Outcome("block", f"unknown model {', '.join(names)} has no price (unknown_model: block)")
        return None

    def _price(self, request: LLMRequest, model: str) -> tuple[ModelPrice, bool]:
        price = self.prices.lookup(request.price_provider, model)
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
        """The price bound of the call: of its most expensive candidate model."""
        input_tokens = input_token_bound(request.input_bytes, request.input_items, request.input_images,
                                         self.policy.estimation)
        output_tokens = (output_bound or 0) * request.output_multiplier
        return max(self.prices.bound_cost_nano(price, input_tokens, output_tokens) for price in prices)

    def _spec(self, ref: CapRef, enforce: bool) -> CounterSpec:
        return CounterSpec(key=ref.counter, limit_nano=ref.cap.limit_nano, window=ref.cap.window,  # type: ignore[arg-type]
                           rolling=ref.cap.rolling, timezone=self.policy.timezone, enforce=enforce)

    @staticmethod
    def _cap_reason(ref: CapRef) -> str:
        kind = "rolling " if ref.cap.rolling else ""
        text = ref.cap.reason or f"{kind}{ref.cap.window} cap of rule {ref.rule.id} reached"
        return text

    @staticmethod
    def _ttl(request: LLMRequest) -> float:
        return (request.timeout_seconds or DEFAULT_TIMEOUT_SECONDS) + HOLD_GRACE_SECONDS

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

    def _sign(self, kind: Literal["decision", "settlement"], body: dict[str, Any], span: CallSpan) -> dict[str, Any]:
        receipt = self.receipts.append(kind, body)
        self.telemetry.emit_receipt(receipt, span)
        return receipt


_OUTCOME_SOURCE = {"ok": "local", "error": "local", "abandoned": "estimated"}


class GuardedCall:
    """A decided call in flight: settles exactly once, however it ends."""

    def __init__(self, guard: Guard, request: LLMRequest, scope: Scope, decision: Decision,
                 receipt: Mapping[str, Any] | None, span: CallSpan) -> None:
        self.guard = guard
        self.request = request
        self.scope = scope
        self.decision = decision
        self.decision_hash = str(receipt["hash"]) if receipt else None
        self.span = span
        self.started = time.monotonic()
        self._last_renew = self.started
        self._done = False
        self._lock = threading.Lock()

    @property
    def changes(self) -> RequestChanges:
        return self.decision.changes

    def keepalive(self) -> None:
        """A long stream renews its hold so it does not expire while chunks flow."""
        hold = self.decision.hold_id
        now = time.monotonic()
        ttl = Guard._ttl(self.request)
        if hold is None or now - self._last_renew < ttl / 4:
            return
        self._last_renew = now
        try:
            self.guard.ledger.renew(hold, ttl)
        except LedgerUnavailable as exc:
            logger.warning("agentguard: could not renew hold %s: %s", hold, exc)

    def finish(self, info: ResponseInfo, *, complete: bool = True) -> None:
        """Settle to the real cost (or to an estimate when a stream ended early)."""
        self._settle(info, "ok" if complete else "abandoned", None)

    def fail(self, exc: BaseException, info: ResponseInfo | None = None) -> None:
        """The provider call failed: drop the hold (or settle what the provider billed, if it said)."""
        self._settle(info or ResponseInfo(), "error", exc)

    def _settle(self, info: ResponseInfo, outcome: str, exc: BaseException | None) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        guard = self.guard
        actual, source = self._actual_cost(info, outcome)
        states: tuple[CounterState, ...] = ()
        ledger_error = None
        hold = self.decision.hold_id
        try:
            if hold is not None and source == "none":
                guard.ledger.release(hold)
            elif hold is not None:
                states = guard.ledger.settle(hold, actual)
        except LedgerUnavailable as err:
            ledger_error = str(err)
            logger.error("agentguard: could not settle call %s: %s", self.decision.call_id, err)
        usage = info.usage
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
            "actual_nano": actual,
            "estimated_nano": self.decision.estimated_nano,
            # 0 in strict estimation (the bound is proven); in expected estimation, reported here.
            "overshoot_nano": max(0, actual - self.decision.estimated_nano),
            "cost_source": source,
            "usage": _usage_dict(usage),
            "error_type": type(exc).__name__ if exc is not None else None,
            "degraded": self.decision.degraded or ledger_error is not None,
        }
        receipt: dict[str, Any] | None
        try:
            receipt = guard._sign("settlement", body, self.span)
        except (OSError, ValueError) as err:  # disk trouble, or a stream settling after uninstrument()
            logger.error("agentguard: could not write settlement receipt for %s: %s", self.decision.call_id, err)
            receipt = None
        guard.telemetry.on_settlement(self.span, self.request, self.scope, self.decision, info, actual, source,
                                      receipt, budget_readings(self.decision.caps, states),
                                      time.monotonic() - self.started, exc)

    def _actual_cost(self, info: ResponseInfo, outcome: str) -> tuple[int, str]:
        guard = self.guard
        if info.provider_cost_nano is not None:
            return info.provider_cost_nano, "provider"
        price = self.decision.price
        if info.response_model and info.response_model != self.decision.model_effective:
            price = guard.prices.lookup(self.request.price_provider, info.response_model) or price
        if info.usage is not None:
            return guard.prices.actual_cost_nano(price, info.usage), _OUTCOME_SOURCE[outcome]
        if outcome == "abandoned":
            # No usage arrived: bill the input bound and every output byte seen (a token is >= 1 byte).
            input_tokens = input_token_bound(self.request.input_bytes, self.request.input_items,
                                             self.request.input_images, "strict")
            usage = TokenUsage(input_tokens=input_tokens, output_tokens=info.output_bytes)
            return guard.prices.actual_cost_nano(price, usage), "estimated"
        return 0, "none"


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
    }


__all__ = ["Decision", "Guard", "GuardedCall", "counter_key"]
