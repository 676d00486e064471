#!/usr/bin/env bash
# Sets up .venv and runs the main job on the embedded default model (SmolLM2-135M-Instruct):
# passkey retrieval at 12k tokens (beyond its trained 8k), stock vs LongHeads, printed as a table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/env.sh "smollm2,plots,evals"
. .venv/bin/activate
exec hookkit demo "$@"
