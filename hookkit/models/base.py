"""What hookkit needs to know about a loaded model, found the same way for every architecture.

``ModelInfo`` is the registry's view of a model: its text decoder layers, their attention modules and ``o_proj``
inputs, head counts, the image token ids, the vision tower it must leave alone, and the family adapter that knows
how to build prompts. ``inspect_model`` finds the text stack generically (transformers-v5.md §7: modules with
``q_proj``/``o_proj`` and an integer ``layer_idx`` whose ``.config`` is the text config); family adapters add what
cannot be discovered (image token attribute names, prompt layout, paper defaults).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hookkit import compat
from hookkit.errors import UnsupportedModelError

if TYPE_CHECKING:
    from hookkit.models.families import FamilyAdapter


@dataclass
class ModelInfo:
    model: nn.Module
    family: str
    adapter: FamilyAdapter
    text_config: Any
    decoder_layers: list[nn.Module]  # index = layer_idx
    attentions: list[nn.Module]
    num_heads: int
    num_kv_heads: int
    head_dim: int
    image_token_ids: tuple[int, ...]
    vision_modules: list[str] = field(default_factory=list)
    lm_head: nn.Module | None = None
    text_model: nn.Module | None = None  # the module owning `.layers` (and `.rotary_emb`, `.norm`)
    attn_impl_key: str | None = None  # sub-config key for set_attn_implementation ("text_config"), None for decoders

    @property
    def num_layers(self) -> int:
        return len(self.decoder_layers)

    @property
    def is_vlm(self) -> bool:
        return bool(self.image_token_ids)

    @property
    def hidden_size(self) -> int:
        return int(self.text_config.hidden_size)

    def o_proj(self, layer: int) -> nn.Module:
        """The output projection of layer ``layer``'s attention (its input is the per-head output)."""
        return getattr(self.attentions[layer], self.adapter.o_proj)

    def projection_targets(self) -> list[str]:
        """Paths, inside a decoder layer, of the attention's input projections (q, k, v order; one when fused)."""
        return [f"{self.adapter.attention_attr}.{name}" for name in self.adapter.projection_names()]

    def query_key_targets(self) -> list[str]:
        """The ``LINEAR``-site targets whose outputs hold the raw (un-rotated) queries and keys."""
        targets = self.projection_targets()
        return targets if self.adapter.qkv_proj is not None else targets[:2]

    def split_query_key(self, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw queries ``[..., H*D]`` and keys ``[..., Hkv*D]`` from the outputs of ``query_key_targets()``."""
        return self.adapter.split_query_key(self, outputs)

    def layer_types(self) -> list[str]:
        """"full_attention" / "sliding_attention" per layer (Mistral: all sliding; Gemma3: alternating)."""
        types = getattr(self.text_config, "layer_types", None)
        if types:
            return list(types)[: self.num_layers]
        window = getattr(self.text_config, "sliding_window", None)
        use_sliding = getattr(self.text_config, "use_sliding_window", True)
        kind = "sliding_attention" if window and use_sliding else "full_attention"
        return [kind] * self.num_layers

    def fingerprint(self) -> dict[str, Any]:
        """Identifies the model a recipe was made for (architecture and shapes, not weights)."""
        cfg = self.model.config
        return {
            "family": self.family,
            "architecture": type(self.model).__name__,
            "name_or_path": getattr(cfg, "_name_or_path", ""),
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_size": self.hidden_size,
        }


def inspect_model(model: nn.Module, adapter: FamilyAdapter) -> ModelInfo:
    """Build ``ModelInfo``; raise ``UnsupportedModelError`` listing exactly what could not be found."""
    problems: list[str] = []
    config = model.config
    text_config = compat.text_config(config)
    attentions = adapter.find_text_attentions(model, text_config)
    if not attentions:
        names = ", ".join((*adapter.projection_names(), adapter.o_proj))
        problems.append(f"no attention modules with {names} and an integer layer_idx")
    layer_ids = [m.layer_idx for _, m in attentions]
    if attentions and layer_ids != list(range(len(layer_ids))):
        problems.append(f"text attention layer_idx values are not 0..n-1: {layer_ids}")

    decoder_layers: list[nn.Module] = []
    text_model = None
    named = dict(model.named_modules())
    for name, _ in attentions:
        parent_name = name.rsplit(".", 1)[0] if "." in name else ""
        parent = named.get(parent_name)
        if parent is None or getattr(parent, adapter.attention_attr, None) is None:
            problems.append(f"attention module {name!r} is not the `{adapter.attention_attr}` of a decoder layer")
            break
        decoder_layers.append(parent)
        if text_model is None and "." in parent_name:
            owner = named.get(parent_name.rsplit(".", 2)[0])  # <text_model>.layers.<i>
            text_model = owner if owner is not None and hasattr(owner, "layers") else None

    num_heads = getattr(text_config, "num_attention_heads", None)
    num_kv = getattr(text_config, "num_key_value_heads", None) or num_heads
    head_dim = None
    if attentions:
        first = attentions[0][1]
        # Llama-style modules name it head_dim, GPT-NeoX-style ones head_size; else the config says it.
        head_dim = (getattr(first, "head_dim", None) or getattr(first, "head_size", None)
                    or getattr(text_config, "head_dim", None))
        o_proj = getattr(first, adapter.o_proj)
        o_in = getattr(o_proj, "in_features", None)
        if o_in is None and hasattr(o_proj, "base_layer"):  # PEFT-wrapped o_proj
            o_in = o_proj.base_layer.in_features
        if head_dim and o_in:
            num_heads = o_in // head_dim
    if not num_heads or not head_dim:
        problems.append("could not determine num_attention_heads / head_dim of the text attention")
    if problems:
        raise UnsupportedModelError(
            f"hookkit cannot attach to {type(model).__name__} (family {adapter.family!r}): " + "; ".join(problems)
            + ". Supported families: see `hookkit list`; open an issue with the model's class and config."
        )

    lm_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return ModelInfo(
        model=model,
        family=adapter.family,
        adapter=adapter,
        text_config=text_config,
        decoder_layers=decoder_layers,
        attentions=[m for _, m in attentions],
        num_heads=int(num_heads),
        num_kv_heads=int(num_kv),
        head_dim=int(head_dim),
        image_token_ids=tuple(adapter.image_token_ids(model)),
        vision_modules=adapter.vision_module_names(model),
        lm_head=lm_head,
        text_model=text_model,
        attn_impl_key=compat.text_config_key(config, text_config),
    )


def rotary_embedding(info: ModelInfo) -> nn.Module:
    """The text model's rotary embedding module (LongHeads re-applies RoPE at chunk-local positions)."""
    rot = getattr(info.text_model, "rotary_emb", None)
    if rot is None:
        raise UnsupportedModelError(f"{type(info.model).__name__}: no `rotary_emb` on the text model")
    return rot


def model_device(model: nn.Module) -> torch.device:
    try:
        return next(p.device for p in model.parameters() if p.device.type != "meta")
    except StopIteration:
        return torch.device("cpu")
