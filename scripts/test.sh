#!/usr/bin/env bash
# Sets up .venv (the tested set, constraints.txt) and runs the test suite (CPU, offline; slow real-model tests are
# excluded: `pytest -m slow`). HOOKKIT_LATEST=1 runs it in .venv-latest on the newest releases instead.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${HOOKKIT_LATEST:-0}" = "1" ]; then
  bash scripts/env.sh "dev"
else
  bash scripts/env.sh "dev,lm-eval"
  export HOOKKIT_REQUIRE_HARNESS=1  # the lm-eval / lmms-eval plug-in tests must run, not skip
fi
export HOOKKIT_REQUIRE_SMOLLM2=1  # the SmolLM2 smoke test must run, not skip
export HOOKKIT_REQUIRE_CHAIR_REFERENCE=1  # the CHAIR reference-mode tests must run, not skip
export HOOKKIT_REQUIRE_SCENES=1  # the scenes-llava tower conversion tests must run, not skip
if [ "${HOOKKIT_LATEST:-0}" = "1" ]; then
  . .venv-latest/bin/activate
else
  . .venv/bin/activate
  ruff check hookkit tests bench  # once, with the pinned ruff
fi
exec python -m pytest -q "$@"
