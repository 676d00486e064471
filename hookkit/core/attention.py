"""The one attention function hookkit registers with transformers, and the per-layer dispatch behind it.

transformers 5 looks attention up by name in ``AttentionInterface`` and the matching mask builder in
``AttentionMaskInterface`` (transformers-v5.md §2). hookkit registers two names, one per base backend:

* ``hookkit_sdpa``: mask from ``sdpa_mask`` (bool or None); untouched layers call ``sdpa_attention_forward``;
* ``hookkit_eager``: mask from ``eager_mask`` (float); untouched layers call the modeling file's own eager function,
  so a no-op is bit-identical to stock eager.

Both must be registered in *both* interfaces: without the mask entry ``create_causal_mask`` silently returns None
and padding is ignored (pitfall 1). The session switches only the text sub-config to one of them, so vision towers
keep their backend (pitfall 2).

Per call, a layer with attention-level interventions takes the cheapest path the math allows:

1. no bias and no probability rows this call → the stock base function (exact);
2. bias only → sdpa with a float mask (``position_bias`` of ``sdpa_attention_forward``), or eager + bias;
3. probability edits → sdpa for every query row, then an fp32 eager recomputation of just the requested rows,
   edited and written back (on the eager base, or when every row is requested, one eager pass).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from hookkit.compat import modeling_eager_attention, register_attention, repeat_kv, sdpa_attention
from hookkit.core.intervention import AttnCall, Intervention

if TYPE_CHECKING:
    from hookkit.core.session import Session

SDPA_NAME = "hookkit_sdpa"
EAGER_NAME = "hookkit_eager"
LAYER_ATTR = "_hookkit_attention"  # set on text attention modules with attention-level interventions


def module_eager_attention(module: torch.nn.Module) -> Callable[..., Any]:
    """The eager attention function of the module's own modeling file (Gemma's adds softcap, for instance)."""
    fn = modeling_eager_attention(module)
    return fn if fn is not None else eager_reference


def eager_reference(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0,
                    **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror of ``modeling_llama.eager_attention_forward`` (used when a modeling file has none)."""
    probs = attention_probs(module, query, key, attention_mask, scaling, kwargs.get("softcap"))
    probs = probs.to(query.dtype)
    probs = F.dropout(probs, p=dropout, training=module.training)
    out = torch.matmul(probs, repeat_kv(value, query.shape[1] // key.shape[1]))
    return out.transpose(1, 2).contiguous(), probs


def attention_probs(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                    additive_mask: torch.Tensor | None, scaling: float, softcap: float | None = None) -> torch.Tensor:
    """fp32 softmax probabilities ``[B, Hq, Q, K]``, computed exactly as the stock eager functions do."""
    scores = torch.matmul(query, repeat_kv(key, query.shape[1] // key.shape[1]).transpose(2, 3)) * scaling
    if softcap is not None:  # Gemma-2 style logit soft-capping, as in modeling_gemma2.eager_attention_forward
        scores = torch.tanh(scores / softcap) * softcap
    if additive_mask is not None:
        scores = scores + additive_mask
    return F.softmax(scores, dim=-1, dtype=torch.float32)


def _dispatch(base: Callable[..., Any]) -> Callable[..., Any]:
    def hookkit_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                                  value: torch.Tensor, attention_mask: torch.Tensor | None, **kwargs: Any):
        layer = getattr(module, LAYER_ATTR, None)
        if layer is None:  # untouched layer, or a module of another model sharing the registered name
            return base(module, query, key, value, attention_mask, **kwargs)
        return layer(module, query, key, value, attention_mask, **kwargs)

    return hookkit_attention_forward


def _eager_base(module: torch.nn.Module, *args: Any, **kwargs: Any):
    return module_eager_attention(module)(module, *args, **kwargs)


_REGISTERED = False


def register_attention_functions() -> None:
    """Register both hookkit names in both transformers interfaces (idempotent, process-global)."""
    global _REGISTERED
    if _REGISTERED:
        return
    register_attention(SDPA_NAME, _dispatch(sdpa_attention), mask="sdpa")
    register_attention(EAGER_NAME, _dispatch(_eager_base), mask="eager")
    _REGISTERED = True


class LayerAttention:
    """Attention-level interventions of one text layer, called in place of the base attention function."""

    def __init__(self, session: Session, layer: int, eager_base: bool, bias: list[Intervention],
                 probs: list[Intervention], kernel: Intervention | None):
        self.session = session
        self.layer = layer
        self.eager_base = eager_base
        self.bias_interventions = bias
        self.prob_interventions = probs
        self.kernel = kernel

    def base(self, module: torch.nn.Module, *args: Any, **kwargs: Any):
        if self.eager_base:
            return module_eager_attention(module)(module, *args, **kwargs)
        return sdpa_attention(module, *args, **kwargs)

    def __call__(self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: torch.Tensor | None, **kwargs: Any):
        forward = self.session.current_forward
        if forward is None:  # a forward that did not pass through the session's top-level hook
            return self.base(module, query, key, value, attention_mask, **kwargs)
        if kwargs.get("s_aux") is not None:
            raise NotImplementedError("attention sinks (s_aux) are not supported by hookkit's attention sites")
        scaling = kwargs.pop("scaling", None)
        if scaling is None:
            scaling = query.shape[-1] ** -0.5
        call = AttnCall(self.layer, module, query, key, value, attention_mask, scaling, kwargs, forward, self.base)
        states = self.session.states
        if self.kernel is not None:
            return self.kernel.attention(call, states[self.kernel]), None

        bias = None
        for iv in self.bias_interventions:
            b = iv.score_bias(call, states[iv])
            if b is not None:
                bias = b if bias is None else bias + b

        requested: list[tuple[Intervention, torch.Tensor]] = []
        for iv in self.prob_interventions:
            rows = iv.prob_rows(call, states[iv])
            if rows is not None and bool(rows.any()):
                requested.append((iv, rows))

        if not requested:
            if bias is None:
                return self.base(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
            if self.eager_base:
                return self._eager(call, attention_mask, bias, [])
            return sdpa_attention(module, query, key, value, attention_mask, scaling=scaling,
                                  position_bias=_expand_heads(bias, query), **kwargs)

        wanted = requested[0][1] if len(requested) == 1 else torch.stack([r for _, r in requested]).any(0)
        rows = wanted.any(0).nonzero().flatten()  # query indices needed by at least one batch row
        if self.eager_base or rows.numel() == call.q_len:
            return self._eager(call, attention_mask, bias, requested)
        return self._sdpa_with_rows(call, attention_mask, bias, requested, rows)

    # ------------------------------------------------------------------ paths
    def _eager(self, call: AttnCall, attention_mask: torch.Tensor | None, bias: torch.Tensor | None,
               requested: list[tuple[Intervention, torch.Tensor]]):
        """One eager pass over every query row, mirroring ``eager_attention_forward`` operation by operation."""
        mask = call.base_bias() if not self.eager_base else attention_mask
        if bias is not None:
            mask = bias if mask is None else (mask + bias).clamp_min(torch.finfo(call.query.dtype).min)
        probs = attention_probs(call.module, call.query, call.key, mask, call.scaling, call.kwargs.get("softcap"))
        if requested:
            all_rows = torch.arange(call.q_len, device=call.query.device)
            probs = self._edit(call, probs, all_rows, requested)
        probs = probs.to(call.query.dtype)
        dropout = call.kwargs.get("dropout", 0.0)
        probs = F.dropout(probs, p=dropout, training=call.module.training)
        out = torch.matmul(probs, repeat_kv(call.value, call.n_rep))
        return out.transpose(1, 2).contiguous(), probs

    def _sdpa_with_rows(self, call: AttnCall, attention_mask: torch.Tensor | None, bias: torch.Tensor | None,
                        requested: list[tuple[Intervention, torch.Tensor]], rows: torch.Tensor):
        """sdpa for all rows, then an fp32 recomputation + edit of ``rows`` only (memory O(B·H·|rows|·K))."""
        kwargs = {k: v for k, v in call.kwargs.items() if k != "scaling"}
        pos_bias = None if bias is None else _expand_heads(bias, call.query)
        out, _ = sdpa_attention(call.module, call.query, call.key, call.value, attention_mask,
                                scaling=call.scaling, position_bias=pos_bias, **kwargs)
        mask = call.base_bias()[:, :, rows]
        if bias is not None:
            b = bias if bias.shape[2] == 1 else bias[:, :, rows]
            mask = (mask + b).clamp_min(torch.finfo(call.query.dtype).min)
        probs = attention_probs(call.module, call.query[:, :, rows], call.key, mask, call.scaling,
                                call.kwargs.get("softcap"))
        probs = self._edit(call, probs, rows, requested).to(call.query.dtype)
        sub = torch.matmul(probs, repeat_kv(call.value, call.n_rep))  # [B, H, R, D]
        out = out.clone()
        out[:, rows] = sub.transpose(1, 2)
        return out, None

    def _edit(self, call: AttnCall, probs: torch.Tensor, rows: torch.Tensor,
              requested: list[tuple[Intervention, torch.Tensor]]) -> torch.Tensor:
        states = self.session.states
        for iv, wanted in requested:
            probs = iv.edit_probs(call, states[iv], probs, rows, wanted[:, rows])
        return probs


def _expand_heads(bias: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """sdpa's GQA packing reshapes the bias per query head, so give it an explicit head dimension."""
    if bias.dim() != 4:
        raise ValueError(f"score_bias must be 4-D [B|1, H|1, Q|1, K], got shape {tuple(bias.shape)}")
    b, h, q, k = bias.shape
    return bias.expand(b if b > 1 else 1, query.shape[1], q, k).to(query.dtype)
