"""Lexical chunk ranking: which prompt chunks share the question's rare token ids.

LongHeads' ``tail_selection="lexical"`` fills the answering tokens' scored slots with these chunks (see
:mod:`hookkit.methods.longheads`). The ranking reads only the prompt's token ids, so it is computed once per prompt
and shared by every layer and head; a decoding step scores nothing.
"""

from __future__ import annotations

import math

import torch


def lexical_chunk_scores(ids: list[int], w: int, query_tokens: int) -> list[float]:
    """Per complete chunk of ``ids`` (w tokens each): Σ idf(t) over the distinct token ids t of the last
    ``query_tokens`` ids that occur in the chunk (BM25 with binary term counts, Robertson and Zaragoza 2009).

    idf(t) = ln(1 + (N − df(t) + 0.5) / (df(t) + 0.5)), with df(t) the number of the N complete chunks holding t:
    positive for every token, near 0 for a token in every chunk (template words, "the"), largest for a token in one
    chunk. Chunks are compared with the prompt's own chunks only, so no corpus statistics are needed.
    """
    n_chunks = len(ids) // w
    query = set(ids[-query_tokens:]) if query_tokens > 0 else set()
    shared = [set(ids[c * w:(c + 1) * w]) & query for c in range(n_chunks)]
    df = {t: sum(t in chunk for chunk in shared) for t in query}
    idf = {t: math.log(1.0 + (n_chunks - df[t] + 0.5) / (df[t] + 0.5)) for t in query}
    return [sum(idf[t] for t in sorted(chunk)) for chunk in shared]


class ChunkRanking:
    """One prompt's chunk scores (:func:`lexical_chunk_scores`) and their rank, shared by every layer of its row.

    ``rank(c, device)`` is cached per chunk count and device: the layers of one forward ask for the same c, and a
    decoding step then copies nothing to the device.
    """

    def __init__(self, scores: list[float]) -> None:
        self.scores = scores
        self._cached: tuple[int, torch.device, torch.Tensor] | None = None

    def rank(self, c: int, device: torch.device) -> torch.Tensor:
        """``[c−2]`` float ranks of chunks 1..c−2 (higher = kept first), ties going to the newer chunk: chunks that
        share no question id, and chunks completed while decoding (they hold no prompt token), score 0."""
        if self._cached is None or self._cached[:2] != (c, device):
            score = [self.scores[j] if j < len(self.scores) else 0.0 for j in range(1, c - 1)]
            order = sorted(range(c - 2), key=lambda j: (score[j], j))
            rank = torch.empty(c - 2)
            rank[order] = torch.arange(c - 2, dtype=rank.dtype)
            self._cached = (c, device, rank.to(device))
        return self._cached[2]
