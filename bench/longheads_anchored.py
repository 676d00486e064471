"""Diagnostic LongHeads variant (bench only): the prompt's last K−1 chunks read as one truncated prompt.

With ``prefill_selection="recent"`` every prompt token past B attends to chunk 0 and its own last K−1 chunks (a
sliding window), so over the layers the recent tokens' hidden states carry the whole middle of the document. At 12k
that loses trials that truncation (``bench/longcontext.py`` ``stock-cut``: the first 256 and the last 3,840 tokens as
one short prompt) wins, even with the same keys for the answer (docs/benchmarks.md, sixth pass). Here the window of
every prompt token in the forward's last K−1 chunks is *anchored* at the start of that span: such a token attends to
chunk 0, placed right before the span, and to the span up to itself, as in ``stock-cut``. Tokens before the span keep
their sliding windows (their keys are what the answer's scored slots retrieve). Used by ``bench/longcontext.py niah
--methods longheads-anchored[-recent]``.
"""

from __future__ import annotations

from typing import Any

import torch

from hookkit.methods.longheads import LongHeads
from hookkit.methods.rope_attention import apply_rope, merge_by_lse, sdpa_with_lse


class AnchoredLongHeads(LongHeads):
    """LongHeads whose prompt's last K−1 chunks attend as one truncated prompt (chunk 0 + the span, causal)."""

    def _row_attention(self, call: Any, state: Any, row: Any, b: int, q_raw: torch.Tensor, first_pos: int,
                       n_new: int, i0: int) -> torch.Tensor:
        # The first chunk of the anchored span: the prompt's last K-1 chunks (the chunk holding the last prompt token
        # and the K-2 before it). Decoding (one query per forward) never reaches _attend_recent.
        if n_new > 1:
            last_chunk = (first_pos + n_new - 1) // state.cfg.w
            self._anchor = max(1, last_chunk - (state.cfg.K - 2))
        return super()._row_attention(call, state, row, b, q_raw, first_pos, n_new, i0)

    def _attend_recent(self, state: Any, row: Any, q_loc: torch.Tensor, c: int, offs: torch.Tensor,
                       key_b: torch.Tensor, value_flat: torch.Tensor, total: int, n_pad: int, scaling: float,
                       exclude_self: bool) -> torch.Tensor:
        K, w = state.cfg.K, state.cfg.w
        first = max(c - K + 2, 1)  # the sliding window's first chunk
        if c >= self._anchor:
            first = self._anchor
        if first == c - K + 2:  # not in the anchored span: the library's own path
            return super()._attend_recent(state, row, q_loc, c, offs, key_b, value_flat, total, n_pad, scaling,
                                          exclude_self)
        H, Qb, D = q_loc.shape
        Hkv, dev = state.cfg.num_kv, q_loc.device
        r = H // Hkv
        acc = torch.promote_types(q_loc.dtype, torch.float32)
        # window at its true distances (query at its true angle); chunk 0 right before the window's first chunk
        cos, sin = state.rope_at(torch.tensor([c * w, (c - first + 1) * w], device=dev) + row.pos0)
        q = q_loc.to(acc)
        q_win, q_sink = (apply_rope(q, cos[i].to(acc), sin[i].to(acc)).to(q_loc.dtype).reshape(Hkv, 1, r * Qb, D)
                         for i in (0, 1))
        lo, hi = n_pad + first * w, n_pad + c * w + int(offs[-1]) + 1
        values = value_flat.view(Hkv, total, D)
        kpos = torch.arange(hi - lo, device=dev) - (c - first) * w  # key offset from chunk c's start
        allowed = (kpos[None] < offs[:, None]) if exclude_self else (kpos[None] <= offs[:, None])
        mask = torch.zeros(Qb, hi - lo, dtype=q_loc.dtype, device=dev).masked_fill(~allowed,
                                                                                   torch.finfo(q_loc.dtype).min)
        out_w, lse_w = sdpa_with_lse(q_win, key_b[:, lo:hi][:, None], values[:, lo:hi][:, None],
                                     mask.repeat(r, 1)[None, None], scaling)
        out_s, lse_s = sdpa_with_lse(q_sink, key_b[:, n_pad:n_pad + w][:, None],
                                     values[:, n_pad:n_pad + w][:, None], None, scaling)
        out = merge_by_lse(torch.stack([out_s, out_w]), torch.stack([lse_s, lse_w]), dim=0)
        return out.to(q_loc.dtype).view(H, Qb, D).transpose(0, 1)
