"""LongHeads' chunk scores: what each kind of ``tail_selection`` / ``prefill_selection`` reads per chunk.

:mod:`hookkit.methods.longheads` keeps a handful of chunks per head; these functions say which, per score:

* ``"summary"`` (the official rule): :func:`chunk_summaries`, one vector per chunk and query head (§1.3 a of
  ../shared/reference/methods-llm.md), scored as ``q_raw · c_c``;
* ``"max_key"``: :func:`max_key_scores`, the chunk's largest un-rotated ``q·k``;
* ``"max_key_bound"``: :func:`update_key_bounds` keeps each chunk's elementwise key max and min, and
  :func:`bound_scores` turns them into an upper bound of the max-key score;
* ``"lexical"`` (the default): :func:`lexical_chunk_scores` and :class:`ChunkRanking`, which read only the prompt's
  token ids, so they are computed once per prompt and shared by every layer and head; a decoding step scores
  nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from hookkit.methods.rope_attention import apply_rope

#: Chunks whose max-key scores are computed together (bounds the transient memory of a scoring step).
MAX_KEY_GROUP = 8
#: Queries whose max-key scores are computed together (each is rotated to the w local offsets first).
MAX_KEY_QUERIES = 8


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
            order = sorted(range(c - 2), key=lambda j: (score[j], j))  # the order of :meth:`best`
            rank = torch.empty(c - 2)
            rank[order] = torch.arange(c - 2, dtype=rank.dtype)
            self._cached = (c, device, rank.to(device))
        return self._cached[2]

    def best(self, last: int, k: int) -> list[int]:
        """The (up to) ``k`` best-ranked of prompt chunks 1..``last`` that share a question id, in ascending rank
        (the best last), ordered as :meth:`rank` orders them."""
        ranked = sorted((j for j in range(1, min(len(self.scores), last + 1)) if self.scores[j] > 0),
                        key=lambda j: (self.scores[j], j))
        return ranked[-k:] if k > 0 else []

    def best_run(self, last: int, k: int) -> range:
        """The best of :meth:`best` (``last``, ``k``) with those of them adjacent to it: one passage that straddles
        a chunk boundary stays whole. Empty when no chunk shares a question id."""
        ranked = self.best(last, k)
        if not ranked:
            return range(0)
        lo = hi = ranked[-1]
        while lo - 1 in ranked:
            lo -= 1
        while hi + 1 in ranked:
            hi += 1
        return range(lo, hi + 1)


def grow(buffer: torch.Tensor, need: int, extra: int, fill: float | None = None) -> torch.Tensor:
    """``buffer [A, cap, D]`` with room for ``need`` entries along dim 1 (geometric growth keeps appends amortised
    O(1)); new slots hold ``fill`` (or are uninitialised)."""
    cap = buffer.shape[1]
    if need <= cap:
        return buffer
    new_cap = max(need + extra, 2 * cap)
    grown = buffer.new_empty(buffer.shape[0], new_cap, buffer.shape[2])
    if fill is not None:
        grown[:, cap:].fill_(fill)
    grown[:, :cap] = buffer
    return grown


def chunk_summaries(q_loc: torch.Tensor, k_loc: torch.Tensor, value: torch.Tensor, scaling: float,
                    out_dtype: torch.dtype, w: int, batch_chunks: int = 64) -> torch.Tensor:
    """Chunk representations c_c (methods-llm.md §1.3 a) of complete chunks, ``[H, G, D]``.

    ``q_loc [H, G*w, D]``, ``k_loc``/``value`` ``[Hkv, G*w, D]``, all locally rotated (position j mod w). Summaries
    are per query head (GQA choice A): a query head uses the keys/values of its KV head.
    """
    H, n, D = q_loc.shape
    Hkv = k_loc.shape[0]
    G, rep = n // w, H // Hkv
    outs = []
    for g0 in range(0, G, batch_chunks):
        g1 = min(G, g0 + batch_chunks)
        sl = slice(g0 * w, g1 * w)
        q = q_loc[:, sl].reshape(H, g1 - g0, w, D).transpose(0, 1)  # [g, H, w, D]
        k = k_loc[:, sl].reshape(Hkv, g1 - g0, w, D).transpose(0, 1)
        v = value[:, sl].reshape(Hkv, g1 - g0, w, D).transpose(0, 1)
        k = k.repeat_interleave(rep, dim=1) if rep > 1 else k
        v = v.repeat_interleave(rep, dim=1) if rep > 1 else v
        # Bidirectional in-chunk attention (official: FlashSelfAttention(causal=False)); 4-D SDPA.
        o = F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous(), scale=scaling)
        s = o.to(out_dtype).mean(dim=2, keepdim=True)  # summary query s_c [g, H, 1, D]
        kf = k.to(out_dtype)
        c = F.scaled_dot_product_attention(s, kf, kf, scale=scaling)  # attention-weighted keys
        outs.append(c[:, :, 0])
    return torch.cat(outs, dim=0).transpose(0, 1)  # [H, G, D]


def max_key_scores(q_raw: torch.Tensor, rope_local: tuple[torch.Tensor, torch.Tensor], num_kv: int, chunks: int,
                   local_keys: Callable[[int, int], torch.Tensor]) -> torch.Tensor:
    """``[H, Qb, chunks−2]``: for chunks 1..chunks−2, the largest ``q_raw · k_raw`` over the chunk's keys.

    ``q_raw [H, Qb, D]``; ``rope_local``: cos/sin ``[w, D]`` of positions 0..w−1; ``local_keys(lo, hi)``: the
    locally rotated keys ``R(m)·k_raw`` of chunks lo..hi−1, ``[num_kv, hi−lo, w, D]``.

    Why: the summary score compares a raw query with a summary of *locally rotated* keys; on SmolLM2 about
    a fifth of the heads then miss the chunk that holds the needle for the answering token, and passkey
    retrieval fails even inside the trained length (docs/methods/longheads.md, "Chunk scores"). The
    position-free raw product, maximised over the chunk, is what a key would score if RoPE were off, so a
    chunk is kept when *any* of its tokens matches the query. Raw keys are never stored: ``q_raw·k_raw_j ==
    (R(j mod w)·q_raw)·k_loc_j``, so the query is rotated to each of the w local offsets. Cost O(tokens · D) per
    query and head.
    """
    H, Qb, D = q_raw.shape
    r = H // num_kv
    acc = torch.promote_types(q_raw.dtype, torch.float32)
    cos, sin = (x.to(acc) for x in rope_local)  # [w, D]
    w = cos.shape[0]
    q_all = q_raw.to(acc).reshape(num_kv, r, Qb, D)
    scores = q_all.new_empty(num_kv, r, Qb, chunks - 2)
    # A few queries and chunks at a time: the w rotated copies of the queries, the derived keys and the
    # [queries x w] logits of one group stay small, so scoring adds no buffer of size queries x w or
    # context to the peak memory (the maximum is per query and chunk, so grouping is exact).
    for q0 in range(0, Qb, MAX_KEY_QUERIES):
        q1 = min(q0 + MAX_KEY_QUERIES, Qb)
        q_rot = apply_rope(q_all[:, :, q0:q1, None], cos, sin)  # [Hkv, r, Qg, w, D]: R(m)·q, m = 0..w-1
        q_rot = q_rot.reshape(num_kv, r * (q1 - q0), w, D)
        for lo in range(1, chunks - 1, MAX_KEY_GROUP):
            hi = min(lo + MAX_KEY_GROUP, chunks - 1)
            keys = local_keys(lo, hi).to(acc)
            logits = torch.einsum("gqmd,gcmd->gqcm", q_rot, keys)  # [Hkv, r*Qg, hi-lo, w]
            scores[:, :, q0:q1, lo - 1:hi - 1] = logits.amax(dim=-1).view(num_kv, r, q1 - q0, hi - lo)
    return scores.view(H, Qb, chunks - 2)


def update_key_bounds(kmax: torch.Tensor, kmin: torch.Tensor, k_raw: torch.Tensor, start: int,
                      w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold raw keys ``k_raw [n, Hkv, D]`` at positions ``start..`` into their chunks' elementwise max and min
    (``kmax``/``kmin [Hkv, cap_chunks, D]``; running values for the chunk still being filled). Returns the two
    buffers, grown when the keys reach a new chunk."""
    n = k_raw.shape[0]
    first, last = start // w, (start + n - 1) // w
    if last + 1 > kmax.shape[1]:
        kmax = grow(kmax, last + 1, 4, fill=float("-inf"))
        kmin = grow(kmin, last + 1, 4, fill=float("inf"))
    keys = k_raw.transpose(0, 1)  # [Hkv, n, D]
    chunk_of = (torch.arange(start, start + n, device=keys.device) // w - first)  # [n], chunks first..last
    index = chunk_of.view(1, n, 1).expand_as(keys)
    span = last + 1 - first
    kmax[:, first:last + 1] = kmax[:, first:last + 1].scatter_reduce(
        1, index, keys.to(kmax.dtype), "amax", include_self=True)[:, :span]
    kmin[:, first:last + 1] = kmin[:, first:last + 1].scatter_reduce(
        1, index, keys.to(kmin.dtype), "amin", include_self=True)[:, :span]
    return kmax, kmin


def bound_scores(q_raw: torch.Tensor, kmax: torch.Tensor, kmin: torch.Tensor) -> torch.Tensor:
    """``[H, Qb, C]``: per chunk, ``Σ_d max(q_d·kmax_d, q_d·kmin_d)`` over its per-dimension key max and min
    (``[Hkv, C, D]``): an upper bound of the max-key score ``max_j q·k_j`` (Quest's page criticality, Tang et al.
    2024, here on raw keys). Two vectors per chunk are read instead of its w keys, so a decoding step scores the
    whole context in O(chunks · D) per head, and the bounds cost 2/w of the keys' memory.
    """
    H, Qb, D = q_raw.shape
    num_kv = kmax.shape[0]
    acc = torch.promote_types(q_raw.dtype, torch.float32)
    q = q_raw.to(acc).reshape(num_kv, (H // num_kv) * Qb, D)
    kmax, kmin = kmax.to(acc), kmin.to(acc)
    scores = (torch.matmul(q.clamp_min(0), kmax.transpose(1, 2))
              + torch.matmul(q.clamp_max(0), kmin.transpose(1, 2)))
    return scores.view(H, Qb, kmax.shape[1])
