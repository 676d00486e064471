"""hookkit: exact, fast, composable inference-time interventions for Hugging Face LVLMs and LLMs.

    import hookkit
    from hookkit.methods.vhr import VHR

    model, processor = hookkit.load("tiny-llava")
    with hookkit.attach(model, VHR(alpha=2.0)) as session:
        ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hookkit.core import AttnCall, HookContext, Intervention, Region, Session, Site, attach, get_model_info
from hookkit.errors import AttachError, ConfigError, HookkitError, InputError, UnsupportedModelError
from hookkit.models import loading as _loading

__version__ = "0.1.0"

__all__ = ["AttachError", "AttnCall", "ConfigError", "HookContext", "HookkitError", "InputError", "Intervention",
           "Region", "Session", "Site", "UnsupportedModelError", "attach", "get_model_info", "load", "__version__"]


def load(name_or_path: str | Path, *, dtype: Any = None, device_map: Any = None,
         attn_implementation: str | None = None, adapter: str | Path | None = None,
         **from_pretrained_kwargs: Any) -> tuple[Any, Any]:
    """Load ``(model, processor)`` from an alias (``hookkit list``), a local checkpoint folder or a hub id.

    For text-only models the processor is the tokenizer (left padding). ``dtype``: ``float32``, ``bfloat16``,
    ``float16``, ``auto`` or ``fast`` (bf16 where the hardware computes it natively, else float32). ``device_map``
    goes to accelerate (e.g. ``"auto"``). ``attn_implementation``: ``"sdpa"``, ``"eager"``, or None (sdpa where
    the architecture has it, else eager). ``adapter``: a folder saved by ``hookkit tune`` (MoH, ALoRA, LoRA
    weights), attached for the life of the model. Other keyword arguments go to ``from_pretrained``.
    """
    model, processor = _loading.load(name_or_path, dtype=dtype, device_map=device_map,
                                     attn_implementation=attn_implementation, **from_pretrained_kwargs)
    if adapter is not None:
        from hookkit.methods.trainable import load_adapter

        model = load_adapter(model, adapter)
    return model, processor
