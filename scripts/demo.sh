#!/usr/bin/env bash
# The main job: install, then run `agentguard demo` on the embedded defaults.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh" openai
exec "$root/.venv/bin/agentguard" demo "$@"
