#!/usr/bin/env bash
# Sets up .venv and runs the test suite (CPU, offline; slow real-model tests are excluded: `pytest -m slow`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/env.sh "dev"
. .venv/bin/activate
export HOOKKIT_REQUIRE_SMOLLM2=1  # the SmolLM2 smoke test must run, not skip
ruff check hookkit tests bench
exec python -m pytest -q "$@"
