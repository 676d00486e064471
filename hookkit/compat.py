"""The one module that touches transformers internals: hookkit's compatibility seam.

A hook library lives on internals that transformers changes between minor releases (5.24 renamed the
``past_key_values`` keyword, output field and generation argument to ``cache``; 5.25 turned hub kernels on by
default). Everything hookkit needs beyond transformers' public API goes through this file, so that a new release
breaks, at most, this file. The rules:

* **Feature detection, not version numbers.** The cache keyword is read from a forward's signature; every
  reader accepts each name a release has used. A version number is only used to *report* (``hookkit doctor``,
  the warning at attach), never to decide behaviour.
* **No other hookkit file** imports ``transformers.<submodule>`` or names the cache keyword;
  ``tests/test_compat.py`` enforces it.

What the seam wraps (internal -> hookkit entry point):

* the KV cache keyword and output field (``cache`` from 5.24, ``past_key_values`` before, ``cache_params`` for
  recurrent models) -> ``cache_from_kwargs``, ``cache_from_output``, ``cache_kwarg``, ``with_cache``;
* ``Cache.get_seq_length`` / ``Cache.batch_select_indices`` -> ``cache_length`` / ``select_cache_rows``;
* ``AttentionInterface`` + ``AttentionMaskInterface`` (``masking_utils``) -> ``register_attention``,
  ``attention_functions``;
* ``integrations.sdpa_attention`` -> ``sdpa_attention``, ``repeat_kv``;
* the modeling file's ``eager_attention_forward`` and ``apply_rotary_pos_emb`` (found through ``sys.modules``) ->
  ``modeling_eager_attention``, ``modeling_function``;
* ``config._attn_implementation`` and ``set_attn_implementation`` -> ``attn_implementation``,
  ``set_text_attn_implementation``;
* ``get_text_config`` and ``sub_configs`` -> ``text_config``, ``sub_configs``, ``text_config_key``;
* ``PreTrainedModel._from_config`` -> ``model_from_config``;
* hub kernels (``use_kernels``, on by default from 5.25) -> ``load_kwargs``, ``kernels_active``;
* ``rope_deltas`` (Qwen-VL's M-RoPE state) -> ``select_model_state_rows``;
* ``language_model`` (InstructBLIP generates through it) -> ``language_model``.
"""

from __future__ import annotations

import functools
import inspect
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
import transformers
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

__all__ = [
    "CACHE_KWARGS", "TESTED_VERSIONS", "attention_functions", "attn_implementation", "cache_from_kwargs",
    "cache_from_output", "cache_kwarg", "cache_length", "installed_versions", "kernels_active", "language_model",
    "load_kwargs", "model_from_config", "modeling_eager_attention", "modeling_function", "register_attention", "repeat_kv",
    "sdpa_attention", "select_cache_rows", "select_model_state_rows", "set_text_attn_implementation", "sub_configs",
    "text_config", "text_config_key", "transformers_version", "version_status", "warn_if_untested", "with_cache",
]

# ---------------------------------------------------------------------------------------------------- versions
#: Oldest and newest release of each package that the test suite has passed on (README, "Tested versions").
#: CI runs the full suite on the constraints file (the oldest set) and the seam-sensitive tests on whatever the
#: registry serves as newest; docs/compatibility.md says how to add a release.
TESTED_VERSIONS: dict[str, tuple[str, str]] = {
    "transformers": ("5.23.0", "5.25.0"),  # 5.25.0 with `pip install --no-deps` (its kernels pin is not served here)
    "torch": ("2.13.0", "2.13.0"),
    "accelerate": ("1.15.0", "1.16.0"),
    "peft": ("0.21.2", "0.21.2"),
}


def _release(version: str) -> tuple[int, ...]:
    """``"2.13.0+cpu"`` -> ``(2, 13, 0)``; pre-release suffixes are dropped (``"5.26.0.dev0"`` -> ``(5, 26, 0)``)."""
    parts = []
    for piece in version.split("+")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit()) if piece[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def installed_versions() -> dict[str, str | None]:
    """Installed version of each package in ``TESTED_VERSIONS`` (None when it is not installed)."""
    from importlib import metadata

    found: dict[str, str | None] = {}
    for name in TESTED_VERSIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def version_status(package: str, version: str | None) -> str:
    """``"tested"``, ``"older"`` or ``"newer"`` than the tested range, or ``"missing"``."""
    if version is None:
        return "missing"
    low, high = TESTED_VERSIONS[package]
    release = _release(version)
    if release < _release(low):
        return "older"
    if release > _release(high):
        return "newer"
    return "tested"


def transformers_version() -> str:
    return transformers.__version__


@functools.lru_cache(maxsize=1)
def warn_if_untested() -> None:
    """Warn once per process when transformers is newer than the newest release hookkit was tested on."""
    version = transformers_version()
    if version_status("transformers", version) == "newer":
        warnings.warn(f"hookkit was tested with transformers {TESTED_VERSIONS['transformers'][0]} to "
                      f"{TESTED_VERSIONS['transformers'][1]}, but {version} is installed; run `hookkit doctor` to "
                      "check that neutral attachments are still exact here", UserWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------------------- KV cache
#: Every name a transformers 5.x release has used for the KV cache argument and output field, newest first.
CACHE_KWARGS = ("cache", "past_key_values", "cache_params")


def cache_from_kwargs(kwargs: Mapping[str, Any]) -> Any | None:
    """The KV cache passed to a forward, whatever the release calls it (pre-hooks see the caller's keywords)."""
    for name in CACHE_KWARGS:
        cache = kwargs.get(name)
        if cache is not None:
            return cache
    return None


def cache_from_output(output: Any) -> Any | None:
    """The KV cache returned by a forward or ``generate`` (``out.cache`` from 5.24, ``out.past_key_values`` before)."""
    for name in CACHE_KWARGS:
        cache = getattr(output, name, None)
        if cache is not None:
            return cache
    return None


@functools.cache
def _forward_cache_kwarg(cls: type) -> str | None:
    try:
        params = inspect.signature(cls.forward).parameters  # follows functools.wraps (``deprecate_kwarg``)
    except (TypeError, ValueError):
        return None
    return next((name for name in CACHE_KWARGS if name in params), None)


@functools.lru_cache(maxsize=1)
def _library_cache_kwarg() -> str:
    """The cache keyword generation uses in this release (``prepare_inputs_for_generation``'s parameter)."""
    from transformers import GenerationMixin

    params = inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    return next((name for name in CACHE_KWARGS if name in params), "past_key_values")


def cache_kwarg(module: nn.Module | type[nn.Module] | None = None) -> str:
    """The keyword ``module.forward`` takes its KV cache under, read from its signature (a module or its class).

    Wrappers whose forward does not name the cache (InstructBLIP forwards ``**kwargs`` to its language model) are
    looked through to their language model; failing that, the release's own generation keyword is used.
    """
    seen = set()
    while module is not None and id(module) not in seen:
        seen.add(id(module))
        name = _forward_cache_kwarg(module if isinstance(module, type) else type(module))
        if name is not None:
            return name
        module = getattr(module, "language_model", None)
    return _library_cache_kwarg()


def with_cache(module: nn.Module, cache: Any) -> dict[str, Any]:
    """``{keyword: cache}`` for calling ``module`` (or its ``generate``) with an existing KV cache."""
    return {cache_kwarg(module): cache}


def cache_length(cache: Any, layer: int | None = None) -> int:
    """Slots already written to the cache (of ``layer``; cumulative even for sliding-window layers)."""
    if cache is None:
        return 0
    return int(cache.get_seq_length() if layer is None else cache.get_seq_length(layer))


def select_cache_rows(cache: Any, rows: torch.Tensor) -> None:
    """Keep only batch ``rows`` of every layer of ``cache``, in place."""
    cache.batch_select_indices(rows)


# ---------------------------------------------------------------------------------------------------- attention
def register_attention(name: str, function: Callable[..., Any], *, mask: str) -> None:
    """Register ``function`` under ``name`` in ``AttentionInterface`` and the matching mask builder.

    The mask entry is required: without it ``create_causal_mask`` silently returns None and padding is ignored
    (transformers-v5.md §6 item 1). ``mask``: ``"sdpa"`` (bool or None masks) or ``"eager"`` (additive float).
    """
    builders = {"sdpa": sdpa_mask, "eager": eager_mask}
    if mask not in builders:
        raise ValueError(f"mask: unknown mask kind {mask!r}; allowed: {sorted(builders)}")
    AttentionInterface.register(name, function)
    AttentionMaskInterface.register(name, builders[mask])


def attention_functions() -> dict[str, Callable[..., Any]]:
    """The process-global name -> attention function mapping (tests swap entries in it)."""
    return AttentionInterface._global_mapping


#: transformers' own sdpa attention ``(module, query, key, value, attention_mask, **kwargs) -> (out [B, Q, H, D],
#: None)``; ``position_bias`` adds a float bias. An alias, not a wrapper: it is called for every untouched layer.
sdpa_attention = sdpa_attention_forward


def modeling_function(module: nn.Module, name: str) -> Callable[..., Any] | None:
    """Function ``name`` of the module's own modeling file (``apply_rotary_pos_emb``...), or None."""
    return getattr(sys.modules.get(type(module).__module__), name, None)


def modeling_eager_attention(module: nn.Module) -> Callable[..., Any] | None:
    """The ``eager_attention_forward`` of the module's own modeling file (Gemma's adds softcap), or None."""
    return modeling_function(module, "eager_attention_forward")


def attn_implementation(config: Any) -> str | None:
    """The attention implementation a (sub-)config currently dispatches to."""
    return config._attn_implementation


def set_text_attn_implementation(model: nn.Module, key: str | None, name: str) -> None:
    """Switch only the text tower (sub-config ``key``; None for plain decoders) to attention ``name``.

    A plain string would also reroute the vision tower (transformers-v5.md §2.3).
    """
    model.set_attn_implementation(name if key is None else {key: name})


def text_config(config: Any) -> Any:
    """The decoder's text config (the same object as the language model's ``.config``)."""
    try:
        return config.get_text_config(decoder=True)
    except (AttributeError, TypeError, ValueError):
        return config


def sub_configs(config: Any) -> dict[str, Any]:
    """The sub-configs of a composite config (``{"text_config": ..., "vision_config": ...}``), {} for decoders."""
    return {key: getattr(config, key) for key in (getattr(config, "sub_configs", None) or {})
            if getattr(config, key, None) is not None}


def text_config_key(config: Any, text_cfg: Any) -> str | None:
    """Key of the text sub-config for ``set_attn_implementation({key: name})``; None for plain decoders."""
    if text_cfg is config:
        return None
    for key, sub in sub_configs(config).items():
        if sub is text_cfg:
            return key
    return "text_config"


# ---------------------------------------------------------------------------------------------------- models
def model_from_config(cls: type[PreTrainedModel], config: Any, **kwargs: Any) -> PreTrainedModel:
    """A randomly initialised model of ``cls`` from ``config`` (what ``from_pretrained`` builds before loading)."""
    return cls._from_config(config, **kwargs)


def load_kwargs() -> dict[str, Any]:
    """Keyword arguments ``from_pretrained`` needs for hookkit's exactness guarantees.

    transformers 5.25 kernelizes models by default (``use_kernels``): hub kernels replace RMSNorm, activations and
    RoPE on CUDA, so a model would no longer be the stock PyTorch computation that parity is defined against, and
    loading fails outright when the ``kernels`` package is missing or too old. Every 5.x release pops
    ``use_kernels`` from the loading kwargs, so passing False is safe wherever the feature exists.
    """
    return {"use_kernels": False} if hasattr(PreTrainedModel, "set_use_kernels") else {}


def kernels_active(model: nn.Module) -> bool:
    """Whether hub kernels replaced some of the model's layers."""
    return bool(getattr(model, "use_kernels", False))


def select_model_state_rows(model: nn.Module, rows: torch.Tensor) -> None:
    """Reduce per-batch state kept inside the model to ``rows`` (Qwen-VL caches its M-RoPE ``rope_deltas``)."""
    inner = getattr(model, "model", None)
    deltas = getattr(inner, "rope_deltas", None)
    if isinstance(deltas, torch.Tensor) and deltas.shape[0] > len(rows):
        inner.rope_deltas = deltas[rows.to(deltas.device)]


def language_model(model: nn.Module) -> nn.Module:
    """The causal LM a wrapper such as InstructBLIP holds and delegates generation to."""
    return model.language_model
