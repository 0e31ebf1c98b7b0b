#!/usr/bin/env bash
# The openai and anthropic SDKs' own offline test suites, plain and with agentguard in shadow mode:
# exits non-zero listing every test whose outcome differs (see tests/sdk_suites/run.py).
#   scripts/sdk-suites.sh [openai] [anthropic] [--timeout SECONDS] [-- PYTEST ARGS]
# Downloads each installed SDK's sdist into $TEST_TOOLS_DIR/sdk-suites (default <repo>/.cache) and
# installs its test dependencies into .venv (installed packages are held at their versions).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f "$root/.venv/bin/activate" ]; then
  . "$root/.venv/bin/activate"
fi
exec python "$root/tests/sdk_suites/run.py" "$@"
