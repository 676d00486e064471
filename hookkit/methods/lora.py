"""``lora``: plain LoRA (Hu et al., 2021) at the ``LINEAR`` site, and the low-rank module MoH and ALoRA reuse.

``out = W·x + (α/r)·B·A·dropout(x)`` for each targeted linear of each chosen layer, with PEFT's initialisation
(``A`` Kaiming-uniform with ``a = √5``, ``B = 0``), so a fresh adapter equals the base model and, for the same
``A``, ``B``, rank and α, the output equals PEFT's ``LoraConfig(r, lora_alpha, target_modules)``
(``tests/test_alora.py`` checks this). It is a side branch added to the module's output through a forward hook;
the base linear is never replaced, so ``detach`` restores the model exactly. hookkit keeps it mainly as the
baseline of the ALoRA benchmark (same rank, same targets, same trainer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hookkit.core.intervention import HookContext, SitePlan
from hookkit.core.sites import Site
from hookkit.errors import ConfigError, check_range
from hookkit.methods.adapters import AdapterIntervention
from hookkit.methods.registry import register_method
from hookkit.models.base import ModelInfo

DEFAULT_TARGETS = ["self_attn.q_proj", "self_attn.v_proj"]  # PEFT's default for LLaMA-style models


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


def check_targets(method: str, targets: Any) -> list[str]:
    if not isinstance(targets, (list, tuple)) or not targets or not all(isinstance(t, str) and t for t in targets):
        raise ConfigError(f"{method}.target_modules", f"expected a non-empty list of sub-module paths, got "
                          f"{targets!r}", "e.g. ['self_attn.q_proj', 'self_attn.v_proj']")
    if len(set(targets)) != len(targets):
        raise ConfigError(f"{method}.target_modules", f"duplicate entries in {targets!r}")
    return list(targets)


def resolve_layers(method: str, layers: list[int] | None, num_layers: int) -> list[int]:
    if layers is None:
        return list(range(num_layers))
    if not isinstance(layers, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool)
                                                         for i in layers):
        raise ConfigError(f"{method}.layers", f"expected a list of layer indices, got {layers!r}")
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad or len(set(layers)) != len(layers):
        raise ConfigError(f"{method}.layers", f"invalid or repeated layers {bad or layers}",
                          f"distinct integers in 0..{num_layers - 1}")
    return sorted(layers)


def check_rank_alpha(method: str, rank: Any, alpha: Any, dropout: Any, *, rank_field: str = "rank",
                     alpha_field: str = "alpha", dropout_field: str = "dropout", allow_zero: bool = False) -> float:
    """Validate rank/alpha/dropout; return α (default 2r, the reference's starting value, methods-llm.md §3.2)."""
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < (0 if allow_zero else 1):
        raise ConfigError(f"{method}.{rank_field}", f"expected an integer >= {0 if allow_zero else 1}, got {rank!r}")
    check_range(f"{method}.{dropout_field}", dropout, low=0.0, high=1.0, high_inclusive=False)
    if alpha is None:
        return 2.0 * rank
    return check_range(f"{method}.{alpha_field}", alpha, low=0.0, low_inclusive=False)


@register_method
@dataclass(eq=False)
class LoRA(AdapterIntervention):
    """Plain LoRA side branches on chosen linears (trainable; the baseline for ALoRA)."""

    name = "lora"

    rank: int = field(default=8, metadata={"help": "LoRA rank r"})
    alpha: float | None = field(default=None, metadata={"help": "LoRA alpha (scale alpha/r); default 2r"})
    dropout: float = field(default=0.05, metadata={"help": "dropout on the adapter input (training only)"})
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS),
                                      metadata={"help": "linears inside each decoder layer"})
    layers: list[int] | None = field(default=None, metadata={"help": "layers to adapt (default: all)"})
    seed: int = field(default=0, metadata={"help": "seed of the initial A matrices"})

    def _resolved(self, info: ModelInfo) -> tuple[list[int], list[str], float]:
        alpha = check_rank_alpha(self.name, self.rank, self.alpha, self.dropout)
        return (resolve_layers(self.name, self.layers, info.num_layers),
                check_targets(self.name, self.target_modules), alpha)

    def _build_modules(self, info: ModelInfo) -> nn.Module:
        layers, targets, alpha = self._resolved(info)
        gen = torch.Generator().manual_seed(int(self.seed))
        root = nn.Module()
        for layer in layers:
            for target in targets:
                d_in, d_out = linear_shape(info, layer, target, self.name)
                put_module(root, f"layers.{layer}.{target}",
                           LoRAModule(d_in, d_out, self.rank, alpha, self.dropout, gen))
        return root

    def bind(self, model: ModelInfo) -> SitePlan:
        layers, _, _ = self._resolved(model)
        self.build(model)
        return {Site.LINEAR: frozenset(layers)}

    def linear_targets(self) -> list[str]:
        return list(self.target_modules)

    def linear_output(self, ctx: HookContext, state: Any, target: str, inputs: torch.Tensor,
                      output: torch.Tensor) -> torch.Tensor | None:
        module = get_module(self.adapter_module, f"layers.{ctx.layer}.{target}")
        return output + module(inputs.to(module.lora_A.weight.dtype)).to(output.dtype)
