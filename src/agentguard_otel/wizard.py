"""``agentguard wizard``: a working policy for a team in a minute, from the task templates users
start from, with the models checked against the price book the guard will use.

The answers (asked on a terminal, or given as flags) become one rule for the team: the template's
model allow-list, a daily cap that blocks or downgrades, a rolling per-minute runaway cap and, for
payments, the capability the calls need. The policy is validated with the policy loader before the
file appears, and an existing file is never replaced unless the user says so.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from agentguard_otel.errors import AgentGuardError
from agentguard_otel.money import usd_to_nano
from agentguard_otel.policy import Policy, load_policy
from agentguard_otel.policy.model import RULE_ID_PATTERN
from agentguard_otel.pricing import PriceBook
from agentguard_otel.pricing.book import ADAPTER_PROVIDERS, OPENROUTER
from agentguard_otel.pricing.catalog import Selection, model_id, table, usd_text
from agentguard_otel.pricing.prices import ModelPrice
from agentguard_otel.providers.bedrock import PRICE_PROVIDER as BEDROCK_PRICES
from agentguard_otel.providers.bedrock import PROVIDER as BEDROCK

MINUTE_SHARE = 20
"""Default runaway cap: a twentieth of the daily cap a minute (a loop cannot burn a day's budget in
less than 20 minutes)."""
NO_DOWNGRADE = "none"
_TEAM = re.compile(RULE_ID_PATTERN)


@dataclass(frozen=True)
class Template:
    """A task and the models recommended for it."""

    key: str
    title: str
    model: str
    """``provider/model`` as the catalog lists it."""
    downgrade_to: str | None = None
    """The cheaper model of the same provider calls switch to past the daily cap (None: they are blocked)."""
    capability: str | None = None


TEMPLATES = (
    Template("code-review", "code review", "anthropic/claude-haiku-4-5"),
    Template("risk-analysis", "risk analysis", "openai/gpt-5", "openai/gpt-5-mini"),
    Template("payment-approval", "payment approval", "anthropic/claude-opus-4-7", capability="payment_execute"),
    Template("chargeback-evidence", "chargeback evidence", "anthropic/claude-sonnet-4-6",
             "anthropic/claude-haiku-4-5"),
    Template("agent-support", "agent support", "openai/gpt-5-mini"),
    # gpt-4.1 reads a million tokens a request (the longest context of the openai models priced).
    Template("repo-scan", "repo scan", "openai/gpt-4.1", "openai/gpt-5-mini"),
)
TEMPLATE_KEYS = tuple(template.key for template in TEMPLATES)


@dataclass(frozen=True)
class Answers:
    """Everything the policy is made of."""

    template: Template
    team: str
    model: ModelPrice
    downgrade_to: ModelPrice | None
    daily_nano: int
    minute_nano: int
    daily_usd: Decimal
    minute_usd: Decimal
    per_user: bool = False


class Catalog:
    """The models the wizard may choose from: the price book's, under the adapters' providers."""

    def __init__(self, book: PriceBook) -> None:
        self.book = book
        self.prices = {model_id(price): price for price in book.catalog() if price.provider in ADAPTER_PROVIDERS}

    def model(self, text: str, what: str) -> ModelPrice:
        """A ``provider/model`` the catalog prices, or an error saying how to find one."""
        wanted = text.strip()
        price = self.prices.get(wanted)
        if price is None:
            provider, slash, name = wanted.partition("/")
            found = self.book.lookup(provider, name) if slash and provider in ADAPTER_PROVIDERS else None
            if found is None:
                raise AgentGuardError(f"{what} {wanted!r} has no price in the catalog; write it as provider/model "
                                      f"(providers: {', '.join(ADAPTER_PROVIDERS)}) and see `agentguard models`")
            price = found
        return price

    def downgrade(self, text: str, model: ModelPrice) -> ModelPrice | None:
        """The downgrade target: ``none``, or a cheaper model of ``model``'s provider (the guard only
        rewrites the model name, so the same client must serve it); a bare name means that provider."""
        wanted = text.strip()
        if wanted.lower() == NO_DOWNGRADE:
            return None
        if not wanted.startswith(f"{model.provider}/"):
            # An OpenRouter model id is vendor/model itself; elsewhere a provider/ prefix names the provider.
            if model.provider != OPENROUTER and wanted.split("/", 1)[0] in ADAPTER_PROVIDERS:
                raise AgentGuardError(f"the downgrade target {wanted!r} is not served by {model.provider}, the "
                                      f"provider of {model_id(model)}: a downgrade rewrites the model of the "
                                      "same call")
            wanted = f"{model.provider}/{wanted}"
        target = self.model(wanted, "the downgrade target")
        if target.model == model.model:
            raise AgentGuardError(f"the downgrade target {wanted!r} is the model itself")
        if target.input > model.input or target.output > model.output:
            raise AgentGuardError(
                f"the downgrade target {model_id(target)} ({_rates(target)}) is not cheaper than "
                f"{model_id(model)} ({_rates(model)})")
        return target

    def listing(self, provider: str) -> str:
        return table(Selection(provider=provider).select(self.prices.values()))


def _rates(price: ModelPrice) -> str:
    return f"{usd_text(price.input)} in / {usd_text(price.output)} out per Mtok"


def parse_usd(text: str, what: str) -> tuple[Decimal, int]:
    """A positive USD amount, exactly as written, and its nano-USD (rounded down, as a cap is)."""
    try:
        amount = Decimal(text.strip())
    except InvalidOperation:
        raise AgentGuardError(f"{what} takes a USD amount such as 50 or 2.5, got {text!r}") from None
    if not amount.is_finite() or amount <= 0:
        raise AgentGuardError(f"{what} must be a positive USD amount, got {text!r}")
    nano = usd_to_nano(amount, rounding=ROUND_FLOOR)
    if nano == 0:
        raise AgentGuardError(f"{what} is below a nano-dollar: {text!r}")
    return amount, nano


def parse_team(text: str) -> str:
    team = text.strip()
    if not _TEAM.match(team):
        raise AgentGuardError(f"a team is a name of letters, digits and . _ : - (starting with a letter or "
                              f"digit), got {text!r}")
    return team


def template(text: str) -> Template:
    """A template by key, or by its number in :data:`TEMPLATES` (1-based)."""
    wanted = text.strip().lower()
    for index, candidate in enumerate(TEMPLATES, start=1):
        if wanted in (candidate.key, str(index)):
            return candidate
    raise AgentGuardError(f"unknown template {text!r}; choose 1-{len(TEMPLATES)} or one of "
                          f"{', '.join(TEMPLATE_KEYS)}")


def minute_default(daily_usd: Decimal) -> Decimal:
    return (daily_usd / MINUTE_SHARE).normalize()


def check_caps(answers: Answers) -> None:
    if answers.minute_nano > answers.daily_nano:
        raise AgentGuardError(f"the per-minute cap (${answers.minute_usd:f}) is above the daily cap "
                              f"(${answers.daily_usd:f}): it would never stop a loop before the day's budget")


def _gen_ai_provider(price: ModelPrice) -> str:
    """The provider name a policy's allow-list globs see (Bedrock's calls report ``aws.bedrock``)."""
    return BEDROCK if price.provider == BEDROCK_PRICES else price.provider


def policy_data(answers: Answers) -> dict[str, Any]:
    """The policy as data, in the order its file lists it."""
    models = [answers.model, *([answers.downgrade_to] if answers.downgrade_to else [])]
    daily: dict[str, Any] = {"limit_usd": answers.daily_usd, "window": "day"}
    if answers.downgrade_to is None:
        daily.update(action="block", reason="daily budget")
    else:
        daily.update(action="downgrade", downgrade_to=answers.downgrade_to.model)
    rule: dict[str, Any] = {"id": answers.template.key, "match": {"team": answers.team}}
    if answers.per_user:
        rule["per"] = "user"
    rule["models"] = {"allow": [f"{_gen_ai_provider(price)}/{price.model}" for price in models]}
    if answers.template.capability:
        rule["require_capability"] = answers.template.capability
    rule["caps"] = [daily, {"limit_usd": answers.minute_usd, "window": "minute", "action": "block",
                            "rolling": True, "reason": "runaway loop"}]
    return {"version": 1, "id": f"{answers.team}-{answers.template.key}", "mode": "enforce",
            "unknown_model": "block", "rules": [rule]}


_PLAIN = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
_YAML_WORDS = {"y", "yes", "n", "no", "true", "false", "on", "off", "null"}
"""Words a YAML reader takes for booleans or null: never written as plain scalars."""


def _yaml(value: Any) -> str:
    """A flow-style YAML value: identifiers plain, other strings as JSON strings (valid YAML),
    amounts as their exact decimal."""
    if isinstance(value, str) and _PLAIN.match(value) and value.lower() not in _YAML_WORDS:
        return value
    if isinstance(value, Decimal):
        return f"{value:f}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {_yaml(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_yaml(item) for item in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def render_policy(answers: Answers) -> str:
    """The policy file's text, laid out like the README's examples."""
    data = policy_data(answers)
    (rule,) = data["rules"]
    after = (f"Past the daily cap calls switch to {answers.downgrade_to.model}; only the runaway cap stops them"
             if answers.downgrade_to else "Past the daily cap calls are blocked")
    lines = [f"# {answers.template.title} for team {answers.team}, written by `agentguard wizard`:",
             f"# {after}. Check it with `agentguard policy check` after editing.",
             *(f"{key}: {_yaml(data[key])}" for key in ("version", "id", "mode", "unknown_model")),
             "rules:", f"  - id: {_yaml(rule['id'])}"]
    lines += [f"    {key}: {_yaml(rule[key])}" for key in rule if key not in ("id", "caps")]
    lines += ["    caps:", *(f"      - {_yaml(cap)}" for cap in rule["caps"])]
    return "\n".join(lines) + "\n"


def write_policy(path: Path, answers: Answers, book: PriceBook, *, force: bool) -> Policy:
    """Validate the policy as ``agentguard policy check`` would, then write it; without ``force`` an
    existing file is an error (and the check that it is absent is the atomic link that creates it)."""
    text = render_policy(answers)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix or ".yaml")
    mask = os.umask(0)
    os.umask(mask)
    os.fchmod(handle, 0o666 & ~mask)  # as open() would create it, not mkstemp's 0600: services read policies
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        policy = load_policy(Path(temporary), priced=book.knows)
        if force:
            os.replace(temporary, path)
        else:
            try:
                os.link(temporary, path)
            except FileExistsError:
                raise AgentGuardError(f"{path} exists; pass --force to replace it") from None
    finally:
        Path(temporary).unlink(missing_ok=True)
    return policy


def snippet(answers: Answers, path: Path, pricing: Path | None = None) -> str:
    """How to run under the policy: the zero-code environment lines and the explicit Python (with
    the overrides file the models were priced from, which the guard then needs too)."""
    where = str(path.resolve())
    fields = {"team": answers.team, "task": answers.template.key}
    env = [f"export AGENTGUARD_POLICY={shlex.quote(where)}", f"export AGENTGUARD_TEAM={shlex.quote(answers.team)}",
           f"export AGENTGUARD_TASK={shlex.quote(answers.template.key)}"]
    settings = f"policy={json.dumps(where)}"
    if pricing is not None:
        env.append(f"export AGENTGUARD_PRICING={shlex.quote(str(pricing.resolve()))}")
        settings += f", pricing={json.dumps(str(pricing.resolve()))}"
    if answers.per_user:
        env.append("export AGENTGUARD_USER=...   # each user has their own caps")
    if answers.template.capability:
        env.append(f"# calls need capability {answers.template.capability}: a signed claim "
                   "(agentguard claim issue) or AGENTGUARD_CAPABILITY for the whole process")
    arguments = ", ".join(f"{key}={json.dumps(value)}" for key, value in fields.items())
    if answers.per_user:
        arguments += ", user=current_user"
    if answers.template.capability:
        arguments += f", capability={json.dumps(answers.template.capability)}"
    return "\n".join([
        "Zero-code:", *(f"  {line}" for line in env), "  opentelemetry-instrument python app.py", "",
        "Explicit:",
        "  from agentguard_otel import AgentGuardInstrumentor, scope",
        "",
        f"  AgentGuardInstrumentor().instrument({settings})",
        f"  with scope({arguments}):",
        f"      ...  # calls to {answers.model.model}",
    ])


class Interview:
    """The questions, each asked again (saying why) until its answer is valid."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def question(self, prompt: str, parse: Callable[[str], Any], default: str | None = None,
                 listing: Callable[[], str] | None = None) -> Any:
        """Ask until ``parse`` accepts the answer (Enter: ``default``); ``?`` shows ``listing``."""
        shown = f"{prompt} [{default}]: " if default is not None else f"{prompt}: "
        while True:
            answer = input(shown).strip() or (default or "")
            if listing is not None and answer == "?":
                print(listing())
                continue
            try:
                return parse(answer)
            except AgentGuardError as exc:
                print(f"  {exc}")

    def model(self, prompt: str, default: str | None, parse: Callable[[str], Any], provider: str) -> Any:
        """A model question; ``?`` lists the provider's priced models, cheapest first."""
        return self.question(f"{prompt} ('?' lists {provider} models)", parse, default or "?",
                             lambda: self.catalog.listing(provider))

    def _valid_downgrade(self, chosen: Template, model: ModelPrice) -> str | None:
        """The template's downgrade target as the default, if it still suits the chosen model."""
        if chosen.downgrade_to is None:
            return None
        try:
            self.catalog.downgrade(chosen.downgrade_to, model)
        except AgentGuardError as exc:
            print(f"  the template's downgrade target does not fit: {exc}")
            return None
        return chosen.downgrade_to

    def _priced(self, name: str) -> str:
        price = self.catalog.prices.get(name)
        return f"{name} ({usd_text(price.input)} / {usd_text(price.output)})" if price else \
            f"{name} (not in the catalog)"

    def run(self, output: Path) -> tuple[Answers, Path, bool]:
        print("Task templates (recommended models, USD per million tokens in / out):")
        for index, choice in enumerate(TEMPLATES, start=1):
            then = f" -> {self._priced(choice.downgrade_to)}" if choice.downgrade_to else ""
            need = f", needs {choice.capability}" if choice.capability else ""
            print(f"  {index}. {choice.key:<20} {self._priced(choice.model)}{then}{need}")
        chosen: Template = self.question("Template (number or name)", template)
        team: str = self.question("Team", parse_team)
        default_model = chosen.model if chosen.model in self.catalog.prices else None
        if default_model is None:
            print(f"  {chosen.model} is not in the catalog: choose another model")
        model: ModelPrice = self.model("Model", default_model, lambda text: self.catalog.model(text, "the model"),
                                       chosen.model.split("/", 1)[0])
        print(f"  {model_id(model)}: {_rates(model)}")
        target = self._valid_downgrade(chosen, model)
        downgrade: ModelPrice | None = self.model(
            f"Past the daily cap, downgrade to ('{NO_DOWNGRADE}' blocks)", target or NO_DOWNGRADE,
            lambda text: self.catalog.downgrade(text, model), model.provider)
        if downgrade is not None:
            print(f"  {model_id(downgrade)}: {_rates(downgrade)}")
        daily: tuple[Decimal, int] = self.question("Daily cap, USD", lambda text: parse_usd(text, "the daily cap"))
        answers = Answers(chosen, team, model, downgrade, daily[1], daily[1], daily[0], daily[0])

        def minute(text: str) -> Answers:
            amount, nano = parse_usd(text, "the per-minute cap")
            candidate = replace(answers, minute_usd=amount, minute_nano=nano)
            check_caps(candidate)
            return candidate
        answers = self.question("Per-minute runaway cap, USD", minute, f"{minute_default(daily[0]):f}")
        per_user: bool = self.question("A separate budget for each user? (y/n)", _yes_no, "n")
        answers = replace(answers, per_user=per_user)
        while True:
            path = Path(self.question("Write the policy to", output_path, str(output)))
            if not path.exists():
                return answers, path, False
            if self.question(f"{path} exists. Replace it? (y/n)", _yes_no, "n"):
                return answers, path, True




def _yes_no(text: str) -> bool:
    if text.lower() in ("y", "yes"):
        return True
    if text.lower() in ("n", "no"):
        return False
    raise AgentGuardError(f"answer y or n, got {text!r}")


def output_path(text: str) -> str:
    """A policy file name the loader reads (.yaml or .yml)."""
    if not text:
        raise AgentGuardError("a file name is needed, e.g. policy.yaml")
    if Path(text).suffix.lower() not in (".yaml", ".yml"):
        raise AgentGuardError(f"the policy file must end in .yaml or .yml, got {text!r}")
    return text


def answers_from_flags(catalog: Catalog, *, template_key: str, team: str, daily_usd: str, minute_usd: str | None,
                       model: str | None, downgrade_to: str | None, per_user: bool) -> Answers:
    """The non-interactive answers, each checked as the interview checks it."""
    chosen = template(template_key)
    price = catalog.model(model or chosen.model, "--model" if model else f"the {chosen.key} template's model")
    target_text = downgrade_to if downgrade_to is not None else (chosen.downgrade_to or NO_DOWNGRADE)
    target = catalog.downgrade(target_text, price)
    daily = parse_usd(daily_usd, "--daily-usd")
    minute = parse_usd(minute_usd if minute_usd is not None else f"{minute_default(daily[0]):f}", "--minute-usd")
    answers = Answers(chosen, parse_team(team), price, target, daily[1], minute[1], daily[0], minute[0], per_user)
    check_caps(answers)
    return answers


def report(answers: Answers, path: Path, policy: Policy, pricing: Path | None = None) -> str:
    caps = ", ".join(f"{usd_text(nano)} a {window}" for nano, window in
                     ((answers.daily_nano, "day"), (answers.minute_nano, "minute")))
    return "\n".join([f"wrote {path}: policy {policy.id}, rule {answers.template.key} for team {answers.team}, "
                      f"{model_id(answers.model)} ({_rates(answers.model)}), caps {caps}; "
                      f"digest {policy.digest}", "", snippet(answers, path, pricing)])


def interactive(catalog: Catalog, output: Path, *, force: bool, pricing: Path | None = None) -> int:
    """Ask on the terminal; Ctrl-D or Ctrl-C leaves without writing anything."""
    try:
        answers, path, replace_file = Interview(catalog).run(output)
    except (EOFError, KeyboardInterrupt) as exc:
        print("\nagentguard wizard: cancelled, no policy written", file=sys.stderr)
        return 130 if isinstance(exc, KeyboardInterrupt) else 1
    policy = write_policy(path, answers, catalog.book, force=force or replace_file)
    print(report(answers, path, policy, pricing))
    return 0
