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

from hookkit.core.intervention import AttnCall, Binding, HookContext, Intervention
from hookkit.core.regions import REGION_NAMES
from hookkit.core.sites import MODEL_LEVEL_SITES, Site
from hookkit.errors import ConfigError, check_bool, check_choice, check_int_list
from hookkit.methods.low_rank import check_targets
from hookkit.models.base import ModelInfo


@dataclass(eq=False)
class Noop(Intervention):
    """A neutral intervention on any sites (parity checks, overhead measurements)."""

    name = "noop"
    supports_cache_reordering = True  # per-forward only: nothing kept per row between decoding steps

    sites: list[str] = field(default_factory=lambda: [s.value for s in Site if s != Site.ATTENTION],
                             metadata={"help": "sites to hook (any of: " + ", ".join(s.value for s in Site) + ")"})
    layers: list[int] | None = field(default=None, metadata={"help": "layers to hook (default: all)"})
    exercise: bool = field(default=True, metadata={"help": "return identity results that force each write path"})
    prob_rows_region: str = field(default="all", metadata={
        "help": "query rows materialised for the probs site: 'all' or a region name"})
    targets: list[str] | None = field(default=None, metadata={
        "help": "sub-modules hooked by the linear site (default: the query and value projections, or the fused "
                "qkv projection)"})

    def bind(self, model: ModelInfo) -> Binding:
        names = [s.value for s in Site]
        if isinstance(self.sites, (str, bytes)) or not isinstance(self.sites, (list, tuple)) or not self.sites:
            raise ConfigError("noop.sites", f"expected a non-empty list of site names, got {self.sites!r}", names)
        sites = [Site(check_choice("noop.sites", s, names)) for s in self.sites]
        check_choice("noop.prob_rows_region", self.prob_rows_region, ["all", *REGION_NAMES])
        check_bool("noop.exercise", self.exercise)
        layers = frozenset(range(model.num_layers) if self.layers is None else
                           check_int_list("noop.layers", self.layers, low=0, high=model.num_layers - 1))
        # q and v (or the fused qkv): the linear site is exercised on two modules of the attention
        targets = model.projection_targets()[::2] if self.targets is None else check_targets(
            "noop", self.targets, field="targets")
        return Binding({s: frozenset() if s in MODEL_LEVEL_SITES else layers for s in sites},
                       linear_targets=tuple(targets))

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
