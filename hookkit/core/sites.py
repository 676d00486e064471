"""The named places where an intervention can read or change a model's computation."""

from __future__ import annotations

from enum import Enum


class Site(str, Enum):
    """Intervention sites, from the residual stream down to the attention kernel.

    * ``LAYER_INPUT`` — the hidden states entering a decoder layer, ``[B, S, hidden]`` (read and write).
    * ``ATTN_INPUT`` — the normalised hidden states entering self-attention, ``[B, S, hidden]`` (read only;
      MoH's learned routers read it).
    * ``HEAD_OUTPUT`` — the per-head attention output entering ``o_proj``, ``[B, S, heads, head_dim]`` (read and
      write). A forward pre-hook on ``o_proj``: independent of the attention backend, so it stays on sdpa/flash.
    * ``SCORE_BIAS`` — an additive pre-softmax bias per head, ``[B|1, heads|1, Q|1, K]``. Runs on sdpa with a
      float mask: a renormalised post-softmax reweighting equals a bias of ``log α`` (transformers-v5.md §3.4).
    * ``PROBS`` — a post-softmax probability edit. Only the query rows an intervention asks for are
      materialised (in fp32); every other row stays on the stock kernel.
    * ``ATTENTION`` — replace the attention computation of a layer altogether (LongHeads' chunk routing, MoH's
      head skipping). Exclusive: nothing else may touch the scores or probabilities of that layer.
    * ``LINEAR`` — the output of named linear sub-modules of a decoder layer (``self_attn.q_proj``,
      ``mlp.down_proj``...), read and write: ``out' = f(x, out)``. Adapters such as ALoRA add a side branch here
      without replacing modules; the intervention lists its targets in ``linear_targets()``.
    * ``LOGITS`` — the output of ``lm_head`` (read only; before any final logit soft-capping).
    """

    LAYER_INPUT = "layer_input"
    ATTN_INPUT = "attn_input"
    HEAD_OUTPUT = "head_output"
    SCORE_BIAS = "score_bias"
    PROBS = "probs"
    ATTENTION = "attention"
    LINEAR = "linear"
    LOGITS = "logits"


# Sites implemented inside the registered attention function (they need the text tower switched to it).
ATTENTION_LEVEL_SITES = frozenset({Site.SCORE_BIAS, Site.PROBS, Site.ATTENTION})
# Sites that only observe: several interventions may read them on the same layer without a conflict.
READ_ONLY_SITES = frozenset({Site.ATTN_INPUT, Site.LOGITS})
# Sites without a layer index.
MODEL_LEVEL_SITES = frozenset({Site.LOGITS})


def site_from_name(name: str | Site) -> Site:
    if isinstance(name, Site):
        return name
    try:
        return Site(name)
    except ValueError:
        raise ValueError(f"unknown site {name!r}; allowed: {[s.value for s in Site]}") from None
