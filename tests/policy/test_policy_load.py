"""Loading policies from every accepted source, with money read exactly."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from tempfile import TemporaryDirectory

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentguard_otel.errors import PolicyError
from agentguard_otel.policy import DEFAULT_POLICY, Cap, Policy, load_policy
from agentguard_otel.policy.model import UnknownModelPrice

DATA = Path(__file__).parent / "data"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_design_sample_loads() -> None:
    policy = load_policy(DATA / "design_sample.yaml")
    assert (policy.version, policy.id, policy.mode) == (1, "design_sample", "enforce")
    assert policy.unknown_model == "block"
    assert (policy.estimation, policy.failure_mode, policy.timezone) == ("strict", "closed", "UTC")
    assert policy.default_max_output_tokens == 4096
    review, research = policy.rules
    assert review.id == "code-review"
    assert review.match == {"team": "engineering", "task": "code-review"}
    assert (review.per, review.per_fields) == ("user", ("user",))
    assert review.models is not None
    assert review.models.allow == ["anthropic/claude-haiku-4-5", "openai/gpt-5-mini"]
    assert (review.max_output_tokens, review.require_capability) == (2048, "read_only")
    assert [(cap.limit_nano, cap.window, cap.action) for cap in review.caps] == [
        (50_000_000_000, "day", "downgrade"),
        (200_000_000_000, "day", "block"),
        (5_000_000_000, "minute", "block"),
        (500_000_000, "call", "block"),
    ]
    assert review.caps[0].downgrade_to == "anthropic/claude-haiku-4-5"
    assert review.caps[1].reason == "hard daily ceiling"
    half = review.caps[3].limit_usd
    assert isinstance(half, Decimal) and str(half) == "0.50"
    assert research.match == {"task": "research"}
    assert research.models is not None and research.models.allow is None
    assert str(research.models.max_input_usd_per_mtok) == "0.20"
    assert research.models.max_input_nano_per_mtok == 200_000_000
    assert research.caps == [Cap(limit_usd=Decimal(20), window="day")]


def test_json_and_yaml_of_the_same_policy_have_one_digest(tmp_path: Path) -> None:
    from_yaml = load_policy(DATA / "design_sample.yaml")
    as_json = write(tmp_path, "design_sample.json", json.dumps(from_yaml.model_dump(mode="json"), indent=2))
    assert load_policy(as_json).digest == from_yaml.digest
    assert load_policy(from_yaml.model_dump()).digest == from_yaml.digest


def test_defaults_and_passthrough() -> None:
    assert load_policy(None) is DEFAULT_POLICY
    assert (DEFAULT_POLICY.version, DEFAULT_POLICY.id, DEFAULT_POLICY.mode, DEFAULT_POLICY.rules) == (
        1, "default", "shadow", [])
    policy = Policy(version=1)
    assert load_policy(policy) is policy
    assert (policy.id, policy.mode, policy.unknown_model) == ("inline", "enforce", "block")
    assert policy.unknown_model_price == UnknownModelPrice(input_usd_per_mtok=Decimal(15),
                                                           output_usd_per_mtok=Decimal(75))
    assert load_policy({"version": 1}).id == "inline"


def test_id_is_the_file_stem_unless_given(tmp_path: Path) -> None:
    assert load_policy(write(tmp_path, "team-eng.yml", "version: 1\n")).id == "team-eng"
    assert load_policy(str(write(tmp_path, "ops.json", '{"version": 1}'))).id == "ops"
    assert load_policy(write(tmp_path, "x.yaml", "version: 1\nid: named\n")).id == "named"


def test_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b'\xef\xbb\xbf{"version": 1,\n "mode": "shadow"}')
    assert load_policy(path).mode == "shadow"


def yaml_with_limit(written: str) -> str:
    return f"version: 1\nrules:\n  - id: r\n    caps: [{{limit_usd: {written}, window: day}}]\n"


def json_with_limit(written: str) -> str:
    cap = f'{{"limit_usd": {written}, "window": "day"}}'
    return f'{{"version": 1, "rules": [{{"id": "r", "caps": [{cap}]}}]}}'


def cap_limit(tmp_path: Path, name: str, text: str) -> Decimal:
    policy = load_policy(write(tmp_path, name, text))
    return policy.rules[0].caps[0].limit_usd


@pytest.mark.parametrize(("written", "exact", "nano"), [
    ("0.1", "0.1", 100_000_000),
    ("0.50", "0.50", 500_000_000),
    ("0.30000000000000004", "0.30000000000000004", 300_000_000),
    ("1_000.25", "1000.25", 1_000_250_000_000),
    ("12", "12", 12_000_000_000),
    ("'0.1'", "0.1", 100_000_000),
    ("1.5e+3", "1.5E+3", 1_500_000_000_000),
    ("0.0000000019", "1.9E-9", 1),
])
def test_yaml_money_is_read_from_the_source_text(tmp_path: Path, written: str, exact: str, nano: int) -> None:
    limit = cap_limit(tmp_path, "money.yaml", yaml_with_limit(written))
    assert isinstance(limit, Decimal) and str(limit) == exact
    assert Cap(limit_usd=limit, window="day").limit_nano == nano


@pytest.mark.parametrize(("written", "exact"), [
    ("0.1", "0.1"), ("0.30000000000000004", "0.30000000000000004"), ("1e-1", "0.1"), ("2E+2", "2E+2"),
    ("7", "7"), ('"0.10"', "0.10"),
])
def test_json_money_is_read_from_the_source_text(tmp_path: Path, written: str, exact: str) -> None:
    assert str(cap_limit(tmp_path, "money.json", json_with_limit(written))) == exact


def test_python_floats_take_their_shortest_repr() -> None:
    cap = Cap(limit_usd=0.1, window="day")  # type: ignore[arg-type]  # a dict from user code may hold floats
    assert cap.limit_usd == Decimal("0.1") and cap.limit_nano == 100_000_000
    policy = load_policy({"version": 1, "unknown_model_price": {"input_usd_per_mtok": 0.3}})
    assert str(policy.unknown_model_price.input_usd_per_mtok) == "0.3"


def test_limits_round_down_and_assumed_prices_round_up() -> None:
    assert Cap(limit_usd=Decimal("0.0000000019"), window="day").limit_nano == 1
    price = UnknownModelPrice(input_usd_per_mtok=Decimal("0.0000000011"), output_usd_per_mtok=Decimal("0.1"))
    assert (price.input_nano_per_mtok, price.output_nano_per_mtok) == (2, 100_000_000)
    assert (UnknownModelPrice().input_nano_per_mtok, UnknownModelPrice().output_nano_per_mtok) == (
        15_000_000_000, 75_000_000_000)


def test_booleans_are_not_money() -> None:
    with pytest.raises(PolicyError, match="not a boolean") as caught:
        load_policy({"version": 1, "rules": [{"id": "r", "caps": [{"limit_usd": True, "window": "day"}]}]})
    assert caught.value.field == "rules[0].caps[0].limit_usd"


@given(st.decimals(min_value=0, max_value=9 * 10**6, places=9, allow_nan=False, allow_infinity=False))
def test_any_written_amount_is_exact_in_yaml_and_json(amount: Decimal) -> None:
    written = str(amount)
    with TemporaryDirectory() as directory:
        for name, text in (("p.yaml", yaml_with_limit(written)), ("p.json", json_with_limit(written))):
            limit = cap_limit(Path(directory), name, text)
            assert str(limit) == written
            assert Cap(limit_usd=limit, window="day").limit_nano == int(amount * 10**9)


def test_yaml_anchors_and_aliases_are_refused_at_their_line(tmp_path: Path) -> None:
    text = (
        "version: 1\n"
        "rules:\n"
        "  - id: a\n"
        "    caps:\n"
        "      - &daily {limit_usd: 10, window: day, reason: daily}\n"
        "  - id: b\n"
        "    caps:\n"
        "      - *daily\n"
    )
    with pytest.raises(PolicyError, match="anchors and aliases are refused") as caught:
        load_policy(write(tmp_path, "anchors.yaml", text))
    assert caught.value.line == 5


def test_an_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]
    with pytest.raises(PolicyError, match="anchors and aliases are refused"):
        load_policy(write(tmp_path, "bomb.yaml", "version: 1\n" + "\n".join(levels) + "\n"))


def test_merge_keys_with_inline_mappings_keep_their_own_lines(tmp_path: Path) -> None:
    text = (
        "version: 1\n"
        "rules:\n"
        "  - id: a\n"
        "    caps:\n"
        "      - <<: {window: fortnight}\n"
        "        limit_usd: 1\n"
    )
    with pytest.raises(PolicyError) as caught:
        load_policy(write(tmp_path, "merge.yaml", text))
    assert (caught.value.line, caught.value.field) == (5, "rules[0].caps[0].window")


def test_a_limit_beyond_what_a_ledger_holds_is_refused_at_its_line(tmp_path: Path) -> None:
    text = "version: 1\nrules:\n  - id: a\n    caps:\n      - {limit_usd: 1e30, window: day}\n"
    with pytest.raises(PolicyError, match="more than a ledger holds") as caught:
        load_policy(write(tmp_path, "big.yaml", text))
    assert (caught.value.line, caught.value.field) == (5, "rules[0].caps[0].limit_usd")


def test_a_downgrade_the_rule_forbids_is_refused_at_its_line(tmp_path: Path) -> None:
    text = ("version: 1\nrules:\n  - id: a\n    models: {allow: [gpt-4o-mini], deny: [o1-pro]}\n    caps:\n"
            "      - {limit_usd: 1, window: day, action: downgrade, downgrade_to: o1-pro}\n")
    with pytest.raises(PolicyError, match="downgrade_to 'o1-pro' is not allowed") as caught:
        load_policy(write(tmp_path, "down.yaml", text))
    assert (caught.value.line, caught.value.field) == (6, "rules[0].caps[0].downgrade_to")


def test_an_unpriced_downgrade_target_is_refused_under_unknown_model_block(tmp_path: Path) -> None:
    text = ("version: 1\nrules:\n  - id: a\n    caps:\n"
            "      - {limit_usd: 1, window: day, action: downgrade, downgrade_to: gpt-4o-mnii}\n")
    path = write(tmp_path, "typo.yaml", text)
    known = {"gpt-4o-mini"}.__contains__
    with pytest.raises(PolicyError, match="has no known price") as caught:
        load_policy(path, priced=known)
    assert (caught.value.line, caught.value.field) == (5, "rules[0].caps[0].downgrade_to")
    assert load_policy(path).rules[0].caps[0].downgrade_to == "gpt-4o-mnii"  # no price book: not checked
    allowing = write(tmp_path, "allow.yaml", "unknown_model: allow\n" + text)
    assert load_policy(allowing, priced=known).unknown_model == "allow"  # priced at the fallback rate
