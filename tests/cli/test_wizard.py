"""``agentguard wizard``: the policy it writes passes ``policy check`` and governs real calls as its
template says; the questions are answered through a real pseudo-terminal."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from collections.abc import Iterator
from decimal import Decimal
from functools import cache
from pathlib import Path

import anthropic
import openai
import pexpect
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from agentguard_otel import AgentGuardBlocked, scope
from agentguard_otel.cli import main
from agentguard_otel.ledger import CounterSpec, open_ledger
from agentguard_otel.policy import load_policy
from agentguard_otel.policy.model import RULE_ID_PATTERN
from agentguard_otel.pricing import PriceBook
from agentguard_otel.wizard import TEMPLATES, Catalog, Template, answers_from_flags, write_policy
from tests.conftest import GuardFactory
from tests.servers.anthropic_server import LocalAnthropicServer
from tests.servers.openai_server import LocalOpenAIServer

MESSAGES = [{"role": "user", "content": "Assess this transaction."}]


def _write(tmp_path: Path, *flags: str, name: str = "policy.yaml") -> Path:
    output = tmp_path / name
    assert main(["wizard", "--non-interactive", *flags, "--output", str(output)]) == 0
    return output


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda t: t.key)
def test_every_template_writes_a_policy_that_policy_check_accepts(template: Template, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    output = _write(tmp_path, "--template", template.key, "--team", "eng", "--daily-usd", "50")
    written = capsys.readouterr().out
    assert main(["policy", "check", str(output)]) == 0
    assert "OK — policy eng-" in capsys.readouterr().out
    policy = load_policy(output, priced=PriceBook().knows)
    (rule,) = policy.rules
    models = [template.model, *([template.downgrade_to] if template.downgrade_to else [])]
    assert (rule.id, rule.match, rule.require_capability) == (template.key, {"team": "eng"}, template.capability)
    assert rule.models is not None and rule.models.allow == models
    daily, minute = rule.caps
    assert (daily.limit_nano, daily.window, minute.limit_nano, minute.window, minute.rolling, minute.action) == \
        (50 * 10**9, "day", 2_500_000_000, "minute", True, "block")
    if template.downgrade_to:
        assert (daily.action, daily.downgrade_to) == ("downgrade", template.downgrade_to.split("/", 1)[1])
    else:
        assert (daily.action, daily.reason) == ("block", "daily budget")
    assert f"export AGENTGUARD_POLICY={output}" in written and "export AGENTGUARD_TEAM=eng" in written
    explicit = written.split("Explicit:\n", 1)[1]
    compile("\n".join(line[2:] for line in explicit.splitlines()), "snippet", "exec")  # valid Python
    assert f'instrument(policy="{output}")' in explicit and 'scope(team="eng"' in explicit


def test_the_templates_models_are_in_the_bundled_catalog() -> None:
    book = PriceBook()
    for template in TEMPLATES:
        for model in (template.model, template.downgrade_to):
            if model is not None:
                provider, _, name = model.partition("/")
                assert book.lookup(provider, name) is not None, model
    repo_scan = next(t for t in TEMPLATES if t.key == "repo-scan")
    long_context = book.lookup(*repo_scan.model.split("/", 1))
    assert long_context is not None and long_context.context_window is not None
    assert long_context.context_window >= 1_000_000


def test_flags_choose_another_model_a_downgrade_and_caps_per_user(tmp_path: Path) -> None:
    output = _write(tmp_path, "--template", "code-review", "--team", "platform", "--daily-usd", "0.50",
                    "--minute-usd", "0.05", "--model", "openai/gpt-4o", "--downgrade-to", "gpt-4o-mini", "--per-user")
    text = output.read_text()
    assert "limit_usd: 0.50," in text and "limit_usd: 0.05," in text  # the amounts as written
    (rule,) = load_policy(output).rules
    assert rule.models is not None and rule.models.allow == ["openai/gpt-4o", "openai/gpt-4o-mini"]
    assert (rule.per_fields, rule.caps[0].action, rule.caps[0].downgrade_to) == (("user",), "downgrade",
                                                                                 "gpt-4o-mini")
    bedrock = _write(tmp_path, "--template", "code-review", "--team", "eng", "--daily-usd", "5", "--model",
                     "aws/global.anthropic.claude-haiku-4-5-20251001-v1:0", name="bedrock.yaml")
    models = load_policy(bedrock).rules[0].models
    assert models is not None and models.allow == ["aws.bedrock/global.anthropic.claude-haiku-4-5-20251001-v1:0"]
    assert load_policy(bedrock).rules[0].model_allowed_by_name("aws.bedrock",
                                                               "global.anthropic.claude-haiku-4-5-20251001-v1:0")
    assert bedrock.stat().st_mode & 0o777 == 0o666 & ~_umask()
    none = _write(tmp_path, "--template", "risk-analysis", "--team", "eng", "--daily-usd", "5",
                  "--downgrade-to", "none", name="blocking.yaml")
    assert [cap.action for cap in load_policy(none).rules[0].caps] == ["block", "block"]


@pytest.mark.parametrize(("flags", "message"), [
    (["--template", "poetry"], "unknown template 'poetry'; choose 1-6 or one of code-review, risk-analysis"),
    (["--model", "openai/gpt-nonexistent"], "--model 'openai/gpt-nonexistent' has no price in the catalog"),
    (["--model", "gpt-4o"], "--model 'gpt-4o' has no price in the catalog; write it as provider/model"),
    (["--downgrade-to", "openai/gpt-5-mini"], "is not served by anthropic, the provider of anthropic/claude-haiku"),
    (["--model", "openai/gpt-4o-mini", "--downgrade-to", "gpt-4o"], "openai/gpt-4o ($2.5 in / $10 out per Mtok) "
                                                                    "is not cheaper than openai/gpt-4o-mini"),
    (["--minute-usd", "51"], "the per-minute cap ($51) is above the daily cap ($50)"),
    (["--daily-usd", "fifty"], "--daily-usd takes a USD amount such as 50 or 2.5, got 'fifty'"),
    (["--daily-usd", "0"], "--daily-usd must be a positive USD amount"),
    (["--minute-usd", "0.0000000001"], "--minute-usd is below a nano-dollar"),
    (["--team", "eng team"], "a team is a name of letters, digits and . _ : -"),
    (["--output", "policy.txt"], "the policy file must end in .yaml or .yml"),
])
def test_bad_answers_are_refused_and_nothing_is_written(flags: list[str], message: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    given = {"--template": "code-review", "--team": "eng", "--daily-usd": "50",
             "--output": str(tmp_path / "policy.yaml")}
    given.update(dict(zip(flags[::2], flags[1::2], strict=True)))
    if "--output" in flags:
        given["--output"] = str(tmp_path / given["--output"])
    assert main(["wizard", "--non-interactive", *(item for pair in given.items() for item in pair)]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_models_priced_by_overrides_come_with_the_overrides_in_the_snippet(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        guarded: GuardFactory) -> None:
    overrides = tmp_path / "prices.yaml"
    overrides.write_text('openai/house-large: {input_usd_per_mtok: "4", output_usd_per_mtok: "16"}\n'
                         'openai/house-small: {input_usd_per_mtok: "0.4", output_usd_per_mtok: "1.6"}\n')
    flags = ["--template", "code-review", "--team", "eng", "--daily-usd", "5", "--model", "openai/house-large",
             "--downgrade-to", "house-small"]
    assert main(["wizard", "--non-interactive", *flags, "--output", str(tmp_path / "unpriced.yaml")]) == 2
    assert "--model 'openai/house-large' has no price in the catalog" in capsys.readouterr().err
    policy = _write(tmp_path, *flags, "--pricing", str(overrides))
    written = capsys.readouterr().out
    assert f"export AGENTGUARD_PRICING={overrides}" in written
    assert f'instrument(policy="{policy}", pricing="{overrides}")' in written
    assert main(["policy", "check", str(policy)]) == 2  # without the overrides the downgrade target is unpriced
    assert "'house-small' has no known price" in capsys.readouterr().err
    monkeypatch.setenv("AGENTGUARD_PRICING", str(overrides))
    assert main(["policy", "check", str(policy)]) == 0
    handle = guarded(str(policy), pricing=str(overrides))
    assert handle.guard.policy.rules[0].caps[0].downgrade_to == "house-small"


def test_an_existing_file_is_kept_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "policy.yaml"
    output.write_text("mine\n")
    flags = ["wizard", "--non-interactive", "--template", "agent-support", "--team", "eng", "--daily-usd", "5",
             "--output", str(output)]
    assert main(flags) == 2
    assert f"{output} exists; pass --force to replace it" in capsys.readouterr().err
    assert output.read_text() == "mine\n" and sorted(p.name for p in tmp_path.iterdir()) == ["policy.yaml"]
    assert main([*flags, "--force"]) == 0
    assert load_policy(output).rules[0].id == "agent-support"
    assert main(["wizard", "--template", "agent-support"]) == 2  # pytest's stdin is no terminal
    assert "without one, give the answers as flags with --non-interactive" in capsys.readouterr().err
    assert main(["wizard", "--non-interactive", "--team", "eng"]) == 2
    assert "--non-interactive needs --template, --daily-usd" in capsys.readouterr().err


@pytest.fixture(scope="module")
def anthropic_server() -> Iterator[LocalAnthropicServer]:
    with LocalAnthropicServer() as srv:
        yield srv


def test_a_risk_analysis_policy_downgrades_to_gpt_5_mini_once_the_daily_cap_is_hit(
        tmp_path: Path, server: LocalOpenAIServer, guarded: GuardFactory) -> None:
    # A gpt-5 call bounded at 4,096 output tokens reserves about $0.041, a gpt-5-mini one about $0.0082;
    # the runaway cap is $0.05 a minute, and $0.97 of the $1 day was spent earlier today.
    policy = _write(tmp_path, "--template", "risk-analysis", "--team", "eng", "--daily-usd", "1")
    ledger = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    earlier = ledger.reserve([CounterSpec("risk-analysis#0", 10**9, "day")], 970_000_000, 60)
    ledger.settle(earlier.hold_id, 970_000_000)
    ledger.close()
    handle = guarded(str(policy))
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-test-secret", max_retries=0)
    with scope(team="eng", task="risk-analysis"):
        client.chat.completions.create(model="gpt-5", messages=MESSAGES, max_completion_tokens=50)
        downgraded = client.chat.completions.create(model="gpt-5", messages=MESSAGES)
        with pytest.raises(AgentGuardBlocked) as info:
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_completion_tokens=50)
    assert [request.body["model"] for request in server.requests] == ["gpt-5", "gpt-5-mini"]  # type: ignore[index]
    assert downgraded.model == "gpt-5-mini"
    assert "gpt-4o is not allowed by rule risk-analysis" in info.value.reason
    decisions = [r for r in handle.receipts() if r["kind"] == "decision"]
    assert [(d["action"], d["model_effective"]) for d in decisions] == \
        [("allow", "gpt-5"), ("downgrade", "gpt-5-mini"), ("block", "gpt-4o")]


def test_payment_and_code_review_policies_block_as_their_templates_say(
        tmp_path: Path, anthropic_server: LocalAnthropicServer, guarded: GuardFactory) -> None:
    anthropic_server.reset()
    policy = _write(tmp_path, "--template", "payment-approval", "--team", "payments", "--daily-usd", "0.01",
                    "--minute-usd", "0.01")
    handle = guarded(str(policy))
    client = anthropic.Anthropic(base_url=anthropic_server.base_url, api_key="sk-ant-test", max_retries=0)
    with scope(team="payments"), pytest.raises(AgentGuardBlocked) as info:
        client.messages.create(model="claude-opus-4-7", max_tokens=20, messages=MESSAGES)
    assert "payment_execute" in info.value.reason
    with scope(team="payments", capability="payment_execute"):
        client.messages.create(model="claude-opus-4-7", max_tokens=20, messages=MESSAGES)
        with pytest.raises(AgentGuardBlocked) as info:  # 1,000 output tokens at $25/Mtok: past $0.01 a day
            client.messages.create(model="claude-opus-4-7", max_tokens=1000, messages=MESSAGES)
    assert info.value.reason in ("daily budget", "runaway loop")
    assert [request.body["model"] for request in anthropic_server.requests] == ["claude-opus-4-7"]  # type: ignore[index]
    handle.instrumentor.uninstrument()

    review = _write(tmp_path, "--template", "code-review", "--team", "eng", "--daily-usd", "0.001",
                    "--minute-usd", "0.001", name="review.yaml")
    guarded(str(review), ledger=f"sqlite:///{tmp_path / 'review.db'}")
    with scope(team="eng"), pytest.raises(AgentGuardBlocked) as info:
        client.messages.create(model="claude-haiku-4-5", max_tokens=1000, messages=MESSAGES)
    assert info.value.reason in ("daily budget", "runaway loop")
    assert len(anthropic_server.requests) == 1  # the blocked call never left


def _spawn(tmp_path: Path, *argv: str) -> pexpect.spawn:
    """The wizard on a fresh pseudo-terminal as its controlling terminal, with SIGINT at its default
    whatever the test runner inherited, so Ctrl-C there is what it is in a user's shell."""
    return pexpect.spawn(sys.executable, ["-m", "agentguard_otel.cli", "wizard", *argv], cwd=str(tmp_path),
                         env={**os.environ, "TERM": "dumb"}, encoding="utf-8", timeout=60,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _answer(child: pexpect.spawn, prompt: str, answer: str) -> None:
    child.expect_exact(prompt)
    child.sendline(answer)


def test_the_interview_re_asks_wrong_answers_and_writes_a_checked_policy(tmp_path: Path) -> None:
    child = _spawn(tmp_path)
    # (prompt, answer, what the wizard says next): every wrong answer is explained and asked again
    steps = (("2. risk-analysis        openai/gpt-5 ($1.25 / $10) -> openai/gpt-5-mini ($0.25 / $2)", None, None),
             ("Template (number or name): ", "9", "unknown template '9'"),
             ("Template (number or name): ", "2", None),
             ("Team: ", "risk team", "a team is a name of letters"),
             ("Team: ", "risk", None),
             ("('?' lists openai models) [openai/gpt-5]: ", "?", "openai/gpt-5-mini"),  # the priced listing
             ("prices in USD per million tokens", None, None),
             ("[openai/gpt-5]: ", "", "openai/gpt-5: $1.25 in / $10 out per Mtok"),
             ("[openai/gpt-5-mini]: ", "anthropic/claude-haiku-4-5", "is not served by openai"),
             ("[openai/gpt-5-mini]: ", "", None),
             ("Daily cap, USD: ", "lots", "takes a USD amount"),
             ("Daily cap, USD: ", "40", None),
             ("Per-minute runaway cap, USD [2]: ", "41", "is above the daily cap"),
             ("Per-minute runaway cap, USD [2]: ", "", None),
             ("A separate budget for each user? (y/n) [n]: ", "perhaps", "answer y or n"),
             ("A separate budget for each user? (y/n) [n]: ", "y", None),
             ("Write the policy to [policy.yaml]: ", "", None))
    for prompt, answer, reply in steps:
        child.expect_exact(prompt)
        if answer is not None:
            child.sendline(answer)
        if reply is not None:
            child.expect_exact(reply)
    child.expect_exact("wrote policy.yaml: policy risk-risk-analysis")
    child.expect_exact("export AGENTGUARD_TEAM=risk")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    output = tmp_path / "policy.yaml"
    assert main(["policy", "check", str(output)]) == 0
    (rule,) = load_policy(output).rules
    assert (rule.id, rule.match, rule.per_fields) == ("risk-analysis", {"team": "risk"}, ("user",))
    assert [(cap.limit_nano, cap.action, cap.downgrade_to) for cap in rule.caps] == \
        [(40 * 10**9, "downgrade", "gpt-5-mini"), (2 * 10**9, "block", None)]


def test_the_interview_asks_before_replacing_a_file(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text("mine\n")
    child = _spawn(tmp_path)
    for prompt, answer in (("Template (number or name): ", "code-review"), ("Team: ", "eng"),
                           ("[anthropic/claude-haiku-4-5]: ", ""), ("[none]: ", ""), ("Daily cap, USD: ", "10"),
                           ("USD [0.5]: ", ""), ("[n]: ", ""), ("Write the policy to [policy.yaml]: ", ""),
                           ("policy.yaml exists. Replace it? (y/n) [n]: ", ""),
                           ("Write the policy to [policy.yaml]: ", "review.yaml")):
        _answer(child, prompt, answer)
    child.expect_exact("wrote review.yaml")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert (tmp_path / "policy.yaml").read_text() == "mine\n"
    assert load_policy(tmp_path / "review.yaml").rules[0].caps[0].reason == "daily budget"


@pytest.mark.parametrize(("at", "key", "status"), [("Team: ", "eof", 1), ("Daily cap, USD: ", "interrupt", 130)])
def test_ctrl_d_or_ctrl_c_leaves_without_writing(at: str, key: str, status: int, tmp_path: Path) -> None:
    child = _spawn(tmp_path)
    for prompt, answer in (("Template (number or name): ", "1"), ("Team: ", "eng"),
                           ("[anthropic/claude-haiku-4-5]: ", ""), ("[none]: ", "")):
        if prompt == at:
            break
        _answer(child, prompt, answer)
    child.expect_exact(at)
    child.sendeof() if key == "eof" else child.sendintr()
    child.expect_exact("agentguard wizard: cancelled, no policy written")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == status
    assert list(tmp_path.iterdir()) == []


@cache
def _catalog() -> Catalog:
    return Catalog(PriceBook())


_AMOUNTS = st.decimals(min_value=Decimal("0.000000001"), max_value=Decimal(100_000), places=9)


@settings(max_examples=60, deadline=None)
@example("Off", TEMPLATES[0], Decimal(50), Decimal("2.5"), False)
@example("null", TEMPLATES[1], Decimal("0.000000001"), Decimal("0.000000001"), True)
@example("12:30", TEMPLATES[2], Decimal("1E+2"), Decimal("1E-9"), False)
@given(st.from_regex(RULE_ID_PATTERN, fullmatch=True), st.sampled_from(TEMPLATES), _AMOUNTS, _AMOUNTS,
       st.booleans())
def test_any_team_and_amounts_load_back_as_written(team: str, template: Template, first: Decimal,
                                                   second: Decimal, per_user: bool) -> None:
    """Team names YAML would read as numbers, booleans or null ("1e5", "no", "null") and amounts at
    the nano-dollar come back from the written file exactly."""
    daily, minute = max(first, second), min(first, second)
    answers = answers_from_flags(_catalog(), template_key=template.key, team=team, daily_usd=str(daily),
                                 minute_usd=str(minute), model=None, downgrade_to=None, per_user=per_user)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "policy.yaml"
        written = write_policy(path, answers, _catalog().book, force=False)
        assert load_policy(path) == written
    (rule,) = written.rules
    assert (rule.match, rule.per_fields) == ({"team": team}, ("user",) if per_user else ())
    assert [cap.limit_usd for cap in rule.caps] == [daily, minute]
    assert [cap.limit_nano for cap in rule.caps] == [int(daily * 10**9), int(minute * 10**9)]
