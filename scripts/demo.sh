#!/usr/bin/env bash
# Sets up .venv (the tested set, constraints.txt) and runs the main job on the embedded default model
# (SmolLM2-135M-Instruct): passkey retrieval at 12k tokens (beyond its trained 8k), stock vs LongHeads, as a table.
# HOOKKIT_LATEST=1 runs it in .venv-latest on the newest releases instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/env.sh "smollm2,plots,evals"
if [ "${HOOKKIT_LATEST:-0}" = "1" ]; then . .venv-latest/bin/activate; else . .venv/bin/activate; fi
exec hookkit demo "$@"
