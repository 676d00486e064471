"""``alora``: attention over LoRA codes, a **reconstruction** of ALoRA (arXiv 2405.17830, EMNLP 2024).

Only the paper's abstract is known: ALoRA "utilizes a multi-head attention module upon LoRA, facilitating direct
information transfer from preceding tokens to the current one". No code is public. Everything below is hookkit's
reading of that sentence (../shared/reference/methods-llm.md §3.2), **not** the paper's verified method; no result
of the paper is reproduced or quoted.

Default variant ``"residual"`` (reference variant A), for each targeted linear ``W`` (rank r, scale s = α/r)::

    z_t  = A · dropout(x_t)                                   (r dims, as LoRA)
    z'_t = z_t + W_o · MHA_t(z)                               causal multi-head attention over z_1..z_t
    out  = W·x_t + s · B · z'_t                               B = 0 at init -> the base model

``MHA_t`` has its own r×r projections ``W_q, W_k, W_v, W_o`` (no bias), ``num_heads`` heads of r/num_heads dims,
softmax over the preceding tokens and the token itself (j ≤ t) with padding keys masked, scale 1/√(r/H), no positional
encoding. ``W_o`` starts at 0, so a fresh adapter is plain LoRA (must-pass test (ii)), and ``B = 0`` makes it the base
model (test (i)). Alternatives (``variant``), all implemented:

* ``"replace"`` (B): ``z' = W_o·MHA(z)`` (no residual; ``W_o`` gets a random init, or nothing would ever train);
* ``"output"`` (C): attention in the d_out space on ``y = B·A·x``: ``out = W·x + s·(y + W_o·MHA(y))`` (expensive);
* ``"gated"`` (D): ``z' = (1 − g_t)·z_t + g_t·W_o·MHA(z)``, ``g_t = σ(w_g·z_t + b_g)`` (starts at 0.5);
* ``"input"`` (E): attention on the input itself, LoRA after it: ``out = W·x + s·B·A·(x + W_o·MHA(x))`` (d_in² projections).

**Decode cache.** The adapter attention needs the keys/values of every earlier token of the sequence: the per-sample
state keeps one cache of keys and values (``[B, H, T, dim/H]``) per adapted module per layer; the prefill fills it and
every cached decode step appends, so cached decoding equals a full recompute. Padding slots (left padding) are masked
as keys, so a left-padded batch generates what each row generates alone. A cropped model cache (assisted decoding)
crops the adapter cache to match; beam search (row reordering) is not supported (the session refuses a batch-size
change). Not mergeable into W: the branch depends on other tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hookkit.core.intervention import Binding, HookContext, SampleInfo
from hookkit.core.regions import Region
from hookkit.core.sites import Site
from hookkit.errors import ConfigError
from hookkit.methods.low_rank import (
    Weight,
    check_rank_alpha,
    check_seed,
    check_targets,
    get_module,
    kaiming_,
    linear_shape,
    put_module,
    resolve_layers,
)
from hookkit.methods.trainable import AdapterIntervention
from hookkit.models.base import ModelInfo

#: variant name -> the reference's letter (methods-llm.md §3.2)
VARIANTS = {"residual": "A", "replace": "B", "output": "C", "gated": "D", "input": "E"}
_BY_LETTER = {letter: name for name, letter in VARIANTS.items()}


def variant_name(value: str) -> str:
    if isinstance(value, str) and value in VARIANTS:
        return value
    if isinstance(value, str) and value.upper() in _BY_LETTER:
        return _BY_LETTER[value.upper()]
    raise ConfigError("alora.variant", f"unknown variant {value!r}",
                      [f"{n} ({letter})" for n, letter in VARIANTS.items()])


class ALoRAModule(nn.Module):
    """LoRA's A and B plus a small causal multi-head attention in the chosen space (see the module docstring)."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, num_heads: int, variant: str,
                 dropout: float, generator: torch.Generator | None):
        super().__init__()
        self.variant, self.num_heads, self.scale = variant, num_heads, alpha / rank
        self.lora_A = Weight(rank, in_features)
        self.lora_B = Weight(out_features, rank)
        kaiming_(self.lora_A.weight, generator)
        nn.init.zeros_(self.lora_B.weight)
        dim = {"output": out_features, "input": in_features}.get(variant, rank)
        self.attn_q, self.attn_k, self.attn_v, self.attn_o = (Weight(dim, dim) for _ in range(4))
        for w in (self.attn_q, self.attn_k, self.attn_v):
            kaiming_(w.weight, generator)
        if variant == "replace":
            kaiming_(self.attn_o.weight, generator)
        else:
            nn.init.zeros_(self.attn_o.weight)  # safer start: the adapter begins as plain LoRA (§3.2)
        if variant == "gated":
            self.gate = Weight(1, dim)
            nn.init.zeros_(self.gate.weight)
            self.gate_bias = nn.Parameter(torch.zeros(1))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def attend(self, s: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None,
               allowed: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``W_o · MHA(s)`` for the new tokens ``s`` ``[B, S, dim]``; ``allowed`` ``[B, S, T]`` (T = past + S)."""
        bsz, seq, dim = s.shape
        heads = self.num_heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(bsz, seq, heads, dim // heads).transpose(1, 2)

        q, k, v = split(self.attn_q(s)), split(self.attn_k(s)), split(self.attn_v(s))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])  # scale 1/sqrt(dim/H)
        return self.attn_o(o.transpose(1, 2).reshape(bsz, seq, dim)), (k, v)

    def forward(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None,
                allowed: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        x = self.dropout(x)
        if self.variant == "input":
            a, cache = self.attend(x, past, allowed)
            return self.lora_B(self.lora_A(x + a)) * self.scale, cache
        z = self.lora_A(x)
        if self.variant == "output":
            y = self.lora_B(z)
            a, cache = self.attend(y, past, allowed)
            return (y + a) * self.scale, cache
        a, cache = self.attend(z, past, allowed)
        if self.variant == "residual":
            u = z + a
        elif self.variant == "replace":
            u = a
        else:  # gated
            g = torch.sigmoid(self.gate(z) + self.gate_bias)
            u = (1 - g) * z + g * a
        return self.lora_B(u) * self.scale, cache


@dataclass(eq=False)
class ALoRA(AdapterIntervention):
    """ALoRA (reconstruction): causal multi-head attention over LoRA codes of preceding tokens (trainable)."""

    name = "alora"

    rank: int = field(default=8, metadata={"help": "LoRA rank r"})
    alpha: float | None = field(default=None, metadata={"help": "LoRA alpha (scale alpha/r); default 2r"})
    num_heads: int = field(default=2, metadata={"help": "heads of the adapter attention (must divide its width)"})
    variant: str = field(default="residual", metadata={
        "help": "residual (A, default) | replace (B) | output (C) | gated (D) | input (E); see docs/methods/alora.md"})
    dropout: float = field(default=0.05, metadata={"help": "dropout on the adapter input (training only)"})
    target_modules: list[str] | None = field(default=None, metadata={
        "help": "linears inside each decoder layer (default: the query and value projections, as PEFT; the fused "
                "qkv projection where there is one)"})
    layers: list[int] | None = field(default=None, metadata={"help": "layers to adapt (default: all)"})
    seed: int = field(default=0, metadata={"help": "seed of the initial weights"})

    def _resolved(self, info: ModelInfo) -> tuple[list[int], list[str], float, str]:
        alpha = check_rank_alpha(self.name, self.rank, self.alpha, self.dropout)
        variant = variant_name(self.variant)
        if not isinstance(self.num_heads, int) or isinstance(self.num_heads, bool) or self.num_heads < 1:
            raise ConfigError("alora.num_heads", f"expected a positive integer, got {self.num_heads!r}")
        layers = resolve_layers(self.name, self.layers, info.num_layers)
        targets = check_targets(self.name, self.target_modules, info)
        for target in targets:
            d_in, d_out = linear_shape(info, layers[0], target, self.name)
            width = {"output": d_out, "input": d_in}.get(variant, self.rank)
            if width % self.num_heads:
                what = {"output": f"{target}.out_features", "input": f"{target}.in_features"}.get(variant, "rank")
                divisors = [d for d in range(1, min(width, 64) + 1) if width % d == 0]
                raise ConfigError("alora.num_heads", f"{self.num_heads} heads do not divide the adapter attention "
                                  f"width {width} ({what})", divisors)
        return layers, targets, alpha, variant

    def _build_modules(self, info: ModelInfo) -> nn.Module:
        layers, targets, alpha, variant = self._resolved(info)
        gen = torch.Generator().manual_seed(check_seed("alora", self.seed))
        root = nn.Module()
        for layer in layers:
            for target in targets:
                d_in, d_out = linear_shape(info, layer, target, self.name)
                put_module(root, f"layers.{layer}.{target}", ALoRAModule(
                    d_in, d_out, self.rank, alpha, self.num_heads, variant, self.dropout, gen))
        return root

    def bind(self, model: ModelInfo) -> Binding:
        layers, targets, _, _ = self._resolved(model)
        self.build(model)  # the trainable weights are the method's own, built once per model shape
        return Binding({Site.LINEAR: frozenset(layers)}, linear_targets=tuple(targets))

    def new_state(self, sample: SampleInfo) -> dict[str, Any]:
        # cache: (layer, target) -> (keys, values) [B, H, T, dim/H]; mask: (forward, allowed [B, S, T])
        return {"cache": {}, "mask": None}

    def select_rows(self, state: dict[str, Any], rows: torch.Tensor) -> dict[str, Any]:
        return {"cache": {key: (k[rows], v[rows]) for key, (k, v) in state["cache"].items()}, "mask": None}

    def _allowed(self, ctx: HookContext, state: dict[str, Any], seq: int) -> torch.Tensor:
        """``[B, S, T]`` bool: query ``i`` (slot past+i) may read key slot ``j`` iff ``j ≤ past+i`` and ``j`` is not
        padding. A padding query may read itself, only so that its (unused) row is not all-masked (NaN)."""
        cached = state["mask"]
        if cached is not None and cached[0] is ctx.forward:
            return cached[1]
        past = ctx.forward.past_length
        total = past + seq
        tracker = ctx.forward.tracker
        valid = ~tracker.mask(Region.PADDING, slice(0, total))  # [B, T]
        q_slot = torch.arange(past, total, device=valid.device)[:, None]
        k_slot = torch.arange(total, device=valid.device)[None, :]
        allowed = (k_slot <= q_slot)[None] & (valid[:, None, :] | (k_slot == q_slot)[None])
        state["mask"] = (ctx.forward, allowed)
        return allowed

    def linear_output(self, ctx: HookContext, state: dict[str, Any], target: str, inputs: torch.Tensor,
                      output: torch.Tensor) -> torch.Tensor | None:
        module = get_module(self.adapter_module, f"layers.{ctx.layer}.{target}")
        key = (ctx.layer, target)
        past_len = ctx.forward.past_length
        past = None
        if past_len > 0:
            past = state["cache"].get(key)
            if past is None:
                raise RuntimeError("alora: a cached forward arrived but the adapter cache of its prefill is missing "
                                   "(attach the adapter before the prefill)")
            cached = past[0].shape[2]
            if cached < past_len:
                raise RuntimeError(f"alora: the adapter cache holds {cached} tokens but the model cache {past_len}")
            if cached > past_len:  # the model cache was cropped (assisted decoding): crop ours the same way
                past = (past[0][:, :, :past_len], past[1][:, :, :past_len])
        allowed = self._allowed(ctx, state, inputs.shape[1]).to(inputs.device)
        delta, state["cache"][key] = module(inputs.to(module.lora_A.weight.dtype), past, allowed)
        return output + delta.to(output.dtype)
