"""Shared fixtures: tiny offline models loaded once per test session, inputs with left padding, comparisons."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest
import torch

import hookkit
from hookkit.models.tiny import tiny_models
from hookkit.registry import FAMILIES

# One thread: tiny models gain nothing from more, and OpenMP threads collapse when the cores are shared.
torch.set_num_threads(1)

ALL_TINY = list(tiny_models())
VLM_TINY = [n for n, s in tiny_models().items() if FAMILIES.get(s.family).is_vlm]
TEXT_TINY = [n for n in ALL_TINY if n not in VLM_TINY]

_CACHE: dict[tuple[str, str], tuple] = {}


def require_optional(module: str, extra: str, env: str) -> ModuleType:
    """Import an optional dependency for a test module: skip the module when it is missing, or fail when the
    environment variable ``env`` is ``1`` (CI sets it where the extra is installed, so nothing skips silently)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        message = f"{module} is not installed ({exc}); install it with pip install 'hookkit[{extra}]'"
        if os.environ.get(env) == "1":
            pytest.fail(f"{message} ({env}=1 requires it)", pytrace=False)
        pytest.skip(message, allow_module_level=True)


def load_tiny(name: str, attn: str = "sdpa"):
    """(model, processor, info) for a tiny model, loaded once per session through hookkit.load."""
    key = (name, attn)
    if key not in _CACHE:
        model, processor = hookkit.load(name, dtype="float32", attn_implementation=attn)
        _CACHE[key] = (model, processor, hookkit.get_model_info(model))
    return _CACHE[key]


@pytest.fixture(autouse=True)
def no_leftover_sessions():
    """Every test must leave every cached model detached."""
    yield
    for (name, attn), (model, _, _) in _CACHE.items():
        assert getattr(model, "_hookkit_session", None) is None, f"{name}/{attn} left attached"
