"""Entry-point targets, kept free of heavy imports: a harness loads them while building its model registry.

pyproject.toml::

    [project.entry-points."lm_eval.models"]
    hookkit = "hookkit.integrations.lm_eval:HookkitLM"

    [project.entry-points."lmms_eval.models"]
    hookkit = "hookkit.integrations.entry_points:lmms_eval_manifest"

lmms-eval (0.7.x) loads every ``lmms_eval.models`` entry point each time it starts, so the target here only names
the class; ``hookkit.integrations.lmms_eval`` (torch, transformers, hookkit) is imported when ``--model hookkit``
is actually used.
"""

from __future__ import annotations

from typing import Any

LMMS_EVAL_CLASS_PATH = "hookkit.integrations.lmms_eval.HookkitLMMS"


def lmms_eval_manifest() -> Any:
    """lmms-eval's ``ModelManifest`` for ``--model hookkit`` (a simple, non-chat model)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="hookkit", simple_class_path=LMMS_EVAL_CLASS_PATH)
