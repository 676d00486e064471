"""Diagnostic LongHeads variant (bench only): the lexically retrieved chunks read in a short context.

The lexical ranking (``tail_selection="lexical"``) is fixed by the prompt's token ids before the prompt is read. With
the defaults every prompt token past B reads chunk 0 and a sliding window of K−1 chunks, so the needle's keys and
values are computed after up to 3,840 tokens of surrounding text. The ``stock-cut-chunks`` oracle of
``bench/longcontext.py`` reads the needle's chunk right after chunk 0 and answers pydoc 16k trials that the defaults
miss with the same chunks in view (docs/benchmarks.md, sixteenth pass). Here the tokens of the chunks that will fill
the answer's scored slots read chunk 0 and only the ``reread_before`` chunks before their own (``0``: their own
chunk only), so the retrieved text is encoded as in the oracle. Past B chunk 0 sits right before them (the
re-indexed layout); before B (rows read as the stock model) the same keys are read at their true positions. A
prompt that fits in the trained length runs as the stock model, unchanged. Used by ``bench/longcontext.py niah
--methods longheads-lexical-reread``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hookkit.core.intervention import AttnCall, SampleInfo
from hookkit.methods.longheads import LongHeads, LongHeadsState


@dataclass(eq=False)
class ReReadLongHeads(LongHeads):
    """LongHeads whose top-ranked lexical chunks are read after chunk 0 and ``reread_before`` chunks only."""

    reread_before: int = field(default=0, metadata={"help": "chunks before a retrieved chunk that its tokens read"})
    _reread: frozenset[int] = frozenset()

    def new_state(self, sample: SampleInfo) -> LongHeadsState:
        state = super().new_state(sample)
        if state.lexical is None or len(state.lexical) != 1:
            raise NotImplementedError("longheads-lexical-reread: one row with tail_selection='lexical' only")
        if state.stock_until[0] > state.cfg.stock_until:  # the prompt fits: the stock model, nothing re-read
            self._reread = frozenset()
            return state
        # The answer's scored slots: the best-ranked of chunks 1 .. c-2-tail_recent, c the chunk of the first answer
        # token (the ones after them are the local window and the previous chunk, read in their own context anyway).
        slots = state.cfg.K - 3 - state.cfg.tail_recent
        scores = state.lexical[0].scores
        last = (sample.prompt_length - state.n_pad[0]) // state.cfg.w - 2 - state.cfg.tail_recent
        ranked = sorted((j for j in range(1, min(len(scores), last + 1)) if scores[j] > 0),
                        key=lambda j: (scores[j], j))
        self._reread = frozenset(ranked[-slots:]) if slots else frozenset()
        return state

    def _window_start(self, state: LongHeadsState, c: int) -> int:
        if c in self._reread:
            return max(1, c - self.reread_before)
        return super()._window_start(state, c)

    def _stock_rows(self, call: AttnCall, b: int, i0: int, n_pad: int, first_pos: int, n: int) -> torch.Tensor:
        out = super()._stock_rows(call, b, i0, n_pad, first_pos, n)
        w = self.chunk_size
        for c in sorted(self._reread):
            lo, hi = max(first_pos, c * w), min(first_pos + n, (c + 1) * w)
            if lo >= hi:
                continue
            start = max(1, c - self.reread_before) * w  # first key of the re-read window (after chunk 0)
            q = call.query[b:b + 1, :, i0 + lo - first_pos:i0 + hi - first_pos]
            k = torch.cat([call.key[b:b + 1, :, n_pad:n_pad + w], call.key[b:b + 1, :, n_pad + start:n_pad + hi]], 2)
            v = torch.cat([call.value[b:b + 1, :, n_pad:n_pad + w],
                           call.value[b:b + 1, :, n_pad + start:n_pad + hi]], 2)
            kpos = torch.cat([torch.arange(w), torch.arange(start, hi)]).to(q.device)
            qpos = torch.arange(lo, hi, device=q.device)
            out[lo - first_pos:hi - first_pos] = call.sdpa(q, k, v, (kpos[None] <= qpos[:, None])[None, None])[0]
        return out
