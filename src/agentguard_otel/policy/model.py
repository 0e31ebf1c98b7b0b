"""The policy as validated, immutable pydantic models.

Every model forbids unknown keys (a typo must not silently disable a cap) and is frozen (a policy in
force cannot change under a running guard). Money fields are ``Decimal`` read without a float detour;
the integer nano-USD views are properties so the guard never converts by hand.
"""

from __future__ import annotations

import hashlib
import json
from decimal import ROUND_FLOOR, Decimal
from fnmatch import fnmatchcase
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from agentguard_otel.money import MAX_AMOUNT_NANO, format_usd, usd_to_nano
from agentguard_otel.scope import Scope

Window = Literal["call", "minute", "hour", "day", "week", "month"]
CapAction = Literal["block", "downgrade", "shadow"]
# Spelled out for the type checker; tests assert they equal scope.SCOPE_FIELDS / CAPABILITY_LEVELS.
ScopeField = Literal["tenant", "team", "user", "agent", "task", "capability"]
CapabilityLevel = Literal["read_only", "data_write", "payment_initiate", "payment_execute"]

SEMANTIC_ERROR = "policy_semantics"
SCHEMA_PATH = Path(__file__).with_name("policy.schema.json")
# Rule ids become part of ledger counter keys ("<id>#<cap>|user=..."), so they stay plain identifiers.
RULE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"

_STRICT_MODEL = ConfigDict(extra="forbid", frozen=True)


# gen_ai.provider.name of the calls a rule can see (allow-list globs may name them: "openai/gpt-4o").
GEN_AI_PROVIDERS = ("openai", "openrouter", "anthropic", "aws.bedrock")


def semantic_error(message: str, *at: str | int) -> PydanticCustomError:
    """An error found after the schema passed; ``at`` is the offending field relative to the model that
    raises it, which the loader appends to pydantic's location to point at the exact line."""
    return PydanticCustomError(SEMANTIC_ERROR, "{detail}", {"detail": message, "at": at})


def _no_float_detour(value: object) -> object:
    """A Python float becomes the Decimal of its shortest repr (what was written), not its binary value."""
    if isinstance(value, bool):
        raise ValueError("a USD amount must be a number, not a boolean")
    if isinstance(value, float):
        return Decimal(repr(value))
    return value


def _check_glob(pattern: str) -> str:
    """fnmatch quietly reads an unclosed ``[`` as a literal; in a policy that is a typo, so refuse it."""
    start = pattern.find("[")
    while start != -1:
        end = start + 1
        if pattern.startswith("!", end):
            end += 1
        if pattern.startswith("]", end):
            end += 1
        close = pattern.find("]", end)
        if close == -1:
            raise ValueError(f"unclosed '[' in glob {pattern!r}")
        start = pattern.find("[", close + 1)
    return pattern


UsdAmount = Annotated[Decimal, Field(ge=0, allow_inf_nan=False), BeforeValidator(_no_float_detour)]
PositiveInt = Annotated[StrictInt, Field(gt=0)]
# A share of a cap's limit: exact, above 0, and at most 10x the limit (past that nothing is watching).
Threshold = Annotated[Decimal, Field(gt=0, le=10, allow_inf_nan=False), BeforeValidator(_no_float_detour)]
Glob = Annotated[str, Field(min_length=1), AfterValidator(_check_glob)]
GlobList = Annotated[list[Glob], Field(min_length=1)]


def _check_webhook(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("webhook must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("webhook must not carry user:password@ (put a token in its path or query)")
    return url


def _glob_hit(names: tuple[str, ...], globs: str | list[str]) -> bool:
    """Any name equals or fnmatch-matches any glob (equality first, so a ``[`` in a name stays literal)."""
    patterns = (globs,) if isinstance(globs, str) else globs
    return any(name == glob or fnmatchcase(name, glob) for glob in patterns for name in names)


class Cap(BaseModel):
    """One spending limit over one window; the most restrictive action among all hit caps wins."""

    model_config = _STRICT_MODEL

    limit_usd: UsdAmount = Field(description="Limit in USD; read exactly as written (no float rounding).")
    window: Window = Field(description="call, or a calendar window in the policy's time zone.")
    action: CapAction = Field(default="block", description="What happens when the limit would be exceeded.")
    downgrade_to: Annotated[str, Field(min_length=1)] | None = Field(
        default=None, description="Model to switch to; required iff action is downgrade.")
    reason: str | None = Field(default=None, description="Shown to the caller and recorded in the receipt.")
    rolling: StrictBool = Field(default=False,
                                description="Sliding window instead of calendar-aligned (not for call).")
    alert_at: list[Threshold] = Field(
        default_factory=lambda: [Decimal("0.8"), Decimal("1")],
        description="Utilizations (spent + held over the limit) at which a budget event is emitted, once "
                    "per counter and window; [] for none. A call window keeps no counter: it has none.")

    @model_validator(mode="after")
    def _consistent(self) -> Cap:
        if self.action == "downgrade" and self.downgrade_to is None:
            raise semantic_error("action 'downgrade' needs downgrade_to (the model to switch to)", "action")
        if self.action != "downgrade" and self.downgrade_to is not None:
            raise semantic_error(f"downgrade_to only applies to action 'downgrade', not {self.action!r}",
                                 "downgrade_to")
        if self.rolling and self.window == "call":
            raise semantic_error("a 'call' window cannot be rolling", "rolling")
        if len(set(self.alert_at)) != len(self.alert_at):
            raise semantic_error("alert_at lists a threshold twice", "alert_at")
        if self.limit_nano > MAX_AMOUNT_NANO:
            raise semantic_error(f"limit_usd is more than a ledger holds (at most {format_usd(MAX_AMOUNT_NANO)})",
                                 "limit_usd")
        return self

    @cached_property
    def limit_nano(self) -> int:
        """Rounded down, so the integer limit never admits more than the written one."""
        return usd_to_nano(self.limit_usd, rounding=ROUND_FLOOR)

    @cached_property
    def thresholds(self) -> tuple[tuple[Decimal, int, int], ...]:
        """``alert_at`` in ascending order, each with its exact ratio (numerator, denominator); none
        for a call window, which keeps no counter."""
        return () if self.window == "call" else tuple((t, *t.as_integer_ratio()) for t in sorted(self.alert_at))


class ModelRule(BaseModel):
    """Which models a rule lets through, by name globs and by price ceiling."""

    model_config = _STRICT_MODEL

    allow: list[Glob] | None = Field(
        default=None,
        description='Globs over "provider/model" and bare "model"; if set, a model must match one.')
    deny: list[Glob] | None = Field(default=None, description="Globs like allow; a deny match always wins.")
    max_input_usd_per_mtok: UsdAmount | None = Field(
        default=None, description="Only models whose input price (USD per million tokens) is at most this.")

    @cached_property
    def max_input_nano_per_mtok(self) -> int | None:
        """Rounded down, like every ceiling: a price just above the written ceiling is never admitted."""
        if self.max_input_usd_per_mtok is None:
            return None
        return usd_to_nano(self.max_input_usd_per_mtok, rounding=ROUND_FLOOR)


class Rule(BaseModel):
    """Caps and model limits for the calls whose scope matches."""

    model_config = _STRICT_MODEL

    id: Annotated[str, Field(pattern=RULE_ID_PATTERN)] = Field(description="Unique within the policy.")
    match: dict[ScopeField, Glob | GlobList] = Field(
        default_factory=dict,
        description="Scope field -> glob or list of globs (any of); omitted fields match anything.")
    per: ScopeField | Annotated[list[ScopeField], Field(min_length=1)] | None = Field(
        default=None, description="A separate counter for each value (combination) of these scope fields.")
    models: ModelRule | None = None
    max_output_tokens: PositiveInt | None = Field(
        default=None,
        description="Clamps (or injects) the request's max output tokens so the price bound is finite.")
    require_capability: CapabilityLevel | None = Field(
        default=None, description="The caller's capability must be at least this.")
    caps: list[Cap] = Field(default_factory=list)

    @model_validator(mode="after")
    def _distinct_per(self) -> Rule:
        seen: set[str] = set()
        for index, field in enumerate(self.per_fields):
            if field in seen:
                raise semantic_error(f"scope field {field!r} is listed twice", "per", index)
            seen.add(field)
        return self

    @model_validator(mode="after")
    def _downgrades_allowed(self) -> Rule:
        """A downgrade the rule's own model list forbids would send what the policy refuses."""
        for index, cap in enumerate(self.caps):
            target = cap.downgrade_to
            if target is not None and not any(self.model_allowed_by_name(provider, target)
                                              for provider in GEN_AI_PROVIDERS):
                raise semantic_error(f"downgrade_to {target!r} is not allowed by this rule's models",
                                     "caps", index, "downgrade_to")
        return self

    @cached_property
    def per_fields(self) -> tuple[ScopeField, ...]:
        """``per`` as a tuple whatever way it was written (absent -> one shared counter)."""
        if self.per is None:
            return ()
        return (self.per,) if isinstance(self.per, str) else tuple(self.per)

    def matches(self, scope: Scope) -> bool:
        """Every constrained field must match; an unset scope value never matches a constraint."""
        for field, globs in self.match.items():
            value = scope.get(field)
            if value is None or not _glob_hit((value,), globs):
                return False
        return True

    def model_allowed_by_name(self, provider: str, model: str) -> bool:
        """Name globs only (price ceilings need the price book, which the guard has)."""
        if self.models is None:
            return True
        names = (f"{provider}/{model}", model)
        if self.models.deny is not None and _glob_hit(names, self.models.deny):
            return False
        return self.models.allow is None or _glob_hit(names, self.models.allow)


class UnknownModelPrice(BaseModel):
    """The rate an unpriced model is charged at under unknown_model: allow (never a silent $0)."""

    model_config = _STRICT_MODEL

    input_usd_per_mtok: UsdAmount = Decimal(15)
    output_usd_per_mtok: UsdAmount = Decimal(75)

    @cached_property
    def input_nano_per_mtok(self) -> int:
        """Rounded up: an assumed price errs on the expensive side."""
        return usd_to_nano(self.input_usd_per_mtok)

    @cached_property
    def output_nano_per_mtok(self) -> int:
        return usd_to_nano(self.output_usd_per_mtok)


class Issuer(BaseModel):
    """A key whose signed capability claims the guard accepts."""

    model_config = _STRICT_MODEL

    id: Annotated[str, Field(min_length=1)] = Field(description="The issuer id a claim names.")
    public_key: Annotated[str, Field(min_length=1)] = Field(
        description="Path of the issuer's Ed25519 public key (PEM), relative to the policy file.")


class CreditCheck(BaseModel):
    """Pre-flight check of the provider key's remaining credit, for providers that report it
    (OpenRouter's ``/api/v1/key``); asked at most once per interval per key."""

    model_config = _STRICT_MODEL

    min_remaining_usd: UsdAmount
    interval_seconds: PositiveInt = 60

    @cached_property
    def min_remaining_nano(self) -> int:
        return usd_to_nano(self.min_remaining_usd)


class Alerts(BaseModel):
    """Where budget threshold events go besides the OTel log record every event is."""

    model_config = _STRICT_MODEL

    webhook: Annotated[str, AfterValidator(_check_webhook)] | None = Field(
        default=None, description="An http(s) URL that receives each budget event as a JSON POST.")


class Policy(BaseModel):
    """A whole policy file."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="agentguard-otel policy")

    version: Literal[1]
    id: Annotated[str, Field(min_length=1)] = Field(
        default="inline",
        description="Policy name for receipts; defaults to the file name without extension.")
    mode: Literal["enforce", "shadow"] = Field(
        default="enforce", description="shadow: record what would have happened, block nothing.")
    unknown_model: Literal["block", "allow"] = Field(
        default="block",
        description="A model without a known price: block it, or allow it at unknown_model_price.")
    unknown_model_price: UnknownModelPrice = Field(default_factory=UnknownModelPrice)
    unknown_endpoint: Literal["block", "allow"] = Field(
        default="block",
        description="A request no adapter can price (a new or unpriced API, batches, fine-tuning...): block it "
                    "in enforce mode, or allow it with a degraded decision receipt.")
    estimation: Literal["strict", "expected"] = Field(
        default="strict", description="strict: reserve a proven upper bound; expected: a best guess.")
    failure_mode: Literal["closed", "open"] = Field(
        default="closed",
        description="Ledger unreachable: closed blocks, open allows with a degraded receipt.")
    timezone: str = Field(default="UTC", description="IANA time zone that calendar windows align to.")
    default_max_output_tokens: PositiveInt = Field(
        default=4096,
        description="Injected when caps apply and neither a rule nor the request bounds the output.")
    trust_baggage: list[Literal["tenant", "team", "user", "agent", "task"]] = Field(
        default_factory=list,
        description="Scope fields taken from inbound OTel baggage (default none: any HTTP client can send "
                    "baggage). A capability is never taken from baggage.")
    capability_issuers: list[Issuer] = Field(
        default_factory=list, description="Keys whose signed capability claims grant a capability.")
    azure_deployments: dict[Annotated[str, Field(min_length=1)], Annotated[str, Field(min_length=1)]] = Field(
        default_factory=dict,
        description="Azure OpenAI deployment name -> the model it serves. A deployment not listed is priced "
                    "and allow-listed as its own name (a known model id), or else follows unknown_model.")
    alerts: Alerts = Field(default_factory=Alerts, description="Delivery of budget threshold events.")
    credit_check: CreditCheck | None = Field(
        default=None, description="Block calls while the provider key's remaining credit is below a minimum.")
    rules: list[Rule] = Field(default_factory=list)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _downgrades_priced(self, info: ValidationInfo) -> Policy:
        priced = (info.context or {}).get("priced")
        if priced is None or self.unknown_model != "block":
            return self
        for rule_index, rule in enumerate(self.rules):
            for cap_index, cap in enumerate(rule.caps):
                if cap.downgrade_to is not None and not priced(cap.downgrade_to):
                    raise semantic_error(f"downgrade_to {cap.downgrade_to!r} has no known price "
                                         "(unknown_model: block would block every downgraded call)",
                                         "rules", rule_index, "caps", cap_index, "downgrade_to")
        return self

    @model_validator(mode="after")
    def _unique_rule_ids(self) -> Policy:
        first: dict[str, int] = {}
        for index, rule in enumerate(self.rules):
            if rule.id in first:
                raise semantic_error(f"rule id {rule.id!r} is already used by rules[{first[rule.id]}]",
                                     "rules", index, "id")
            first[rule.id] = index
        return self

    @property
    def digest(self) -> str:
        """Identifies the policy in receipts. Recomputed on access (a cached copy would go stale across
        ``model_copy``); callers on a hot path keep the value."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"),
                               ensure_ascii=False)
        return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def matching_rules(self, scope: Scope) -> list[Rule]:
        """The rules that apply to ``scope``, in file order."""
        return [rule for rule in self.rules if rule.matches(scope)]


DEFAULT_POLICY = Policy(version=1, id="default", mode="shadow")


def policy_json_schema() -> dict[str, Any]:
    """The JSON Schema of a policy file, for editors and CI (shipped as ``policy.schema.json``)."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **Policy.model_json_schema()}


def render_policy_schema() -> str:
    """The exact text of the shipped schema file."""
    return json.dumps(policy_json_schema(), indent=2, ensure_ascii=False) + "\n"


def write_policy_schema(path: Path = SCHEMA_PATH) -> None:
    """Regenerate the shipped schema file after changing a model (a test checks it is current)."""
    path.write_text(render_policy_schema(), encoding="utf-8")
