"""Every way a policy can be wrong names the file, the exact line and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentguard_otel.errors import PolicyError
from agentguard_otel.policy import load_policy


def load_error(tmp_path: Path, name: str, text: str | bytes) -> PolicyError:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    error = caught.value
    assert error.file == str(path)
    return error


RULES_HEAD = "version: 1\nrules:\n  - id: first\n  - id: second\n"

# (name, text, line, field, words the message must contain)
YAML_CASES = [
    ("syntax", "version: 1\nrules:\n  - id: [a\n", 4, None, "YAML error"),
    ("bad-indent", "version: 1\nrules:\n  - id: a\n   caps: []\n", 4, None, "YAML error"),
    ("duplicate-top-key", "version: 1\nmode: shadow\nmode: enforce\n", 3, "mode", "duplicate key 'mode'"),
    ("duplicate-nested-key", RULES_HEAD + "    caps:\n      - limit_usd: 1\n        window: day\n"
     "        limit_usd: 2\n", 8, "rules[1].caps[0].limit_usd", "duplicate key 'limit_usd'"),
    ("unknown-top-key", "version: 1\nmodee: shadow\n", 2, "modee", "did you mean 'mode'"),
    ("unknown-cap-key", RULES_HEAD + "    caps:\n      - limit_usd: 1\n        window: day\n"
     "        windw: day\n", 8, "rules[1].caps[0].windw", "unknown key 'windw'; did you mean 'window'"),
    ("bad-window", RULES_HEAD + "    caps:\n      - limit_usd: 1\n        window: year\n",
     7, "rules[1].caps[0].window", "'call', 'minute', 'hour', 'day', 'week' or 'month'"),
    ("missing-window", RULES_HEAD + "    caps:\n      - limit_usd: 1\n", 6, "rules[1].caps[0].window",
     "Field required"),
    ("duplicate-rule-id", "version: 1\nrules:\n  - id: a\n  - id: b\n  - id: a\n", 5, "rules[2].id",
     "rule id 'a' is already used by rules[0]"),
    ("downgrade-without-target", RULES_HEAD + "    caps:\n      - limit_usd: 1\n        window: day\n"
     "        action: downgrade\n", 8, "rules[1].caps[0].action", "needs downgrade_to"),
    ("target-without-downgrade", RULES_HEAD + "    caps:\n      - limit_usd: 1\n        window: day\n"
     "        downgrade_to: gpt-5-mini\n", 8, "rules[1].caps[0].downgrade_to", "not 'block'"),
    ("rolling-call", RULES_HEAD + "    caps:\n      - limit_usd: 1\n        window: call\n"
     "        rolling: true\n", 8, "rules[1].caps[0].rolling", "'call' window cannot be rolling"),
    ("bad-timezone", "version: 1\nmode: shadow\ntimezone: Mars/Olympus_Mons\n", 3, "timezone",
     "unknown time zone 'Mars/Olympus_Mons'"),
    ("negative-limit", RULES_HEAD + "    caps: [{window: day, limit_usd: -0.01}]\n", 5,
     "rules[1].caps[0].limit_usd", "greater than or equal to 0"),
    ("infinite-limit", RULES_HEAD + "    caps: [{window: day, limit_usd: .inf}]\n", 5,
     "rules[1].caps[0].limit_usd", "'.inf' is not a decimal number"),
    ("zero-output-tokens", RULES_HEAD + "    max_output_tokens: 0\n", 5, "rules[1].max_output_tokens",
     "greater than 0"),
    ("negative-output-tokens", RULES_HEAD + "    max_output_tokens: -5\n", 5, "rules[1].max_output_tokens",
     "greater than 0"),
    ("fractional-output-tokens", RULES_HEAD + "    max_output_tokens: 20.5\n", 5,
     "rules[1].max_output_tokens", "valid integer"),
    ("bad-default-output-tokens", "version: 1\ndefault_max_output_tokens: 0\n", 2,
     "default_max_output_tokens", "greater than 0"),
    ("match-not-scope-field", RULES_HEAD + "    match:\n      team: eng\n      project: x\n", 7,
     "rules[1].match.project", "invalid key 'project'"),
    ("match-empty-list", RULES_HEAD + "    match:\n      team: []\n", 6, "rules[1].match.team",
     "at least 1 item"),
    ("match-bad-type", RULES_HEAD + "    match:\n      team: 5\n", 6, "rules[1].match.team",
     "Input should be a valid string or a valid list"),
    ("match-bad-item", RULES_HEAD + "    match:\n      team:\n        - eng\n        - 5\n", 8,
     "rules[1].match.team[1]", "valid string"),
    ("per-not-scope-field", RULES_HEAD + "    per: project\n", 5, "rules[1].per", "'tenant', 'team'"),
    ("per-list-item", RULES_HEAD + "    per:\n      - user\n      - project\n", 7, "rules[1].per[1]",
     "'tenant', 'team'"),
    ("per-twice", RULES_HEAD + "    per: [user, team, user]\n", 5, "rules[1].per[2]", "listed twice"),
    ("bad-capability", RULES_HEAD + "    require_capability: admin\n", 5, "rules[1].require_capability",
     "'read_only', 'data_write', 'payment_initiate' or 'payment_execute'"),
    ("unclosed-glob", RULES_HEAD + "    models:\n      allow:\n        - openai/*\n        - gpt-[45\n", 8,
     "rules[1].models.allow[1]", "unclosed '['"),
    ("empty-glob", RULES_HEAD + "    models: {deny: ['']}\n", 5, "rules[1].models.deny[0]",
     "at least 1 character"),
    ("bad-rule-id", "version: 1\nrules:\n  - id: 'code review|x'\n", 3, "rules[0].id",
     "should match pattern"),
    ("missing-version", "# a comment\nmode: shadow\n", 2, "version", "Field required"),
    ("wrong-version", "version: 2\n", 1, "version", "Input should be 1"),
    ("bad-mode", "version: 1\n\n\nmode: dry-run\n", 4, "mode", "'enforce' or 'shadow'"),
    ("not-a-mapping", "- version: 1\n", 1, None, "must be a mapping"),
    ("empty", "", 1, None, "empty"),
    ("recursive-alias", "version: 1\nrules: &r\n  - *r\n", 2, None, "anchors and aliases are refused"),
    ("unsupported-tag", "version: 1\nrules: !!set {a, b}\n", 2, "rules", "unsupported YAML tag"),
    ("unknown-tag", "version: 1\nid: !secret x\n", 2, "id", "could not determine a constructor"),
    ("complex-key", "version: 1\n? [a, b]\n: c\n", 2, None, "plain scalars"),
    ("bad-merge", "version: 1\nunknown_model_price:\n  <<: 5\n", 3, "unknown_model_price", "merge key"),
]


@pytest.mark.parametrize(("case", "text", "line", "field", "words"), YAML_CASES,
                         ids=[case[0] for case in YAML_CASES])
def test_yaml_error_names_line_and_field(tmp_path: Path, case: str, text: str, line: int,
                                         field: str | None, words: str) -> None:
    error = load_error(tmp_path, f"{case}.yaml", text)
    assert error.line == line
    assert error.field == field
    assert words in error.reason
    prefix = f"{tmp_path / (case + '.yaml')}:{line}: " + (f"{field}: " if field else "")
    assert str(error).startswith(prefix)


JSON_CASES = [
    ("syntax", '{\n  "version": 1,\n  "rules": [\n    {"id": "a",}\n  ]\n}\n', 4, None, "JSON error"),
    ("trailing-comma", '{\n  "version": 1,\n}', 3, None, "JSON error"),
    ("duplicate-key", '{\n  "version": 1,\n  "rules": [{\n    "id": "a",\n    "id": "b"\n  }]\n}', 5,
     "rules[0].id", "duplicate key 'id'"),
    ("bad-window", '{\n  "version": 1,\n  "rules": [\n    {"id": "a"},\n    {"id": "b", "caps": [\n'
     '      {"limit_usd": 1,\n       "window": "year"}\n    ]}\n  ]\n}\n', 7, "rules[1].caps[0].window",
     "'call', 'minute'"),
    ("tabs", '{\n\t"version": 1,\n\t"rules": [\n\t\t{"id": "a", "max_output_tokens": 0}\n\t]\n}', 4,
     "rules[0].max_output_tokens", "greater than 0"),
    ("nan", '{"version": 1,\n "rules": [{"id": "a",\n  "caps": [{"window": "day",\n   "limit_usd": NaN}]}]}',
     4, "rules[0].caps[0].limit_usd", "finite number"),
    ("escaped-key", '{"version": 1,\n "mo\\u0064e": "shadow",\n "ti\\u006dezone": "Nowhere/Land"}', 3,
     "timezone", "unknown time zone"),
    ("duplicate-rule-id", '{"version": 1, "rules": [\n {"id": "x"},\n {"id": "x"}]}', 3, "rules[1].id",
     "already used"),
    ("not-an-object", "[1, 2]", 1, None, "must be a mapping"),
]


@pytest.mark.parametrize(("case", "text", "line", "field", "words"), JSON_CASES,
                         ids=[case[0] for case in JSON_CASES])
def test_json_error_names_line_and_field(tmp_path: Path, case: str, text: str, line: int,
                                         field: str | None, words: str) -> None:
    error = load_error(tmp_path, f"{case}.json", text)
    assert (error.line, error.field) == (line, field)
    assert words in error.reason


def test_all_errors_are_listed_in_line_order(tmp_path: Path) -> None:
    text = (
        "version: 1\n"                                     # 1
        "rules:\n"                                         # 2
        "  - id: a\n"                                      # 3
        "    match: {team: [eng, 5], project: y}\n"        # 4
        "    caps:\n"                                      # 5
        "      - {limit_usd: -1, window: day}\n"           # 6
        "  - id: b\n"                                      # 7
        "    caps: [{limit_usd: 1, window: day, action: downgrade}]\n"  # 8
        "timezone: Nowhere/Land\n"                         # 9
    )
    error = load_error(tmp_path, "many.yaml", text)
    file = str(tmp_path / "many.yaml")
    assert (error.line, error.field) == (4, "rules[0].match.team[1]")
    others = str(error).splitlines()[1:]
    assert [line.split(": ")[0:2] for line in others] == [
        [f"{file}:4", "rules[0].match.project"],
        [f"{file}:6", "rules[0].caps[0].limit_usd"],
        [f"{file}:8", "rules[1].caps[0].action"],
        [f"{file}:9", "timezone"],
    ]


def test_duplicate_key_inside_a_flow_mapping(tmp_path: Path) -> None:
    error = load_error(tmp_path, "flow.yaml", "version: 1\nrules:\n  - {id: a,\n     id: b}\n")
    assert (error.line, error.field) == (4, "rules[0].id")


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    error = load_error(tmp_path, "latin1.yaml", "version: 1\nid: caf\xe9\n".encode("latin-1"))
    assert (error.line, error.reason) == (2, "the policy file is not UTF-8 text")


def test_missing_file_and_unknown_extension(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(PolicyError, match="cannot read the policy file") as caught:
        load_policy(missing)
    assert caught.value.file == str(missing)
    toml = tmp_path / "policy.toml"
    toml.write_text("version = 1\n")
    with pytest.raises(PolicyError, match=r"unsupported policy file type '\.toml'"):
        load_policy(str(toml))


def test_mapping_errors_name_the_field_without_a_line() -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy({"version": 1, "rules": [{"id": "a", "caps": [{"limit_usd": "1", "window": "call",
                                                                   "rolling": True}]}]})
    error = caught.value
    assert (error.file, error.line, error.field) == (None, None, "rules[0].caps[0].rolling")
    assert str(error) == "rules[0].caps[0].rolling: a 'call' window cannot be rolling"
