"""``moh``: Mixture-of-Head attention (MoH, arXiv 2410.11842), both variants, as a trainable hookkit adapter.

MoH scales each head's output per token before ``o_proj`` (paper Eq. 3-4: MoH(x_t) = Σ_i g_i(x_t)·H^i_t·W_O^i),
here at the ``HEAD_OUTPUT`` site (``[B, S, H, D]``). Heads ``0..h_s-1`` of a layer are *shared* (always on),
the next ``h_r`` are *routed* (top-K per token), and any heads after ``h_s + h_r`` are always off (that is how the
"naive head dropping" baseline is expressed). The KV cache is unchanged: K/V are computed and cached for every KV
head (routed query heads of later tokens need them; methods-llm.md §2.3, issue #7).

Variants (``variant``):

* ``"query_norm"`` (default; MoH-LLaMA3-8B continue-tuning, paper §4.4, Eq. 9-10): parameter-free router.
  ``n_j = ‖q_j‖₂`` of each routed head's query, read from the raw ``q_proj`` output at the ``LINEAR`` site (before
  RoPE, which preserves norms; for models with a ``q_norm`` the norm is taken before it); ``p = softmax(n/σ)`` with
  ``σ = std_j(n_j)`` (torch's unbiased std, as in the released code); binary gates ``m = onehot(topK(p))``; shared
  gates are exactly 1. Training uses a straight-through estimator ``g = m + (p − p.detach())`` (forward value m,
  gradient of p; the paper's ∂L/∂g^q = ∂L/∂g, form not verified since the training code is unreleased), so the
  gradient reaches ``q_proj`` through the query norms.
* ``"learned"`` (from-scratch MoH, paper Eq. 5-6, ``MoH-ViT``/``MoH-DiT`` code): bias-free routers on the attention
  input (``ATTN_INPUT``, after the pre-norm): ``W_s ∈ R^{h_s×d}``, ``W_r ∈ R^{h_r×d}``, ``W_h ∈ R^{2×d}``. With
  ``scalings="code"`` (default, the released code): ``ĝ_r = K·(p⊙m)/max(Σp⊙m, eps)``, ``ĝ_s = h_s·softmax(W_s x)``,
  ``[α1, α2] = 2·softmax(W_h x)``, so uniform routers give every active head weight 1. ``scalings="paper"``:
  the plain equations (no ``K``, ``h_s`` or ``2`` factors, no renormalisation of the top-K weights).

Load balance (Eq. 7, training only): ``L_b = Σ_j P_j f_j`` over routed heads, ``P_j`` the mean router probability
and ``f_j`` the fraction of (non-padding) tokens selecting head j (Σ f_j = K). The released code computes
``mean(P·f)·E·E = E·Σ P_j f_j`` with ``E = h_r``; ``scalings="code"`` keeps that extra factor E, ``"paper"`` drops
it. ``auxiliary_loss`` returns ``β · mean over layers`` with ``β = balance_coef = 0.01`` (Eq. 8). The query-norm
variant applies the same loss to its ``p`` (presumably what stage 2 did, Tab. F; not verified).

Head budgets per layer (``shared``, ``routed``, ``top_k``; each an int for every layer or a list with one entry
per converted layer). Defaults follow MoH-LLaMA3 ("first half shared, top-K of the rest, 75 % active"):
``shared = ⌊h/2⌋``, ``routed = h − shared``, ``top_k = round_half_up(active_fraction · h) − shared``. For SmolLM2's 9
heads: shared 4 (heads 0-3), top-3 of heads 4-8, 7 of 9 heads active (77.8 %); for LLaMA-3-8B's 32 heads: shared 16,
top-8 of 16 (exactly the paper's 75 %).

Real compute saving (``skip_heads=True``): during inference, the ``ATTENTION`` site computes the attention of a
layer only for the query heads that at least one (row, token) of the forward keeps, and writes zeros for the others
(which the gate would zero anyway). The gate is known before attention: it comes from ``q_proj`` (query-norm) or from
the attention input (learned). What is *not* saved: the Q/K/V projections (all heads: the router needs every
routed query; K/V are cached for every KV head), RoPE, the cache update, ``o_proj`` (a dense matmul over zeros) and
the MLP. Under GQA a KV head is skipped only when all of its query heads are off, so decode attention, which is bound
by reading the KV cache, saves little; see docs/methods/moh.md and docs/benchmarks.md for measurements. Skipping
is disabled whenever autograd is recording (training needs every head's output for the STE gradient).

Optional LoRA deltas (``lora_rank > 0``) on ``lora_targets`` make the converted model tunable as a small adapter
(the paper continue-tunes all weights; hookkit keeps the base frozen and untouched, see docs/methods/moh.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hookkit.core.intervention import AttnCall, Binding, HookContext, SampleInfo, SitePlan
from hookkit.core.regions import Region
from hookkit.core.sites import Site
from hookkit.errors import ConfigError, check_range
from hookkit.methods.low_rank import (
    LoRAModule,
    Weight,
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

VARIANTS = ("query_norm", "learned")
SCALINGS = ("code", "paper")
EPS = 1e-6  # the released code's clamp in the top-K renormalisation (MoH-ViT attention.py)


def round_half_up(x: float) -> int:
    """``round`` with .5 going up (Python's ``round`` is banker's rounding: round(4.5) = 4)."""
    return int(math.floor(x + 0.5))


@dataclass(frozen=True)
class HeadBudget:
    shared: int  # heads 0..shared-1, always on
    routed: int  # heads shared..shared+routed-1, top_k of them per token
    top_k: int
    num_heads: int  # heads from shared+routed on are always off

    @property
    def active(self) -> int:
        return self.shared + self.top_k


def balance_loss(p: torch.Tensor, m: torch.Tensor, valid: torch.Tensor | None, scalings: str = "code") -> torch.Tensor:
    """Load-balance loss of one layer (paper Eq. 7; code adds the factor E = number of routed heads).

    ``p``: router probabilities ``[..., E]``; ``m``: 0/1 top-K selection ``[..., E]``; ``valid``: bool ``[...]``
    tokens that count (non-padding), or None for all. ``P_j`` = mean of ``p_j``, ``f_j`` = mean of ``m_j`` over the
    valid tokens; returns ``E·Σ P_j f_j`` (code) or ``Σ P_j f_j`` (paper).
    """
    num_routed = p.shape[-1]
    p2, m2 = p.reshape(-1, num_routed).float(), m.reshape(-1, num_routed).float()
    if valid is not None:
        keep = valid.reshape(-1)
        p2, m2 = p2[keep], m2[keep]
    if p2.shape[0] == 0:
        return p.new_zeros((), dtype=torch.float32)
    big_p, f = p2.mean(0), m2.mean(0)
    loss = (big_p * f).sum()
    return loss * num_routed if scalings == "code" else loss


def query_norm_router(q_routed: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MoH-LLaMA3's parameter-free router on ``[..., h_r, D]`` routed queries: returns ``(p, m)``, each ``[..., h_r]``.

    ``p = softmax(‖q_j‖ / std_j ‖q_j‖)`` (unbiased std, as the released code); ``m`` = one-hot of the top-K of ``p``.
    /σ and softmax do not change the top-K; they shape the STE gradient and the load-balance loss.
    """
    norms = q_routed.float().norm(dim=-1)
    if norms.shape[-1] > 1:
        sigma = norms.std(dim=-1, keepdim=True).clamp_min(EPS)  # guards identical norms (σ = 0)
    else:
        sigma = torch.ones_like(norms)  # one routed head: the unbiased std is undefined (NaN)
    p = torch.softmax(norms / sigma, dim=-1)
    return p, topk_mask(p, top_k)


def topk_mask(p: torch.Tensor, k: int) -> torch.Tensor:
    if k >= p.shape[-1]:
        return torch.ones_like(p)
    if k == 0:
        return torch.zeros_like(p)
    idx = p.topk(k, dim=-1).indices
    return torch.zeros_like(p).scatter_(-1, idx, 1.0)


@dataclass(frozen=True)
class MoHSettings:
    """MoH resolved for one model by ``bind``."""

    budgets: dict[int, HeadBudget]  # converted layer -> (shared, routed, top_k, heads)
    lora_targets: frozenset[str]  # linears with LoRA deltas
    query_target: str  # the LINEAR target holding the queries (q_proj, or a fused qkv_proj)
    query_width: int  # H·D: the queries are the first query_width features of that output


@dataclass(eq=False)
class MoH(AdapterIntervention):
    """Mixture-of-Head attention: shared + top-K routed heads per token (query-norm or learned routers)."""

    name = "moh"
    supports_cache_reordering = True  # per-forward only: nothing kept per row between decoding steps

    variant: str = field(default="query_norm", metadata={
        "help": "query_norm (parameter-free router, binary gates + STE; MoH-LLaMA3) | learned (soft routers)"})
    shared: int | list[int] | None = field(default=None, metadata={
        "help": "shared (always-on) heads per layer, the first ones; default floor(heads/2)"})
    routed: int | list[int] | None = field(default=None, metadata={
        "help": "routed heads per layer, after the shared ones; default heads - shared (later heads are off)"})
    top_k: int | list[int] | None = field(default=None, metadata={
        "help": "routed heads kept per token; default round(active_fraction*heads) - shared"})
    active_fraction: float = field(default=0.75, metadata={"help": "active-head budget used when top_k is None"})
    layers: list[int] | None = field(default=None, metadata={"help": "layers converted to MoH (default: all)"})
    scalings: str = field(default="code", metadata={
        "help": "code (released code: h_s, K, 2 factors and E in L_b) | paper (plain Eq. 5-7)"})
    balance_coef: float = field(default=0.01, metadata={"help": "beta of the load-balance loss (Eq. 8)"})
    ste: bool = field(default=True, metadata={"help": "query_norm: straight-through gradient to the query norms"})
    skip_heads: bool = field(default=False, metadata={
        "help": "inference: skip attention for heads gated off in every row (uses the attention site)"})
    router_init_std: float = field(default=0.01, metadata={
        "help": "learned: std of the initial routed router (shared and type routers start at 0)"})
    lora_rank: int = field(default=0, metadata={"help": "rank of trainable LoRA deltas (0: none)"})
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA alpha (default 2*rank)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA input dropout (training only)"})
    lora_targets: list[str] | None = field(default=None, metadata={
        "help": "linears that get LoRA deltas when lora_rank > 0 (default: every attention projection)"})
    seed: int = field(default=0, metadata={"help": "seed of the initial router / LoRA weights"})

    # ------------------------------------------------------------------ configuration
    def budgets(self, info: ModelInfo) -> dict[int, HeadBudget]:
        """The resolved (shared, routed, top_k) of every converted layer; raises ``ConfigError`` on bad values."""
        if self.variant not in VARIANTS:
            raise ConfigError("moh.variant", f"unknown variant {self.variant!r}", VARIANTS)
        if self.scalings not in SCALINGS:
            raise ConfigError("moh.scalings", f"unknown value {self.scalings!r}", SCALINGS)
        check_range("moh.active_fraction", self.active_fraction, low=0.0, high=1.0, low_inclusive=False)
        check_range("moh.balance_coef", self.balance_coef, low=0.0)
        check_range("moh.router_init_std", self.router_init_std, low=0.0)
        for name in ("ste", "skip_heads"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"moh.{name}", f"expected true or false, got {getattr(self, name)!r}")
        layers = resolve_layers("moh", self.layers, info.num_layers)
        h = info.num_heads
        shared = self._per_layer("shared", self.shared, layers)
        routed = self._per_layer("routed", self.routed, layers)
        top_k = self._per_layer("top_k", self.top_k, layers)
        out = {}
        for i, layer in enumerate(layers):
            hs = h // 2 if shared[i] is None else shared[i]
            if not 0 <= hs <= h:
                raise ConfigError("moh.shared", f"{hs} shared heads on layer {layer}", f"0..{h}")
            hr = h - hs if routed[i] is None else routed[i]
            if not 0 <= hr <= h - hs:
                raise ConfigError("moh.routed", f"{hr} routed heads after {hs} shared on layer {layer}",
                                  f"0..{h - hs}")
            if top_k[i] is None:
                active = round_half_up(self.active_fraction * h)
                if active < hs:
                    raise ConfigError("moh.shared", f"{hs} shared heads exceed the active budget round("
                                      f"{self.active_fraction:g}*{h}) = {active} on layer {layer}; lower shared, "
                                      "raise active_fraction or give top_k", f"0..{active}")
                k = min(active - hs, hr)
            else:
                k = top_k[i]
            if not 0 <= k <= hr:
                raise ConfigError("moh.top_k", f"top-{k} of {hr} routed heads on layer {layer}", f"0..{hr}")
            if hs + k == 0:
                raise ConfigError("moh.top_k", f"layer {layer} would have no active head (shared 0, top_k 0)",
                                  f"1..{hr}")
            out[layer] = HeadBudget(hs, hr, k, h)
        return out

    @staticmethod
    def _per_layer(name: str, value: Any, layers: list[int]) -> list[int | None]:
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return [value] * len(layers)
        if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            if len(value) != len(layers):
                raise ConfigError(f"moh.{name}", f"got {len(value)} values for {len(layers)} converted layers",
                                  "one integer, or a list with one integer per converted layer")
            return list(value)
        raise ConfigError(f"moh.{name}", f"expected an integer or a list of integers, got {value!r}")

    def _lora_alpha(self) -> float:
        return check_rank_alpha("moh", self.lora_rank, self.lora_alpha, self.lora_dropout, rank_field="lora_rank",
                                alpha_field="lora_alpha", dropout_field="lora_dropout", allow_zero=True)

    def _lora_targets(self, info: ModelInfo) -> list[str]:
        if self.lora_rank == 0:
            return []
        if self.lora_targets is None:
            return [*info.projection_targets(), f"{info.adapter.attention_attr}.{info.adapter.o_proj}"]
        return check_targets("moh", self.lora_targets, field="lora_targets")

    # ------------------------------------------------------------------ modules
    def _build_modules(self, info: ModelInfo) -> nn.Module:
        budgets = self.budgets(info)
        alpha = self._lora_alpha()
        gen = torch.Generator().manual_seed(check_seed("moh", self.seed))
        root = nn.Module()
        d = info.hidden_size
        for layer, b in budgets.items():
            if self.variant == "learned":
                # Shared and type routers start at 0 (uniform: every active head weight 1 with the code's
                # scalings); the routed router gets a small random init so that top-K ties are broken.
                if b.shared:
                    put_module(root, f"layers.{layer}.router_shared", _zeros(Weight(b.shared, d)))
                if b.routed:
                    w = _zeros(Weight(b.routed, d))
                    if self.router_init_std > 0:
                        with torch.no_grad():
                            w.weight.normal_(0.0, float(self.router_init_std), generator=gen)
                    put_module(root, f"layers.{layer}.router_routed", w)
                if b.shared and b.routed:
                    put_module(root, f"layers.{layer}.router_type", _zeros(Weight(2, d)))
            for target in self._lora_targets(info):
                d_in, d_out = linear_shape(info, layer, target, "moh")
                put_module(root, f"layers.{layer}.{target}",
                           LoRAModule(d_in, d_out, self.lora_rank, alpha, self.lora_dropout, gen))
        return root

    # ------------------------------------------------------------------ binding
    def bind(self, model: ModelInfo) -> Binding:
        budgets = self.budgets(model)
        self._lora_alpha()
        self.build(model)  # the trainable weights (routers, LoRA) are the method's own, built once per model shape
        layers = frozenset(budgets)
        plan: SitePlan = {Site.HEAD_OUTPUT: layers}
        if self.variant == "learned":
            plan[Site.ATTN_INPUT] = layers
        lora = self._lora_targets(model)
        targets = list(lora)
        query_target = model.query_key_targets()[0]  # the query projection, or the fused qkv projection
        if self.variant == "query_norm" and query_target not in targets:
            targets.append(query_target)
        if targets:
            plan[Site.LINEAR] = layers
        if self.skip_heads:
            plan[Site.ATTENTION] = layers
        settings = MoHSettings(budgets, frozenset(lora), query_target, model.num_heads * model.head_dim)
        return Binding(plan, linear_targets=tuple(targets), resolved=settings)

    def new_state(self, sample: SampleInfo) -> dict[str, Any]:
        # cfg: MoHSettings (resolved by bind); gates: layer -> [B, S, H] fp32 of the current forward;
        # balance: layer -> L_b (training forwards only)
        return {"cfg": sample.resolved, "gates": {}, "balance": {}}

    def select_rows(self, state: dict[str, Any], rows: torch.Tensor) -> dict[str, Any]:
        return {"cfg": state["cfg"], "gates": {k: v[rows] for k, v in state["gates"].items()},
                "balance": {}}

    # ------------------------------------------------------------------ routing
    def _valid_tokens(self, ctx: HookContext) -> torch.Tensor:
        return ~ctx.query_mask(Region.PADDING)

    def _store(self, ctx: HookContext, state: dict[str, Any], b: HeadBudget, shared_g: torch.Tensor | None,
               routed_g: torch.Tensor | None, p: torch.Tensor | None, m: torch.Tensor | None,
               ref: torch.Tensor) -> None:
        parts = []
        if b.shared:
            parts.append(shared_g if shared_g is not None else ref.new_ones(*ref.shape[:2], b.shared))
        if b.routed:
            parts.append(routed_g)
        off = b.num_heads - b.shared - b.routed
        if off:
            parts.append(ref.new_zeros(*ref.shape[:2], off))
        state["gates"][ctx.layer] = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
        if p is not None and torch.is_grad_enabled() and b.routed:
            valid = self._valid_tokens(ctx).to(p.device)
            state["balance"][ctx.layer] = balance_loss(p, m, valid, self.scalings)

    def linear_output(self, ctx: HookContext, state: dict[str, Any], target: str, inputs: torch.Tensor,
                      output: torch.Tensor) -> torch.Tensor | None:
        changed = None
        cfg: MoHSettings = state["cfg"]
        if target in cfg.lora_targets:
            module = get_module(self.adapter_module, f"layers.{ctx.layer}.{target}")
            output = output + module(inputs.to(module.lora_A.weight.dtype)).to(output.dtype)
            changed = output
        if target == cfg.query_target and self.variant == "query_norm":
            b = cfg.budgets[ctx.layer]
            ref = output.new_empty(*output.shape[:2], 0, dtype=torch.float32)
            if b.routed:
                queries = output[..., :cfg.query_width]  # a fused qkv output holds the queries first
                q = queries.reshape(*output.shape[:2], b.num_heads, -1)[:, :, b.shared:b.shared + b.routed]
                p, m = query_norm_router(q, b.top_k)
                # Straight-through estimator (paper Eq. 10): forward value m, gradient of p. Bracketed so that
                # the forward value is exactly m ((m + p) - p is not, in floating point).
                g = m + (p - p.detach()) if (self.ste and torch.is_grad_enabled()) else m
                self._store(ctx, state, b, None, g, p, m, ref)
            else:
                self._store(ctx, state, b, None, None, None, None, ref)
        return changed

    def attn_input(self, ctx: HookContext, state: dict[str, Any], hidden: torch.Tensor) -> None:
        if self.variant != "learned":
            return None
        b = state["cfg"].budgets[ctx.layer]
        mods = self.adapter_module.layers._modules[str(ctx.layer)]._modules
        x = hidden.to(torch.float32)
        code = self.scalings == "code"
        shared_g = routed_g = p = m = None
        if b.shared:
            ps = torch.softmax(mods["router_shared"](x), dim=-1)
            shared_g = ps * b.shared if code else ps  # code: h_s·softmax (= 1 when uniform)
        if b.routed:
            p = torch.softmax(mods["router_routed"](x), dim=-1)
            m = topk_mask(p, b.top_k)
            pm = p * m
            # code: K·(p⊙m)/max(Σ p⊙m, eps) (weights sum to K: 1 each when uniform); paper: p⊙m
            routed_g = b.top_k * pm / pm.sum(-1, keepdim=True).clamp_min(EPS) if code else pm
        if b.shared and b.routed:
            alpha = torch.softmax(mods["router_type"](x), dim=-1)
            if code:
                alpha = alpha * 2.0
            shared_g, routed_g = shared_g * alpha[..., :1], routed_g * alpha[..., 1:]
        self._store(ctx, state, b, shared_g, routed_g, p, m, x.new_empty(*x.shape[:2], 0))
        return None

    def head_output(self, ctx: HookContext, state: dict[str, Any], heads: torch.Tensor) -> torch.Tensor | None:
        gates = state["gates"].get(ctx.layer)
        if gates is None:
            raise RuntimeError(f"moh: no gate was computed for layer {ctx.layer} in this forward")
        return heads * gates.unsqueeze(-1).to(heads.dtype)

    def auxiliary_loss(self, state: dict[str, Any]) -> torch.Tensor | None:
        """β · mean over converted layers of L_b (Eq. 8), from the last training forward; None without routing."""
        values = list(state["balance"].values()) if state else []
        if not values or self.balance_coef == 0:
            return None
        return self.balance_coef * torch.stack(values).mean()

    # ------------------------------------------------------------------ head skipping (ATTENTION site)
    def attention(self, call: AttnCall, state: dict[str, Any]) -> torch.Tensor:
        gates = state["gates"].get(call.layer)
        mask = call.attention_mask
        if (gates is None or torch.is_grad_enabled() or call.kwargs.get("softcap") is not None
                or (mask is not None and mask.dtype != torch.bool and mask.dtype != call.query.dtype)):
            return dense_attention(call)
        keep = (gates != 0).flatten(0, -2).any(0)  # [H]: heads some (row, token) keeps
        if bool(keep.all()):
            return dense_attention(call)
        return sparse_head_attention(call, keep)


def _zeros(module: Weight) -> Weight:
    nn.init.zeros_(module.weight)
    return module


def dense_attention(call: AttnCall) -> torch.Tensor:
    """The layer's stock attention (the base function the session would have called), output ``[B, Q, H, D]``."""
    return call.stock()


def sparse_head_attention(call: AttnCall, keep: torch.Tensor) -> torch.Tensor:
    """Attention of the kept query heads only; zeros for the others. Output ``[B, Q, H, D]``.

    GQA: the kept query heads of one KV head are folded into the query-row axis and attend to that KV head
    directly (``[B, 1, n_kept·Q, D]`` against ``[B, 1, K, D]``), so nothing is copied and a KV head none of whose
    query heads is kept is never read. MHA (one query head per KV head): one call over the kept heads.
    """
    q, k, v = call.query, call.key, call.value
    bsz, num_heads, q_len, head_dim = q.shape
    n_rep = call.n_rep
    mask = call.attention_mask  # bool (sdpa base) or float additive (eager base), [B|1, 1, Q, K], or None
    if mask is None:
        mask = _causal_bool(q_len, k.shape[2], q.device)
    out = q.new_zeros(bsz, q_len, num_heads, head_dim)
    kept = keep.nonzero().flatten().tolist()
    if n_rep == 1:
        idx = torch.tensor(kept, device=q.device)
        o = F.scaled_dot_product_attention(q[:, idx], k[:, idx], v[:, idx], attn_mask=mask, scale=call.scaling)
        out[:, :, idx] = o.transpose(1, 2).to(out.dtype)
        return out
    groups: dict[int, list[int]] = {}
    for h in kept:
        groups.setdefault(h // n_rep, []).append(h)
    for g, heads in groups.items():
        n = len(heads)
        if n == 1:
            qg = q[:, heads[0]:heads[0] + 1]
            mg = mask
        else:
            qg = q[:, heads].reshape(bsz, 1, n * q_len, head_dim)  # rows ordered (head, token)
            mg = mask.expand(mask.shape[0], 1, q_len, mask.shape[-1]).repeat(1, 1, n, 1) if q_len > 1 else mask
        o = F.scaled_dot_product_attention(qg, k[:, g:g + 1], v[:, g:g + 1], attn_mask=mg, scale=call.scaling)
        out[:, :, heads] = o.reshape(bsz, n, q_len, head_dim).transpose(1, 2).to(out.dtype)
    return out


def _causal_bool(q_len: int, k_len: int, device: torch.device) -> torch.Tensor | None:
    if q_len == 1:
        return None
    q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    return (torch.arange(k_len, device=device)[None, :] <= q_pos)[None, None]
