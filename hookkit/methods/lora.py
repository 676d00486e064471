"""``lora``: plain LoRA (Hu et al., 2021) at the ``LINEAR`` site (its low-rank module lives in ``low_rank.py``).

``out = W·x + (α/r)·B·A·dropout(x)`` for each targeted linear of each chosen layer, with PEFT's initialisation
(``A`` Kaiming-uniform with ``a = √5``, ``B = 0``), so a fresh adapter equals the base model and, for the same
``A``, ``B``, rank and α, the output equals PEFT's ``LoraConfig(r, lora_alpha, target_modules)``
(``tests/test_alora.py`` checks this). It is a side branch added to the module's output through a forward hook;
the base linear is never replaced, so ``detach`` restores the model exactly. hookkit keeps it mainly as the
baseline of the ALoRA benchmark (same rank, same targets, same trainer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hookkit.core.intervention import Binding, HookContext
from hookkit.core.sites import Site
from hookkit.methods.low_rank import (
    LoRAModule,
    check_rank_alpha,
    check_seed,
    check_targets,
    get_module,
    linear_shape,
    put_module,
    resolve_layers,
)
from hookkit.methods.trainable import AdapterIntervention
from hookkit.models.base import ModelInfo


@dataclass(eq=False)
class LoRA(AdapterIntervention):
    """Plain LoRA side branches on chosen linears (trainable; the baseline for ALoRA)."""

    name = "lora"
    supports_cache_reordering = True  # per-forward only: nothing kept per row between decoding steps

    rank: int = field(default=8, metadata={"help": "LoRA rank r"})
    alpha: float | None = field(default=None, metadata={"help": "LoRA alpha (scale alpha/r); default 2r"})
    dropout: float = field(default=0.05, metadata={"help": "dropout on the adapter input (training only)"})
    target_modules: list[str] | None = field(default=None, metadata={
        "help": "linears inside each decoder layer (default: the query and value projections, as PEFT; the fused "
                "qkv projection where there is one)"})
    layers: list[int] | None = field(default=None, metadata={"help": "layers to adapt (default: all)"})
    seed: int = field(default=0, metadata={"help": "seed of the initial A matrices"})

    def _resolved(self, info: ModelInfo) -> tuple[list[int], list[str], float]:
        alpha = check_rank_alpha(self.name, self.rank, self.alpha, self.dropout)
        return (resolve_layers(self.name, self.layers, info.num_layers),
                check_targets(self.name, self.target_modules, info), alpha)

    def _build_modules(self, info: ModelInfo) -> nn.Module:
        layers, targets, alpha = self._resolved(info)
        gen = torch.Generator().manual_seed(check_seed("lora", self.seed))
        root = nn.Module()
        for layer in layers:
            for target in targets:
                d_in, d_out = linear_shape(info, layer, target, self.name)
                put_module(root, f"layers.{layer}.{target}",
                           LoRAModule(d_in, d_out, self.rank, alpha, self.dropout, gen))
        return root

    def bind(self, model: ModelInfo) -> Binding:
        layers, targets, _ = self._resolved(model)
        self.build(model)  # the trainable weights are the method's own, built once per model shape
        return Binding({Site.LINEAR: frozenset(layers)}, linear_targets=tuple(targets))

    def linear_output(self, ctx: HookContext, state: Any, target: str, inputs: torch.Tensor,
                      output: torch.Tensor) -> torch.Tensor | None:
        module = get_module(self.adapter_module, f"layers.{ctx.layer}.{target}")
        return output + module(inputs.to(module.lora_A.weight.dtype)).to(output.dtype)
