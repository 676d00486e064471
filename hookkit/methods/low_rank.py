"""Low-rank pieces shared by the trainable methods (LoRA, ALoRA, MoH's optional deltas).

Weights with PEFT's names and initialisation, the placement of per-layer modules under one container (so state
dict keys follow ``layers.<i>.<target>``), and the validation of ranks, targets and layers every such method needs.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hookkit.errors import ConfigError, check_int, check_int_list, check_range
from hookkit.models.base import ModelInfo


class Weight(nn.Module):
    """A bias-free linear map holding only ``weight`` (so state-dict keys read ``...lora_A.weight`` like PEFT)."""

    def __init__(self, out_features: int, in_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


def kaiming_(weight: torch.Tensor, generator: torch.Generator | None) -> None:
    """``nn.Linear``'s default init (and PEFT's for lora_A), drawn from ``generator`` instead of the global RNG."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)


class LoRAModule(nn.Module):
    """``scale · B·A·dropout(x)`` with ``B = 0`` at initialisation."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, dropout: float,
                 generator: torch.Generator | None):
        super().__init__()
        self.lora_A = Weight(rank, in_features)
        self.lora_B = Weight(out_features, rank)
        kaiming_(self.lora_A.weight, generator)
        nn.init.zeros_(self.lora_B.weight)
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lora_B(self.lora_A(self.dropout(x))) * self.scale


def linear_shape(info: ModelInfo, layer: int, target: str, method: str) -> tuple[int, int]:
    """``(in_features, out_features)`` of sub-module ``target`` of decoder layer ``layer`` (PEFT-wrapped or not)."""
    decoder_layer = info.decoder_layers[layer]
    try:
        module = decoder_layer.get_submodule(target)
    except AttributeError:
        raise ConfigError(f"{method}.target_modules", f"layer {layer} has no sub-module {target!r}",
                          sorted(n for n, m in decoder_layer.named_modules() if isinstance(m, nn.Linear))) from None
    base = getattr(module, "base_layer", module)
    if not isinstance(base, nn.Linear):
        raise ConfigError(f"{method}.target_modules", f"{target!r} is a {type(base).__name__}, not a Linear")
    return base.in_features, base.out_features


def put_module(root: nn.Module, path: str, module: nn.Module) -> None:
    """Register ``module`` at dotted ``path`` below ``root``, creating containers (state-dict keys follow paths)."""
    *parents, leaf = path.split(".")
    node = root
    for part in parents:
        if part not in node._modules:
            node.add_module(part, nn.Module())
        node = node._modules[part]
    node.add_module(leaf, module)


def get_module(root: nn.Module, path: str) -> nn.Module:
    node = root
    for part in path.split("."):
        node = node._modules[part]
    return node


def default_targets(info: ModelInfo) -> list[str]:
    """PEFT's default for LLaMA-style models, the query and value projections; the fused qkv projection when the
    family has one (Phi-3)."""
    return info.projection_targets()[::2]


def check_targets(method: str, targets: Any, info: ModelInfo | None = None, field: str = "target_modules") -> list[str]:
    """The validated list of sub-module paths; None means ``default_targets(info)``."""
    if targets is None and info is not None:
        return default_targets(info)
    if not isinstance(targets, (list, tuple)) or not targets or not all(isinstance(t, str) and t for t in targets):
        raise ConfigError(f"{method}.{field}", f"expected a non-empty list of sub-module paths, got "
                          f"{targets!r}", "e.g. ['self_attn.q_proj', 'self_attn.v_proj']")
    if len(set(targets)) != len(targets):
        raise ConfigError(f"{method}.{field}", f"duplicate entries in {targets!r}")
    return list(targets)


def resolve_layers(method: str, layers: list[int] | None, num_layers: int) -> list[int]:
    if layers is None:
        return list(range(num_layers))
    return sorted(check_int_list(f"{method}.layers", layers, low=0, high=num_layers - 1))


def check_seed(method: str, seed: Any) -> int:
    """A seed for ``torch.Generator.manual_seed``: a non-negative integer below 2**63."""
    return check_int(f"{method}.seed", seed, low=0, high=2 ** 63 - 1)


def check_rank_alpha(method: str, rank: Any, alpha: Any, dropout: Any, *, rank_field: str = "rank",
                     alpha_field: str = "alpha", dropout_field: str = "dropout", allow_zero: bool = False) -> float:
    """Validate rank/alpha/dropout; return α (default 2r, the reference's starting value, methods-llm.md §3.2)."""
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < (0 if allow_zero else 1):
        raise ConfigError(f"{method}.{rank_field}", f"expected an integer >= {0 if allow_zero else 1}, got {rank!r}")
    check_range(f"{method}.{dropout_field}", dropout, low=0.0, high=1.0, high_inclusive=False)
    if alpha is None:
        return 2.0 * rank
    return check_range(f"{method}.{alpha_field}", alpha, low=0.0, low_inclusive=False)


