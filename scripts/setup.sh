#!/usr/bin/env bash
# Create .venv and install the package (with the extras named in $1, e.g. "test") on a fresh machine.
# Sourced by scripts/demo.sh and .ci/run; safe to run again (it only installs what is missing).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras="${1:-openai}"
if [ ! -x "$root/.venv/bin/python" ]; then
  python3 -m venv "$root/.venv"
fi
"$root/.venv/bin/python" -m pip install --quiet --upgrade pip
"$root/.venv/bin/python" -m pip install --quiet -e "$root[$extras]"
