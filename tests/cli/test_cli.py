"""The ``agentguard`` command, driven through ``main(argv)`` with real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentguard_otel.cli import main
from agentguard_otel.ledger import CounterSpec, open_ledger
from agentguard_otel.receipts import ReceiptWriter, SigningKey

ROOT = Path(__file__).resolve().parents[2]


def _log(tmp_path: Path, count: int = 3) -> tuple[Path, Path, dict[str, str]]:
    key_path = tmp_path / "k.key"
    key = SigningKey.generate(key_path)
    writer = ReceiptWriter(tmp_path / "receipts", key)
    last: dict[str, str] = {}
    for i in range(count):
        last = writer.append("decision", {"call_id": str(i), "action": "allow"})
    writer.close()
    return tmp_path / "receipts", Path(f"{key_path}.pub"), last


def test_keygen_writes_a_private_key_0600_and_its_public_key(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", str(tmp_path / "a.key")]) == 0
    assert (tmp_path / "a.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "a.key.pub").exists()
    assert "key id:      ed25519:" in capsys.readouterr().out
    assert main(["keygen", str(tmp_path / "a.key")]) == 2  # never overwrites a key


def test_verify_ok_then_tampered(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    receipts, pub, _ = _log(tmp_path)
    assert main(["verify", str(receipts), "--public-key", str(pub)]) == 0
    assert "OK: every receipt verifies" in capsys.readouterr().out
    segment = next(receipts.glob("*.ndjson"))
    segment.write_text(segment.read_text().replace('"action":"allow"', '"action":"block"', 1))
    assert main(["verify", str(receipts), "--public-key", str(pub)]) == 1
    out = capsys.readouterr().out
    assert f"FAILED: {segment}:1" in out and "seq 0" in out


def test_verify_trusts_only_the_given_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    receipts, _, _ = _log(tmp_path)
    SigningKey.generate(tmp_path / "other.key")
    assert main(["verify", str(receipts), "--public-key", str(tmp_path / "other.key.pub")]) == 1
    assert "untrusted key" in capsys.readouterr().out


def test_verify_expect_head_catches_truncation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    receipts, pub, last = _log(tmp_path)
    head = f"{last['chain']}={last['hash']}"
    assert main(["verify", str(receipts), "--public-key", str(pub), "--expect-head", head, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    segment = next(receipts.glob("*.ndjson"))
    lines = segment.read_text().splitlines(keepends=True)
    kept = [line for line in lines if json.loads(line)["hash"] != last["hash"]
            and json.loads(line)["kind"] != "checkpoint"]
    segment.write_text("".join(kept))
    assert main(["verify", str(receipts), "--public-key", str(pub), "--expect-head", head]) == 1
    assert "truncated" in capsys.readouterr().out


def test_verify_shows_progress_when_asked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    receipts, pub, _ = _log(tmp_path, count=50)
    assert main(["verify", str(receipts), "--public-key", str(pub), "--progress"]) == 0
    assert "verifying [" in capsys.readouterr().err


def test_policy_check_names_file_line_and_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "check", str(ROOT / "examples" / "policies" / "team.yaml")]) == 0
    assert "OK — policy team v1" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nrules:\n  - id: a\n    caps:\n      - {limit_usd: 5, window: fortnight}\n")
    assert main(["policy", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:5: rules[0].caps[0].window" in err


def test_pricing_sync_imports_a_saved_catalog(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = ROOT / "tests" / "pricing" / "data" / "openrouter_models.json"
    assert main(["pricing", "sync", "--from", str(source), "--catalog-dir", str(tmp_path)]) == 0
    assert "imported 8 OpenRouter model prices" in capsys.readouterr().out
    assert main(["pricing", "sync", "--from", "http://127.0.0.1:9/models", "--catalog-dir", str(tmp_path)]) == 2
    assert "could not fetch http://127.0.0.1:9/models" in capsys.readouterr().err


def test_spend_lists_current_window_totals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    ledger = open_ledger(url)
    spec = CounterSpec(key="eng#0|user=alice", limit_nano=5_000_000_000, window="day")
    hold = ledger.reserve([spec], 1_000_000_000, 60).hold_id
    assert hold is not None
    ledger.settle(hold, 1_250_000_000)
    ledger.close()
    assert main(["spend", "--ledger", url]) == 0
    out = capsys.readouterr().out
    assert "eng#0|user=alice" in out and "$1.25" in out and "$5.00" in out and "25%" in out
    assert main(["spend", "--ledger", url, "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["spent_nano"], row["held_nano"], row["limit_nano"]) == (1_250_000_000, 0, 5_000_000_000)


def test_policy_check_refuses_an_unpriced_downgrade_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\nrules:\n  - id: a\n    caps:\n"
                      "      - {limit_usd: 1, window: day, action: downgrade, downgrade_to: gpt-4o-mnii}\n")
    assert main(["policy", "check", str(policy)]) == 2
    assert f"{policy}:5: rules[0].caps[0].downgrade_to: downgrade_to 'gpt-4o-mnii' has no known price" in \
        capsys.readouterr().err


def test_spend_shows_caller_text_escaped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    with open_ledger(url) as ledger:
        hostile = "r#0|task=x\n| fake-row  $0.00\x1b[2J\x1b[31m"
        hold = ledger.reserve([CounterSpec(hostile, 10**9, "day")], 5, 60).hold_id
        assert hold is not None
        ledger.settle(hold, 5)
    assert main(["spend", "--ledger", url]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert not any(line.startswith("| fake") for line in out.splitlines())  # no injected row
    assert "r#0|task=x\\n| fake-row  $0.00\\x1b[2J\\x1b[31m" in out
