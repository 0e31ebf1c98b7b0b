"""The README's main job: ``agentguard demo`` on the embedded defaults, in a fresh data directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_demo_shows_allow_downgrade_block_and_verifies(tmp_path: Path) -> None:
    env = {"AGENTGUARD_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-m", "agentguard_otel.cli", "demo"], env=env, capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    decisions = [line.split()[2] for line in lines if line.startswith(("review #", "summary #"))]
    assert decisions[:5] == ["allow"] * 5
    assert decisions[5:12] == ["downgrade"] * 7
    assert decisions[12:] == ["allow", "allow", "block", "block"]
    assert any(line.startswith("approve payment") and " block " in line for line in lines)
    assert "every receipt's hash, signature and chain link check out" in run.stdout
    # The embedded default key was generated on first use, private part 0600, public part beside it.
    key = tmp_path / "agentguard.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "agentguard.key.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert "generated signing key" in run.stderr
    again = subprocess.run([sys.executable, "-m", "agentguard_otel.cli", "demo"], env=env, capture_output=True,
                           text=True, timeout=120, check=False)
    assert again.returncode == 0 and "generated signing key" not in again.stderr
