"""Diagnostic LongHeads variant (bench only): the prompt's last K−1 chunks read as one truncated prompt.

With ``prefill_selection="recent"`` every prompt token past B attends to chunk 0 and its own last K−1 chunks (a
sliding window), so over the layers the recent tokens' hidden states carry the whole middle of the document. At 12k
that loses trials that truncation (``bench/longcontext.py`` ``stock-cut``: the first 256 and the last 3,840 tokens as
one short prompt) wins (docs/benchmarks.md, sixth pass). Here the window of every prompt token in the forward's last
K−1 chunks is *anchored* at the start of that span: such a token attends to chunk 0, placed right before the span,
and to the span up to itself, as in ``stock-cut``. Tokens before the span keep their sliding windows (their keys are
what the answer's scored slots retrieve). Used by ``bench/longcontext.py niah --methods longheads-anchored[-recent]``.
"""

from __future__ import annotations

from typing import Any

import torch

from hookkit.methods.longheads import LongHeads


class AnchoredLongHeads(LongHeads):
    """LongHeads whose prompt's last K−1 chunks attend as one truncated prompt (chunk 0 + the span, causal)."""

    _anchor: int = 1 << 62  # first chunk of the anchored span of the current prompt (none before a prompt)

    def _row_attention(self, call: Any, state: Any, row: Any, b: int, q_raw: torch.Tensor, first_pos: int,
                       n_new: int, i0: int) -> torch.Tensor:
        # The anchored span: the prompt's last K-1 chunks (the chunk holding the last prompt token and the K-2
        # before it). Decoding (one query per forward) never reads a "recent" window.
        if n_new > 1:
            self._anchor = max(1, (first_pos + n_new - 1) // state.cfg.w - (state.cfg.K - 2))
        return super()._row_attention(call, state, row, b, q_raw, first_pos, n_new, i0)

    def _window_start(self, state: Any, row: Any, c: int) -> int:
        # Inside the span the window starts at the span's first chunk (at most K-2 chunks back, as the library's)
        return self._anchor if c >= self._anchor else super()._window_start(state, row, c)
