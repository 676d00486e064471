#!/usr/bin/env bash
# Sets up .venv (the tested set, constraints.txt) and runs the test suite (CPU, offline; slow real-model tests are
# excluded: `pytest -m slow`). HOOKKIT_LATEST=1 runs it in .venv-latest on the newest releases instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/env.sh "dev"
export HOOKKIT_REQUIRE_SMOLLM2=1  # the SmolLM2 smoke test must run, not skip
if [ "${HOOKKIT_LATEST:-0}" = "1" ]; then
  . .venv-latest/bin/activate
else
  . .venv/bin/activate
  ruff check hookkit tests bench  # once, with the pinned ruff
fi
exec python -m pytest -q "$@"
