"""Shared fixtures: tiny offline models loaded once per test session, inputs with left padding, comparisons."""

from __future__ import annotations

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
