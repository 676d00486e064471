"""``noop``: a neutral intervention on any set of sites, for parity checks and overhead measurements.

With ``exercise=False`` every callback returns ``None`` (the registry's dispatch cost only). With
``exercise=True`` each callback returns an identity result that forces the real write path of its site: the
hidden states themselves, heads × 1, a zero score bias (sdpa with a float mask), and an identity probability edit
on the rows chosen by ``prob_rows``. The output must then equal the stock model: bit-identical on the eager
backend, within 1e-5 (fp32) on sdpa.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from hookkit.core.intervention import AttnCall, HookContext, Intervention, SitePlan
from hookkit.core.regions import REGION_NAMES
from hookkit.core.sites import MODEL_LEVEL_SITES, Site, site_from_name
from hookkit.errors import ConfigError
from hookkit.methods.registry import register_method
from hookkit.models.base import ModelInfo


@register_method
@dataclass(eq=False)
class Noop(Intervention):
    """A neutral intervention on any sites (parity checks, overhead measurements)."""

    name = "noop"

    sites: list[str] = field(default_factory=lambda: [s.value for s in Site if s != Site.ATTENTION],
                             metadata={"help": "sites to hook (any of: " + ", ".join(s.value for s in Site) + ")"})
    layers: list[int] | None = field(default=None, metadata={"help": "layers to hook (default: all)"})
    exercise: bool = field(default=True, metadata={"help": "return identity results that force each write path"})
    prob_rows_region: str = field(default="all", metadata={
        "help": "query rows materialised for the probs site: 'all' or a region name"})
    targets: list[str] = field(default_factory=lambda: ["self_attn.q_proj", "self_attn.v_proj"],
                               metadata={"help": "sub-modules hooked by the linear site"})

    def bind(self, model: ModelInfo) -> SitePlan:
        sites = [site_from_name(s) for s in self.sites]
        if self.prob_rows_region != "all" and self.prob_rows_region not in REGION_NAMES:
            raise ConfigError("noop.prob_rows_region", f"unknown value {self.prob_rows_region!r}",
                              ["all", *REGION_NAMES])
        layers = frozenset(range(model.num_layers) if self.layers is None else self.layers)
        return {s: frozenset() if s in MODEL_LEVEL_SITES else layers for s in sites}

    def linear_targets(self) -> list[str]:
        return list(self.targets)

    def linear_output(self, ctx: HookContext, state: Any, target: str, inputs: torch.Tensor,
                      output: torch.Tensor) -> torch.Tensor | None:
        return output * 1.0 if self.exercise else None

    def layer_input(self, ctx: HookContext, state: Any, hidden: torch.Tensor) -> torch.Tensor | None:
        return hidden if self.exercise else None

    def head_output(self, ctx: HookContext, state: Any, heads: torch.Tensor) -> torch.Tensor | None:
        return heads * 1.0 if self.exercise else None

    def score_bias(self, call: AttnCall, state: Any) -> torch.Tensor | None:
        if not self.exercise:
            return None
        return torch.zeros(1, 1, 1, call.k_len, dtype=call.query.dtype, device=call.query.device)

    def prob_rows(self, call: AttnCall, state: Any) -> torch.Tensor | None:
        if not self.exercise:
            return None
        if self.prob_rows_region == "all":
            return torch.ones(call.batch_size, call.q_len, dtype=torch.bool, device=call.query.device)
        return call.query_mask(self.prob_rows_region)

    def edit_probs(self, call: AttnCall, state: Any, probs: torch.Tensor, rows: torch.Tensor,
                   row_mask: torch.Tensor) -> torch.Tensor:
        return probs
