"""RoPE rotations and a fused attention call that also returns the log-sum-exp, as LongHeads uses them.

LongHeads re-indexes positions by rotating queries and keys itself (Llama's convention, checked against the model
at attach by :func:`check_rotation`) and computes attention in parts (selected chunks, a window, the sink) that it
merges exactly by their log-sum-exps, as flash attention merges key blocks (:func:`sdpa_with_lse`).
"""

from __future__ import annotations

from typing import Any

import torch

from hookkit import compat
from hookkit.errors import UnsupportedModelError
from hookkit.models.base import ModelInfo


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """HF's RoPE pairing (dims i and i + D/2), as in ``modeling_llama.rotate_half``."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``R(p)·x`` for broadcastable ``cos``/``sin`` of the angles ``p·θ``."""
    return x * cos + rotate_half(x) * sin


def rotation_matrices(cos: torch.Tensor, sin: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[D, K*D]``: the matrices of the rotations with ``cos``/``sin`` ``[K, D]`` (HF layout cat(c, c) / cat(s, s))
    side by side, so that ``x @ M_d == R_d·x``: K rotated variants of x in one matmul."""
    K, D = cos.shape
    half = D // 2
    wide = torch.promote_types(dtype, torch.float32)
    # rotate_half(x) == x @ P with P[i + D/2, i] = -1 and P[i, i + D/2] = 1 (modeling_llama.rotate_half)
    P = torch.zeros(D, D, dtype=wide, device=cos.device)
    idx = torch.arange(half, device=cos.device)
    P[idx + half, idx] = -1.0
    P[idx, idx + half] = 1.0
    mats = torch.diag_embed(cos.to(wide)) + P[None] * sin.to(wide)[:, None, :]  # [K, D, D]
    return mats.permute(1, 0, 2).reshape(D, K * D).to(dtype).contiguous()


def sdpa_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                  scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention output and log-sum-exp of the scaled scores, ``([B, H, Q, D], [B, H, Q])``, 4-D inputs.

    On CPU this is torch's fused flash kernel (the one SDPA dispatches to), which also returns the log-sum-exp;
    elsewhere an explicit fp32 computation (small blocks only reach it).
    """
    if q.device.type == "cpu" and q.dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        # The kernel reads its inputs through their strides: a slice of the cache goes in without a copy.
        q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, False, attn_mask=mask, scale=scale)
        return out, lse
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if mask is not None:
        s = s + mask.float()
    lse = torch.logsumexp(s, dim=-1)
    out = torch.matmul(torch.softmax(s, dim=-1), v.float()).to(q.dtype)
    return out, lse


def merge_by_lse(outs: torch.Tensor, lse: torch.Tensor, dim: int) -> torch.Tensor:
    """Attention over the union of disjoint key sets from the parts' outputs ``outs`` and log-sum-exps ``lse``
    (stacked along ``dim``; ``outs`` has one more trailing dim): each part weighs by its share of the softmax."""
    acc = torch.promote_types(outs.dtype, torch.float32)
    weights = torch.softmax(lse.to(acc), dim=dim)
    return (weights.unsqueeze(-1) * outs.to(acc)).sum(dim=dim)


def check_rotation(model: ModelInfo, rotary: Any, attention: Any) -> None:
    """Refuse rotary conventions LongHeads' own rotation does not reproduce (it rotates every dim, pairing i with
    i + D/2 as Llama's ``rotate_half``): partial rotary (StableLm, Phi), interleaved pairs (Cohere), or anything the
    modeling file's ``apply_rotary_pos_emb`` does differently on a probe."""
    name = type(model.model).__name__
    D = model.head_dim
    probe = torch.randn(1, 1, 5, D, generator=torch.Generator().manual_seed(0))
    positions = torch.tensor([[0, 1, 7, 100, 1000]])
    with torch.no_grad():
        cos, sin = rotary(probe, positions)
    if cos.shape[-1] != D:
        raise UnsupportedModelError(
            f"longheads rotates whole heads, but {name} applies RoPE to {cos.shape[-1]} of {D} dims per head "
            "(partial rotary); not supported")
    apply = compat.modeling_function(attention, "apply_rotary_pos_emb")
    if apply is None:
        raise UnsupportedModelError(f"longheads cannot check the rotary convention of {name}: its modeling file "
                                    "has no apply_rotary_pos_emb")
    with torch.no_grad():
        theirs = apply(probe, probe, cos, sin)[0].float()
        ours = apply_rope(probe, cos[:, None].float(), sin[:, None].float())
    if not torch.allclose(theirs, ours, atol=1e-5, rtol=1e-4):
        raise UnsupportedModelError(
            f"longheads re-applies RoPE with Llama's pairing (dims i and i + D/2), but {name} rotates differently "
            f"(max difference {float((theirs - ours).abs().max()):.2g} on a probe; e.g. interleaved pairs); "
            "not supported")
