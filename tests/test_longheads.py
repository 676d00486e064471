"""LongHeads: exactness below B, equality with a per-token reference, crossing B, batches, errors.

The reference below (``RefLongHeads``) is written independently of ``hookkit.methods.longheads``: it caches the
raw q/k/v of every token, recomputes every chunk summary from scratch for every query, loops over queries one at
a time, and applies RoPE explicitly at the re-indexed positions 0..n-1 (methods-llm.md §1.4). Tiny models use a
small ``chunk_size`` and ``atten_length`` so that selection really happens at short lengths; they run in float64
so that near-ties cannot flip a top-k.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from conftest import load_tiny

import hookkit
from hookkit.core.intervention import Binding, Intervention
from hookkit.core.regions import Region
from hookkit.core.sites import Site
from hookkit.errors import ConfigError, UnsupportedModelError
from hookkit.methods.chunk_scores import (
    ChunkRanking,
    bound_scores,
    lexical_chunk_scores,
    max_key_scores,
    update_key_bounds,
)
from hookkit.methods.longheads import LongHeads

W, ATT = 4, 24
# Every prompt here fits in the tiny models' trained length (1024): the tests of selection set fit_margin=0 (the
# official code's rule: select from max(B, atten_length) on), the fit itself is tested on a model told it was
# trained to 64 positions.
# fp64 models, but RoPE tables are fp32 in transformers (and in LongHeads): the reference uses fp64 angles.
TOL = 1e-5  # chunk size 4, K = 6 chunks per head: 3 chosen by score
_MODELS: dict[tuple[str, str], Any] = {}


def tiny(name: str = "tiny-llama", dtype: str = "float64"):
    """A private copy of a tiny model in float64 (the shared fp32 copies stay untouched)."""
    key = (name, dtype)
    if key not in _MODELS:
        model, tok = hookkit.load(name, dtype="float32")
        if dtype == "float64":
            model = model.double()
        _MODELS[key] = (model, tok, hookkit.get_model_info(model))
    return _MODELS[key]


def rope(x: torch.Tensor, pos: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Explicit RoPE of x [n, D] at positions pos [n] (HF rotate-half convention)."""
    ang = pos.to(torch.float64)[:, None] * inv_freq.to(torch.float64)[None]
    cos, sin = torch.cat([ang, ang], -1).cos().to(x.dtype), torch.cat([ang, ang], -1).sin().to(x.dtype)
    x1, x2 = x.chunk(2, -1)
    return x * cos + torch.cat([-x2, x1], -1) * sin


@dataclass(eq=False)
class RefLongHeads(Intervention):
    """Per-token LongHeads, straight from the pseudo-code (not registered)."""

    name = "ref_longheads"
    chunk_size: int = W
    atten_length: int = ATT
    begin_selective: int = ATT
    gqa_selection: str = "query_head"
    include_self: bool = True
    prefill_selection: str = "token"  # the reference's own defaults are the official code's
    tail_selection: str = "summary"
    exact_tail: int = 32
    tail_recent: int | None = None  # None: round(0.6 * (K - 3)), the documented default
    score_rope: str = "none"
    isolate_retrieved: bool = False

    def bind(self, model):
        self.H, self.Hkv, self.D = model.num_heads, model.num_kv_heads, model.head_dim
        self.inv_freq = model.text_model.rotary_emb.inv_freq
        self.split = model.split_query_key  # q_proj/k_proj outputs, or Phi-3's fused qkv_proj
        layers = frozenset(range(model.num_layers))
        return Binding({Site.LINEAR: layers, Site.ATTENTION: layers},
                       linear_targets=tuple(model.query_key_targets()))

    def new_state(self, sample):
        n_pad = (sample.regions == int(Region.PADDING)).sum(1).tolist()
        self._memo = {}
        self._ids = [sample.input_ids[b, n:].tolist() for b, n in enumerate(n_pad)]  # each row's prompt ids
        self.isolated = [self.retrieved(b) if self.isolate_retrieved else set() for b in range(len(n_pad))]
        return {"pending": {}, "cache": {}, "n_pad": n_pad, "trace": []}

    def lexical(self, row: int, cand: int) -> float:
        """tail_selection="lexical": Σ idf over the question's distinct ids in chunk ``cand`` (0 past the prompt)."""
        import math

        ids, w = self._ids[row], self.chunk_size
        n = len(ids) // w
        if cand >= n:
            return 0.0
        question = set(ids[len(ids) - self.exact_tail:])
        score = 0.0
        for t in sorted(question):
            if t in ids[cand * w:(cand + 1) * w]:
                df = sum(t in ids[j * w:(j + 1) * w] for j in range(n))
                score += math.log(1 + (n - df + 0.5) / (df + 0.5))
        return score

    def retrieved(self, row: int) -> set[int]:
        """isolate_retrieved: the best of the first answer token's scored slots (score > 0, ties to the newer) and
        the slot chunks adjacent to it."""
        w, K = self.chunk_size, self.atten_length // self.chunk_size
        recent = round(0.6 * (K - 3)) if self.tail_recent is None else self.tail_recent
        c = len(self._ids[row]) // w  # the first answer token's chunk
        scored = [(self.lexical(row, j), j) for j in range(1, c - 1 - recent)]
        slots = [j for s, j in sorted(scored)[-(K - 3 - recent):] if s > 0]
        if not slots:
            return set()
        run = {slots[-1]}
        for step in (-1, 1):
            j = slots[-1] + step
            while j in slots:
                run.add(j)
                j += step
        return run

    def linear_output(self, ctx, state, target, inputs, output):
        state["pending"].setdefault(ctx.layer, {})[target] = output

    def summary(self, q, k, v, c, h, scale):
        """c_c for query head h from raw q [L,H,D], k/v [L,Hkv,D] (methods-llm.md §1.3 a)."""
        w = self.chunk_size
        sl = slice(c * w, (c + 1) * w)
        loc = torch.arange(w)
        g = h // (self.H // self.Hkv)
        qt, kt, vt = rope(q[sl, h], loc, self.inv_freq), rope(k[sl, g], loc, self.inv_freq), v[sl, g]
        o = torch.softmax(qt @ kt.T * scale, -1) @ vt
        s = o.mean(0)
        return torch.softmax(kt @ s * scale, 0) @ kt

    def attention(self, call, state):
        B, Q = call.query.shape[0], call.q_len
        past, w, K = call.forward.past_length, self.chunk_size, self.atten_length // self.chunk_size
        q_flat, k_flat = self.split(state["pending"].pop(call.layer))
        q_all = q_flat.reshape(B, Q, self.H, self.D)
        k_all = k_flat.reshape(B, Q, self.Hkv, self.D)
        out = torch.zeros(B, Q, self.H, self.D, dtype=call.query.dtype)
        rep = self.H // self.Hkv
        for b in range(B):
            n_pad = state["n_pad"][b]
            cache = state["cache"].setdefault((call.layer, b), {"q": [], "k": [], "v": []})
            for i in range(Q):
                if past + i < n_pad:
                    continue
                cache["q"].append(q_all[b, i])
                cache["k"].append(k_all[b, i])
                cache["v"].append(call.value[b, :, past + i])
                q, k, v = (torch.stack(cache[x]) for x in ("q", "k", "v"))
                t = q.shape[0] - 1
                for h in range(self.H):
                    g = h // rep
                    if t < max(self.begin_selective, self.atten_length):
                        # isolate_retrieved: chunk 0 and the isolated run up to t, at true positions
                        run = self.isolated[b]
                        idx = (torch.cat([torch.arange(w), torch.arange(min(run) * w, t + 1)])
                               if t // w in run else torch.arange(t + 1))
                        keys = rope(k[idx, g], idx, self.inv_freq)
                        qq = rope(q[t, h][None], torch.tensor([t]), self.inv_freq)[0]
                        vals = v[idx, g]
                    else:
                        c = t // w
                        self._where = (call.layer, b)
                        n_real = Q - n_pad  # prompt tokens of this row (prefill: past == 0)
                        tail_from = n_real - self.exact_tail
                        if past > 0 or t >= tail_from:  # the exact tail, and every decoding step
                            recent = round(0.6 * (K - 3)) if self.tail_recent is None else self.tail_recent
                            sel = self.select(q, k, v, t, h, call.scaling, self.tail_selection, recent=recent)
                        elif self.prefill_selection == "recent" and c in self.isolated[b]:
                            sel = [0, *range(min(self.isolated[b]), c + 1)]  # chunk 0 right before the run
                        elif self.prefill_selection == "recent":  # chunk 0 and the last K-1 chunks, c's own included
                            sel = sorted({0, *range(c - K + 2, c + 1)})
                        elif self.prefill_selection == "block":
                            # The block of t: its chunk, from the first selective position to the tail.
                            first = max(c * w, max(self.begin_selective, self.atten_length))
                            block = range(first, min((c + 1) * w, tail_from))
                            q_block = torch.stack([q_all[b, n_pad + tt] for tt in block]).mean(0)  # [H, D]
                            sel = self.select(q, k, v, t, h, call.scaling, "summary", q_block)
                        else:
                            sel = self.select(q, k, v, t, h, call.scaling, "summary")
                        state["trace"].append((call.layer, b, t, h, sel))
                        idx = []
                        for s in sel:
                            end = (s + 1) * w if s < c else (t + 1 if (self.include_self or past > 0) else t)
                            idx.extend(range(s * w, end))
                        idx = torch.tensor(idx)
                        keys = rope(k[idx, g], torch.arange(len(idx)), self.inv_freq)
                        qpos = (len(sel) - 1) * w + (t - c * w)  # own slot in the last chunk (one past the keys if
                        qq = rope(q[t, h][None], torch.tensor([qpos]), self.inv_freq)[0]  # self is excluded)
                        vals = v[idx, g]
                    p = torch.softmax(keys @ qq * call.scaling, 0)
                    out[b, i, h] = p @ vals
        return out

    def select(self, q, k, v, t, h, scale, score, q_block=None, recent=0):
        """Chunks for query t, head h. score "summary": q·c_c (q = the block mean if given); "max_key": the
        chunk's largest raw (un-rotated) q·k over its keys. ``recent``: chunks c-1-recent .. c-2 always kept."""
        w, K = self.chunk_size, self.atten_length // self.chunk_size
        c = t // w
        heads = [h] if self.gqa_selection == "query_head" else \
            list(range((h // (self.H // self.Hkv)) * (self.H // self.Hkv), (h // (self.H // self.Hkv) + 1) * (self.H // self.Hkv)))
        memo = self._memo  # a complete chunk's summary never changes: memoise per (layer, row, chunk, head)
        scores = []
        # score_rope="window_mean": the query rotated to every distance 0..K·w-1 of the re-indexed layout
        dist = torch.arange(K * w if self.score_rope == "window_mean" else 1)
        for cand in range(1, c - 1):
            total = 0.0
            for hh in heads:
                if score == "lexical":  # the same for every head: count it once
                    total = self.lexical(self._where[1], cand)
                    break
                if score == "max_key":  # per key: its logit averaged over the distances, then the chunk's max
                    g = hh // (self.H // self.Hkv)
                    q_at = rope(q[t, hh][None].expand(len(dist), -1), dist, self.inv_freq)  # [distances, D]
                    total += float((q_at @ k[cand * w:(cand + 1) * w, g].T).mean(0).max())
                    continue
                if score == "max_key_bound":  # Σ_d max(q_d·max_j k_jd, q_d·min_j k_jd) over the chunk's raw keys
                    g = hh // (self.H // self.Hkv)
                    keys = k[cand * w:(cand + 1) * w, g]
                    qq = rope(q[t, hh][None].expand(len(dist), -1), dist, self.inv_freq).mean(0)
                    total += float(qq.clamp_min(0) @ keys.max(0).values + qq.clamp_max(0) @ keys.min(0).values)
                    continue
                key = (*self._where, cand, hh)
                if key not in memo:
                    memo[key] = self.summary(q, k, v, cand, hh, scale)
                total += float((q[t, hh] if q_block is None else q_block[hh]) @ memo[key])
            scores.append(float("inf") if cand >= c - 1 - recent else total)
        if score == "lexical":  # equal scores: the newer chunk first
            order = sorted(range(len(scores)), key=lambda j: (scores[j], j), reverse=True)
            return sorted({0, c - 1, c, *(j + 1 for j in order[:K - 3])})
        top = (torch.topk(torch.tensor(scores), K - 3).indices + 1).tolist() if K > 3 else []
        return sorted({0, c - 1, c, *top})


def gen(model, ids, mask=None, new=6, **kw):
    with torch.no_grad():
        return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids) if mask is None else mask,
                              max_new_tokens=new, min_new_tokens=new, do_sample=False, output_logits=True,
                              return_dict_in_generate=True, pad_token_id=0, **kw)


def prompt(n: int, seed: int = 0, distinct: bool = False, vocab: int = 400) -> torch.Tensor:
    """Random token ids; ``distinct``: no id twice. At layer 0 a repeated token has the same raw key, so
    ``tail_selection="max_key"`` scores its chunks *exactly* alike, and top-k may break that tie either way in
    the reference and in the implementation (equally valid, but the outputs then differ)."""
    g = torch.Generator().manual_seed(seed)
    if distinct:
        return (torch.randperm(396, generator=g)[:n] + 4)[None]
    return torch.randint(4, vocab, (1, n), generator=g)


def run(model, iv, ids, mask=None, new=6):
    with hookkit.attach(model, iv) as session:
        out = gen(model, ids, mask, new)
        state = session.states[iv]
    return out, state


def max_diff(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a.logits, b.logits))


def trace_map(state) -> dict[tuple[int, int, int, int], list[int]]:
    """LongHeads trace → {(layer, row, position, head): chunks}."""
    out = {}
    for e in state.trace:
        chunks = e["chunks"]  # [G, Qb, K]
        G = chunks.shape[0]
        for qi, t in enumerate(e["positions"]):
            for g in range(G):
                out[(e["layer"], e["row"], t, g)] = chunks[g, qi].tolist()
    return out


# ---------------------------------------------------------------------------------------------- identities
def test_relative_rope_identity_matches_explicit_reindexing() -> None:
    """(R(d·w) R(a) q) · (R(b) k) == (R(ρq·w + a) q) · (R(ρk·w + b) k) with d = ρq − ρk (module docs)."""
    torch.manual_seed(0)
    D, w = 16, 8
    inv = 1.0 / (10000 ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    q, k = torch.randn(D, dtype=torch.float64), torch.randn(D, dtype=torch.float64)
    for rq, rk, a, b in [(5, 2, 3, 7), (3, 3, 6, 1), (15, 0, 0, 0), (7, 6, 7, 7)]:
        explicit = rope(q[None], torch.tensor([rq * w + a]), inv)[0] @ rope(k[None], torch.tensor([rk * w + b]), inv)[0]
        q_loc, k_loc = rope(q[None], torch.tensor([a]), inv)[0], rope(k[None], torch.tensor([b]), inv)[0]
        relative = rope(q_loc[None], torch.tensor([(rq - rk) * w]), inv)[0] @ k_loc
        # The implementation rotates the key by -d·w instead of the query by +d·w: the same number.
        key_side = q_loc @ rope(k_loc[None], torch.tensor([-(rq - rk) * w]), inv)[0]
        assert abs(explicit - relative) < 1e-12 and abs(explicit - key_side) < 1e-12
        wrong = rope(q_loc[None], torch.tensor([(rq - rk + 1) * w]), inv)[0] @ k_loc
        assert abs(explicit - wrong) > 1e-6  # the identity is not vacuous


# ---------------------------------------------------------------------------------------------- below B
@pytest.mark.seam
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
def test_below_begin_selective_is_bit_identical_to_stock(name: str) -> None:
    model, _, _ = load_tiny(name)
    ids = prompt(30, seed=1)
    stock = gen(model, ids, new=5)
    iv = LongHeads(fit_margin=0, chunk_size=4, atten_length=16, begin_selective=40)
    out, state = run(model, iv, ids, new=5)
    assert torch.equal(stock.sequences, out.sequences)
    assert all(torch.equal(a, b) for a, b in zip(stock.logits, out.logits))  # prefill and every decode step
    assert state.rows[0][0].n_summ == (30 + 4) // 4  # summaries were maintained below B (34 slots seen, last
    # token not yet in the cache: 30 prompt + 4 decoded -> 34 keys -> 8 complete chunks)


@pytest.fixture
def trained_64(monkeypatch: pytest.MonkeyPatch):
    """The fp64 tiny-llama, told it was trained to 64 positions (its RoPE does not depend on it)."""
    model, _, _ = tiny()
    monkeypatch.setattr(model.config, "max_position_embeddings", 64)
    return model


def test_a_prompt_that_fits_runs_as_stock_until_its_answer_passes_the_margin(trained_64) -> None:
    """Prompt of 40 tokens, trained length 64, fit_margin 8: every query below position 72 is the stock model's
    (bit-identical), the first one at 72 selects. With fit_margin=0 the same prompt selects from B = 24 on."""
    model = trained_64
    ids = prompt(40, seed=11)
    stock = gen(model, ids, new=40)
    fit, state = run(model, LongHeads(chunk_size=W, atten_length=ATT, fit_margin=8), ids, new=40)
    assert state.stock_until == [72]
    # logits[i] come from the query at position 39 + i: steps 0..32 sit below 72
    assert all(torch.equal(a, b) for a, b in zip(stock.logits[:33], fit.logits[:33]))
    assert torch.equal(stock.sequences[:, :40 + 33], fit.sequences[:, :40 + 33])
    assert max((a - b).abs().max().item() for a, b in zip(stock.logits[33:], fit.logits[33:])) > 1e-3
    off, state = run(model, LongHeads(chunk_size=W, atten_length=ATT, fit_margin=0), ids, new=1)
    assert state.stock_until == [ATT] and (off.logits[0] - stock.logits[0]).abs().max().item() > 1e-3


def test_a_prompt_beyond_the_trained_length_is_untouched_by_fit_margin(trained_64) -> None:
    """Only prompts that fit change: a 70-token prompt (> 64) gives bit-identical outputs and selections with and
    without fit_margin, also as the longer row of a left-padded batch whose shorter row fits."""
    model = trained_64
    long_ids, short_ids = prompt(70, seed=12), prompt(40, seed=13)
    kw = dict(chunk_size=W, atten_length=ATT, trace=True)
    ref, ref_state = run(model, LongHeads(fit_margin=0, **kw), long_ids, new=6)
    out, state = run(model, LongHeads(**kw), long_ids, new=6)
    assert state.stock_until == [ATT]
    assert all(torch.equal(a, b) for a, b in zip(ref.logits, out.logits))
    assert trace_map(ref_state).keys() == trace_map(state).keys() and trace_map(ref_state) == trace_map(state)
    ids = torch.cat([long_ids, torch.cat([torch.zeros(1, 30, dtype=torch.long), short_ids], 1)])
    mask = torch.cat([torch.ones(1, 70), torch.cat([torch.zeros(1, 30), torch.ones(1, 40)], 1)]).long()
    both, state = run(model, LongHeads(**kw), ids, mask, new=6)
    assert state.stock_until == [ATT, 64 + W]  # default margin: one chunk
    short = gen(model, short_ids, new=6)  # stock: positions 39..44 all below 68
    for row, single in ((0, ref), (1, short)):
        assert torch.equal(both.sequences[row, -6:], single.sequences[0, -6:])
        assert max((x[row] - y[0]).abs().max().item() for x, y in zip(both.logits, single.logits)) < TOL


def test_selection_changes_the_output_above_b() -> None:
    model, _, _ = tiny()
    ids = prompt(60, seed=2)
    stock = gen(model, ids, new=3)
    out, state = run(model, LongHeads(fit_margin=0, chunk_size=W, atten_length=ATT), ids, new=3)
    assert max_diff(stock, out) > 1e-3  # not silently stock
    assert state.stats["blocks"] > 0


# ---------------------------------------------------------------------------------------------- reference
OFFICIAL = dict(prefill_selection="token", tail_selection="summary", tail_recent=0)
BLOCK = dict(prefill_selection="block", tail_selection="max_key", exact_tail=5, tail_recent=0)  # earlier defaults
DEFAULTS = dict(exact_tail=5)  # hookkit's (short tail): recent prompt chunks, lexical tail slots with a local window,
# the best-ranked slot chunk read after chunk 0 alone


@pytest.mark.seam
@pytest.mark.parametrize("gqa,include_self,settings", [
    ("query_head", True, OFFICIAL), ("kv_head", True, OFFICIAL), ("query_head", False, OFFICIAL),
    ("query_head", True, DEFAULTS), ("kv_head", True, DEFAULTS), ("query_head", False, DEFAULTS),
    ("query_head", True, BLOCK),
    ("query_head", True, dict(prefill_selection="token", tail_selection="max_key", exact_tail=9)),
    ("query_head", True, dict(prefill_selection="recent", tail_selection="max_key", exact_tail=9)),
    ("kv_head", True, dict(prefill_selection="recent", tail_selection="max_key", exact_tail=9)),
    ("query_head", True, dict(prefill_selection="recent", tail_selection="max_key", exact_tail=9, tail_recent=1)),
    ("kv_head", True, dict(prefill_selection="token", tail_selection="summary", exact_tail=9, tail_recent=1)),
    ("query_head", True, dict(prefill_selection="recent", tail_selection="max_key_bound", exact_tail=9)),
    ("kv_head", True, dict(prefill_selection="token", tail_selection="max_key_bound", exact_tail=9, tail_recent=1)),
    ("query_head", True, dict(prefill_selection="recent", tail_selection="max_key", exact_tail=9, tail_recent=1,
                              score_rope="window_mean")),
    ("kv_head", True, dict(prefill_selection="recent", tail_selection="max_key_bound", exact_tail=9,
                           score_rope="window_mean")),
    ("query_head", True, dict(prefill_selection="recent", tail_selection="lexical", exact_tail=9, tail_recent=0,
                              isolate_retrieved=False)),
    ("kv_head", True, dict(prefill_selection="token", tail_selection="lexical", exact_tail=9, tail_recent=1)),
], ids=["official", "official-kv", "official-noself", "default", "default-kv", "default-noself", "block", "token-maxkey", "recent-maxkey",
        "recent-maxkey-kv", "recent-maxkey-tailrecent", "token-summary-tailrecent-kv", "recent-bound",
        "token-bound-tailrecent-kv", "recent-maxkey-window-mean", "recent-bound-window-mean-kv",
        "recent-lexical", "token-lexical-tailrecent-kv"])
def test_matches_per_token_reference_prefill_and_decode(gqa: str, include_self: bool,
                                                          settings: dict[str, Any], name: str = "tiny-llama") -> None:
    model, _, info = tiny(name)
    # lexical: a 40-id vocabulary, so that chunks share ids with the question in varying numbers
    vocab = 40 if settings is DEFAULTS or settings.get("tail_selection") == "lexical" else 400
    ids = prompt(63, seed=3, distinct=settings.get("tail_selection") == "max_key",
                 vocab=vocab)  # 63 prompt tokens, then decoding completes chunks 15 and 16 (positions 63, 67)
    kw = dict(chunk_size=W, atten_length=ATT, begin_selective=ATT, gqa_selection=gqa, include_self=include_self,
              **settings)
    # The reference's own defaults are the official rules: spell out hookkit's for it (the implementation gets
    # none of them, so its defaults are what is tested).
    ref_kw = {"prefill_selection": "recent", "tail_selection": "lexical", "isolate_retrieved": True,
              **kw} if settings is DEFAULTS else kw
    ref = RefLongHeads(**ref_kw)
    ref_out, ref_state = run(model, ref, ids, new=8)
    if settings is DEFAULTS:  # the default isolates a run of chunks on this prompt (else isolation goes untested)
        assert ref.isolated[0]
    out, state = run(model, LongHeads(fit_margin=0, **kw, trace=True), ids, new=8)
    assert torch.equal(ref_out.sequences, out.sequences)
    assert max_diff(ref_out, out) < TOL
    # Chunk selection, for every (layer, position, head) at prefill and at decode.
    got = trace_map(state)
    rep = info.num_heads // info.num_kv_heads
    checked = 0
    for layer, b, t, h, sel in ref_state["trace"]:
        g = h if gqa == "query_head" else h // rep
        assert got[(layer, b, t, g)] == sel, (layer, t, h)
        checked += 1
    n_sel = (63 + 7 - 1) - ATT + 1  # selective positions 24 .. 69 (the 8th new token is never fed back)
    assert checked == info.num_layers * info.num_heads * n_sel
    assert state.stats["blocks"] > 0


def test_window_mean_scores_change_the_selection() -> None:
    """``score_rope="window_mean"`` is not a no-op on the reference test's prompt: some (layer, position, head)
    selects other chunks than with the distance-0 score (so the reference comparisons above can tell them apart)."""
    model, _, _ = tiny()
    ids = prompt(63, seed=3, distinct=True)
    kw = dict(chunk_size=W, atten_length=ATT, prefill_selection="recent", tail_selection="max_key", exact_tail=9,
              tail_recent=1, trace=True)
    plain, mean = (trace_map(run(model, LongHeads(fit_margin=0, **kw, score_rope=r), ids, new=8)[1]) for r in ("none", "window_mean"))
    assert plain.keys() == mean.keys()
    assert sum(plain[k] != mean[k] for k in plain) > 0


def test_max_key_scores_in_small_groups_match_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """The max-key scores are computed a few queries and chunks at a time (memory); groups of 3 chunks and 2
    queries split every block of this prompt unevenly, and selections and outputs must stay the reference's."""
    import hookkit.methods.chunk_scores as scores

    monkeypatch.setattr(scores, "MAX_KEY_GROUP", 3)
    monkeypatch.setattr(scores, "MAX_KEY_QUERIES", 2)
    test_matches_per_token_reference_prefill_and_decode(
        "query_head", True, dict(prefill_selection="recent", tail_selection="max_key", exact_tail=9))


def test_vectorised_prefill_matches_reference_with_any_query_block() -> None:
    """Bigger chunks (w=8) so a block holds many queries; blocks of 3 queries; one query per block."""
    model, _, _ = tiny()
    ids = prompt(110, seed=4)
    kw = dict(chunk_size=8, atten_length=48, begin_selective=48, prefill_selection="token", tail_selection="summary")
    ref_out, _ = run(model, RefLongHeads(**kw), ids, new=2)
    outs = [run(model, LongHeads(fit_margin=0, **kw, query_block=qb), ids, new=2) for qb in (None, 3, 1)]
    for out, _ in outs:
        assert max_diff(ref_out, out) < TOL
    blocks = [st.stats["blocks"] for _, st in outs]
    assert blocks[0] < blocks[1] < blocks[2]


@pytest.mark.seam
@pytest.mark.parametrize("tail", ["summary", "max_key"])
def test_crossing_begin_selective_during_generate(tail: str) -> None:
    """Prompt of 10 tokens (2 complete chunks, below B = 24), 30 new tokens: the official code raises here."""
    model, _, _ = tiny()
    ids = prompt(10, seed=5)
    # tail_recent=0: the generated tokens repeat, and repeated tokens tie exactly under max_key at layer 0 (see
    # prompt()); with every tail chunk by score this prompt happens to need no tie-break.
    kw = dict(chunk_size=W, atten_length=ATT, begin_selective=ATT, tail_selection=tail, tail_recent=0)
    ref_out, _ = run(model, RefLongHeads(**kw), ids, new=30)
    out, state = run(model, LongHeads(fit_margin=0, **kw), ids, new=30)
    assert out.sequences.shape[1] == 40
    assert torch.equal(ref_out.sequences, out.sequences)
    assert max_diff(ref_out, out) < TOL
    assert state.rows[0][0].n_summ == 39 // W and state.stats["blocks"] > 0


def test_batch_of_two_with_different_lengths_matches_single_rows() -> None:
    model, tok, _ = tiny()
    kw = dict(chunk_size=W, atten_length=ATT)
    a, b = prompt(57, seed=6), prompt(45, seed=7)
    ids = torch.cat([a, torch.cat([torch.zeros(1, 12, dtype=torch.long), b], 1)])
    mask = torch.cat([torch.ones(1, 57), torch.cat([torch.zeros(1, 12), torch.ones(1, 45)], 1)]).long()
    both, state = run(model, LongHeads(fit_margin=0, **kw), ids, mask, new=6)
    assert state.n_pad == [0, 12]
    for row, single_ids in enumerate((a, b)):
        single, _ = run(model, LongHeads(fit_margin=0, **kw), single_ids, new=6)
        assert torch.equal(both.sequences[row, -6:], single.sequences[0, -6:])
        assert max((x[row] - y[0]).abs().max().item() for x, y in zip(both.logits, single.logits)) < TOL


ISOLATE = dict(prefill_selection="recent", tail_selection="lexical", exact_tail=9, tail_recent=0,
               isolate_retrieved=True)


@pytest.mark.parametrize("seed, run_chunks, include_self", [
    (66, {5, 6}, True),  # a run across B = chunk 6: chunk 5 read as the stock model, chunk 6 by selection
    (66, {5, 6}, False),
    (20, {4, 5}, True),  # a run below B
    (43, {7, 8}, True),  # a run past B
])
def test_isolated_retrieved_chunks_match_the_reference_below_and_past_b(seed: int, run_chunks: set[int],
                                                                        include_self: bool) -> None:
    model, _, _ = tiny()
    ids = prompt(63, seed=seed, vocab=40)
    kw = dict(chunk_size=W, atten_length=ATT, begin_selective=ATT, include_self=include_self, **ISOLATE)
    ref = RefLongHeads(**kw)
    ref_out, _ = run(model, ref, ids, new=8)
    iso = ref.isolated[0]
    assert iso == run_chunks, iso
    out, state = run(model, LongHeads(fit_margin=0, **kw), ids, new=8)
    assert [set(run) for run in state.isolated] == [iso]
    assert torch.equal(ref_out.sequences, out.sequences)
    assert max_diff(ref_out, out) < TOL
    plain, _ = run(model, LongHeads(fit_margin=0, **{**kw, "isolate_retrieved": False}), ids, new=8)
    assert max_diff(plain, out) > 1e-3  # isolation changes what the answer reads


def test_isolated_retrieved_chunks_batch_of_two_matches_single_rows() -> None:
    model, _, _ = tiny()
    kw = dict(chunk_size=W, atten_length=ATT, fit_margin=0, **ISOLATE)
    a, b = prompt(57, seed=6, vocab=40), prompt(45, seed=7, vocab=40)
    ids = torch.cat([a, torch.cat([torch.zeros(1, 12, dtype=torch.long), b], 1)])
    mask = torch.cat([torch.ones(1, 57), torch.cat([torch.zeros(1, 12), torch.ones(1, 45)], 1)]).long()
    both, state = run(model, LongHeads(**kw), ids, mask, new=6)
    assert all(state.isolated) and state.isolated[0] != state.isolated[1]
    for row, single_ids in enumerate((a, b)):
        single, _ = run(model, LongHeads(**kw), single_ids, new=6)
        assert torch.equal(both.sequences[row, -6:], single.sequences[0, -6:])
        assert max((x[row] - y[0]).abs().max().item() for x, y in zip(both.logits, single.logits)) < TOL


def test_isolated_retrieved_leaves_a_prompt_that_fits_as_the_stock_model(trained_64) -> None:
    model, _, _ = tiny()
    ids = prompt(60, seed=3, vocab=40)  # fits in the (patched) 64 trained positions
    kw = dict(chunk_size=W, atten_length=ATT, **ISOLATE)
    out, state = run(model, LongHeads(**kw), ids, new=4)
    assert [set(run) for run in state.isolated] == [set()]
    _, state = run(model, LongHeads(fit_margin=0, **kw), ids, new=1)
    assert state.isolated[0]  # the same prompt, not told it fits, isolates chunks
    with torch.no_grad():
        stock = gen(model, ids, new=4)
    assert torch.equal(stock.sequences, out.sequences)
    assert max_diff(stock, out) < TOL


def test_fp32_and_qwen2_biases_match_reference() -> None:
    model, _, _ = tiny("tiny-qwen2", "float32")
    ids = prompt(50, seed=8)
    kw = dict(chunk_size=W, atten_length=ATT, prefill_selection="token", tail_selection="summary")
    ref_out, _ = run(model, RefLongHeads(**kw), ids, new=4)
    out, _ = run(model, LongHeads(fit_margin=0, **kw), ids, new=4)
    assert max_diff(ref_out, out) < 2e-4


@pytest.mark.parametrize("prefill", ["recent", "block", "token"])
def test_block_memory_does_not_grow_with_context(prefill: str) -> None:
    """Chunks computed per block are bounded by the block's selections, not by the context: linear memory."""
    model, _, _ = tiny()
    K = ATT // W
    for n in (80, 240):
        iv = LongHeads(fit_margin=0, chunk_size=W, atten_length=ATT, pair_stats=True, prefill_selection=prefill)
        _, state = run(model, iv, prompt(n, seed=9), new=1)
        assert state.stats["chunks_max"] >= K and state.stats["pairs_max"] >= K - 1
        assert state.stats["chunks_max"] <= W * (K - 1) + 1  # every query's own chunks, at most
        assert state.stats["pairs_max"] <= W * (K - 1) + 1
    # No per-token copy of the keys: what a row keeps is per chunk (summaries, key bounds) or a chunk's worth.
    row = state.rows[0][0]
    tokens = 240 + 1
    per_chunk = [t for t in (row.summ, row.kmax, row.kmin)]
    assert all(t.shape[1] <= tokens // W + 8 for t in per_chunk)
    assert row.q_tail.shape[1] < W
    assert not any(isinstance(v, torch.Tensor) and v.dim() >= 2 and v.shape[-2] >= tokens for v in vars(row).values())


@pytest.mark.parametrize("tail", ["max_key", "max_key_bound", "summary", "lexical"])
def test_state_is_per_chunk_whatever_the_score(tail: str) -> None:
    """Memory at the stock model's level: LongHeads derives locally rotated keys from the cache, never copies them.

    A row keeps per chunk at most a summary per query head and two key bounds per KV head, plus the queries of
    the chunk being filled; a copy of the keys would add KV heads x tokens x D per layer.
    """
    model, _, info = tiny()
    w, tokens = 16, 243
    iv = LongHeads(fit_margin=0, chunk_size=w, atten_length=4 * w, tail_selection=tail, prefill_selection="token", exact_tail=5)
    _, state = run(model, iv, prompt(240, seed=4), new=3)
    H, Hkv, D = info.num_heads, info.num_kv_heads, info.head_dim
    per_layer = [sum(v.numel() for row in rows for v in vars(row).values() if isinstance(v, torch.Tensor))
                 for rows in state.rows.values()]
    bound = ((tokens // w + 8) * (H + 2 * Hkv) + H * w) * D
    assert max(per_layer) <= bound < Hkv * tokens * D


def test_lexical_chunk_scores_weight_the_question_ids_by_rarity() -> None:
    """Σ idf over the question's distinct ids in each chunk: a rare shared id weighs more than a common one."""
    import math

    # w = 2, five complete chunks {1,2} {1,4} {5,1} {5,7} {1,9} and one id left over; the question (the last 3
    # ids) is {1, 9, 5}: 1 is in 4 chunks, 5 in 2 (the leftover 5 is in no complete chunk), 9 in 1.
    ids = [1, 2, 1, 4, 5, 1, 5, 7, 1, 9, 5]
    idf = {df: math.log(1 + (5 - df + 0.5) / (df + 0.5)) for df in (1, 2, 4)}
    expected = [idf[4], idf[4], idf[4] + idf[2], idf[2], idf[4] + idf[1]]
    assert lexical_chunk_scores(ids, 2, 3) == pytest.approx(expected, rel=1e-12)
    assert idf[4] < idf[2] < idf[1]
    assert lexical_chunk_scores(ids, 2, 0) == [0.0] * 5


def test_chunk_ranking_orders_chunks_by_score_and_ties_to_the_newer_chunk() -> None:
    """Ranks of chunks 1..c-2 (chunk 0 is the sink, c-1 the current one): higher score ranks higher; equal scores,
    and chunks completed after the prompt (no score), rank the newer chunk higher. Cached per chunk count."""
    ranking = ChunkRanking([9.0, 1.0, 0.0, 3.0, 0.0])  # chunk 0's score is never ranked
    rank = ranking.rank(7, torch.device("cpu"))  # chunks 1..5: scores 1, 0, 3, 0, 0 (chunk 5 was decoded)
    assert rank.tolist() == [3.0, 0.0, 4.0, 1.0, 2.0]
    assert ranking.rank(7, torch.device("cpu")) is rank
    assert ranking.rank(8, torch.device("cpu")).tolist() == [4.0, 0.0, 5.0, 1.0, 2.0, 3.0]
    # best(last, k): the same order over chunks 1..last with a score, best last
    tied = ChunkRanking([0.0, 2.0, 5.0, 2.0, 0.0, 1.0])
    assert tied.best(5, 3) == [1, 3, 2]  # chunk 3 beats chunk 1 on the tie; chunk 4 scores nothing
    assert tied.best(2, 3) == [1, 2] and tied.best(9, 2) == [3, 2] and tied.best(5, 0) == []
    # best_run(last, k): the best of best(last, k) with its neighbours among them, not across a gap
    assert tied.best_run(5, 3) == range(1, 4) and tied.best_run(9, 2) == range(2, 4)
    assert tied.best_run(9, 1) == range(2, 3) and tied.best_run(5, 0) == range(0)
    assert ChunkRanking([0.0, 3.0, 0.0, 5.0]).best_run(3, 2) == range(3, 4)
    assert ChunkRanking([0.0, 0.0, 0.0]).best_run(2, 3) == range(0)


def test_key_bounds_fed_in_pieces_bound_the_max_key_score() -> None:
    """Keys folded in uneven pieces (running bounds for the chunk being filled) give every chunk's exact elementwise
    max and min, and the bound score is never below the max-key score it bounds, and above it somewhere."""
    g = torch.Generator().manual_seed(0)
    w, Hkv, r, D, n = 4, 2, 3, 8, 22
    k_raw = torch.randn(n, Hkv, D, generator=g)
    kmax, kmin = torch.empty(Hkv, 0, D), torch.empty(Hkv, 0, D)
    for a, b in ((0, 3), (3, 4), (4, 13), (13, 22)):
        kmax, kmin = update_key_bounds(kmax, kmin, k_raw[a:b], a, w)
    for c in range(-(-n // w)):  # the last chunk is partial: its running bounds
        torch.testing.assert_close(kmax[:, c], k_raw[c * w:(c + 1) * w].amax(0), rtol=0, atol=0)
        torch.testing.assert_close(kmin[:, c], k_raw[c * w:(c + 1) * w].amin(0), rtol=0, atol=0)
    q = torch.randn(Hkv * r, 5, D, generator=g)
    identity = (torch.ones(w, D), torch.zeros(w, D))  # RoPE off: the locally rotated keys are the raw keys

    def local_keys(lo: int, hi: int) -> torch.Tensor:
        return k_raw[lo * w:hi * w].reshape(hi - lo, w, Hkv, D).permute(2, 0, 1, 3)

    c = n // w + 1  # chunks 1..c-2 are complete
    exact = max_key_scores(q, identity, Hkv, c, local_keys)
    bound = bound_scores(q, kmax[:, 1:c - 1], kmin[:, 1:c - 1])
    per_chunk = torch.einsum("hqd,nhd->hqn", q, k_raw.repeat_interleave(r, dim=1))[..., w:(c - 1) * w]
    torch.testing.assert_close(exact, per_chunk.reshape(*q.shape[:2], c - 2, w).amax(-1))
    assert bool((bound >= exact - 1e-5).all()) and bool((bound > exact + 1e-3).any())


def test_lexical_tail_keeps_the_chunk_that_repeats_the_question_in_every_head() -> None:
    """A chunk holding the question's rare ids is selected by every head of every layer for the prompt's exact
    tail and every decoding step; the key-bound score (the previous default), on the same prompt, misses it in
    some heads."""
    model, _, info = tiny()
    ids = prompt(96, seed=11, distinct=True)
    planted = torch.tensor([401, 402, 403, 404])
    ids[0, 30:34] = planted  # chunk 7 (w = 4), far outside the local window of the last tokens
    ids[0, -4:] = planted  # ... and the same ids close the prompt, where a question sits
    kept = {}
    for tail in ("lexical", "max_key_bound"):
        iv = LongHeads(fit_margin=0, chunk_size=W, atten_length=ATT, exact_tail=4, tail_recent=1,
                       tail_selection=tail, trace=True)
        _, state = run(model, iv, ids, new=4)
        tail_calls = [e for e in state.trace if e["positions"][0] >= 92]  # the exact tail, then decoding
        assert tail_calls
        kept[tail] = torch.cat([(e["chunks"] == 7).any(-1).flatten() for e in tail_calls])
    assert bool(kept["lexical"].all())
    assert not bool(kept["max_key_bound"].all())


def test_summaries_are_kept_only_when_a_score_reads_them() -> None:
    """Defaults (recent prompt selection, lexical tail) read neither a chunk summary nor a key bound, so none is
    computed; the bound score keeps bounds only."""
    model, _, _ = tiny()
    ids = prompt(80, seed=9)
    _, state = run(model, LongHeads(fit_margin=0, chunk_size=W, atten_length=ATT), ids, new=1)
    row = state.rows[0][0]
    assert row.n_summ == 80 // W and row.summ.shape[1] == 0 and row.kmax.shape[1] == 0
    _, state = run(model, LongHeads(fit_margin=0, chunk_size=W, atten_length=ATT, tail_selection="max_key_bound"),
                   ids, new=1)
    assert state.rows[0][0].summ.shape[1] == 0 and state.rows[0][0].kmax.shape[1] >= 80 // W
    for settings in (dict(prefill_selection="block"), dict(tail_selection="summary")):
        _, state = run(model, LongHeads(fit_margin=0, chunk_size=W, atten_length=ATT, **settings), ids, new=1)
        assert state.rows[0][0].summ.shape[1] >= 80 // W


# ---------------------------------------------------------------------------------------------- errors
def test_parameter_errors_name_the_field() -> None:
    model, _, _ = load_tiny("tiny-llama")
    for kwargs, field in [(dict(chunk_size=0), "chunk_size"), (dict(chunk_size=4, atten_length=10), "atten_length"),
                          (dict(chunk_size=4, atten_length=8), "atten_length"),
                          (dict(chunk_size=256, atten_length=4096), "atten_length"),  # > 1024 trained positions
                          (dict(chunk_size=4, atten_length=16, begin_selective=-1), "begin_selective"),
                          (dict(gqa_selection="per_head"), "gqa_selection"), (dict(query_block=0), "query_block"),
                          (dict(chunk_size=4, atten_length=16, tail_recent=2), "tail_recent"),  # K-3 = 1
                          (dict(score_rope="window"), "score_rope"),
                          (dict(score_rope="window_mean", tail_selection="summary"), "score_rope"),
                          (dict(score_rope="window_mean", tail_selection="lexical"), "score_rope"),
                          (dict(tail_selection="lexical", exact_tail=0), "exact_tail"),
                          (dict(isolate_retrieved=True, tail_selection="max_key_bound"), "isolate_retrieved"),
                          (dict(isolate_retrieved=1), "isolate_retrieved"),
                          (dict(isolate_retrieved=True, prefill_selection="token"), "isolate_retrieved"),
                          (dict(tail_recent=-1), "tail_recent"), (dict(prefill_selection="window"), "prefill_selection"),
                          (dict(tail_selection="mean"), "tail_selection"), (dict(exact_tail=-1), "exact_tail"),
                          (dict(fit_margin=-1), "fit_margin"), (dict(fit_margin=1.5), "fit_margin"),
                          (dict(fit_margin=True), "fit_margin")]:
        with pytest.raises(ConfigError, match=rf"longheads\.{field}"):
            hookkit.attach(model, LongHeads(**kwargs))


@pytest.mark.parametrize("trained, kwargs, expected", [
    (1024, {}, (1024, 1024, 4, 1024 + 256)),  # min(4096, 1024 trained positions); fit_margin = chunk_size
    (8192, {}, (4096, 4096, 16, 8192 + 256)),  # 4096 tokens per head, selection from B = atten_length on
    (8192, {"atten_length": 2048}, (2048, 2048, 8, 8192 + 256)),
    (8192, {"begin_selective": 8192}, (4096, 8192, 16, 8192 + 256)),
    (8192, {"fit_margin": 0}, (4096, 4096, 16, 0)),
    (8192, {"fit_margin": 40}, (4096, 4096, 16, 8192 + 40)),
    (0, {}, (4096, 4096, 16, 0)),  # no trained length in the config: 4096, and no prompt "fits"
])
def test_default_atten_length_and_begin_follow_the_trained_length(trained: int, kwargs: dict[str, int],
                                                                   expected: tuple[int, int, int, int]) -> None:
    model, _, _ = load_tiny("tiny-llama")
    model.config.max_position_embeddings = trained
    try:
        iv = LongHeads(**kwargs)
        with hookkit.attach(model, iv) as session:
            resolved = session.resolved(iv)
            assert (resolved.atten, resolved.begin, resolved.K, resolved.fit_until) == expected
    finally:
        model.config.max_position_embeddings = 1024


@pytest.mark.parametrize("kwargs, isolate", [
    ({}, True),  # the defaults: lexical slots, recent prompt reading
    ({"isolate_retrieved": False}, False),
    ({"tail_selection": "max_key_bound"}, False),  # no ranking before the prompt is read: off, not refused
    ({"prefill_selection": "token", "tail_selection": "lexical"}, False),
    (OFFICIAL, False),
])
def test_isolate_retrieved_defaults_to_on_exactly_where_it_applies(kwargs: dict[str, Any], isolate: bool) -> None:
    model, _, _ = load_tiny("tiny-llama")
    iv = LongHeads(**kwargs)
    with hookkit.attach(model, iv) as session:
        assert session.resolved(iv).isolate is isolate


@pytest.mark.parametrize("settings", [OFFICIAL, DEFAULTS], ids=["official", "default"])
def test_fused_qkv_projection_matches_the_reference(settings: dict[str, Any]) -> None:
    """Phi-3's fused qkv_proj: raw queries and keys come from splitting its output (one LINEAR target)."""
    test_matches_per_token_reference_prefill_and_decode("query_head", True, settings, name="tiny-phi3")


def _rope_variant(kind: str):
    """A tiny model of each RoPE variant LongHeads' own rotation does not reproduce."""
    import transformers as T

    from hookkit.models.tiny import TEXT_CONFIG

    torch.manual_seed(0)
    if kind == "interleaved":  # Cohere: pairs (2i, 2i+1), cos/sin repeat_interleave'd
        model = T.CohereForCausalLM(T.CohereConfig(**TEXT_CONFIG))
    elif kind == "partial":  # StableLm: RoPE on a quarter of each head
        model = T.StableLmForCausalLM(T.StableLmConfig(**TEXT_CONFIG))
    elif kind == "no_rope_layers":  # SmolLM3: every 4th layer without RoPE
        model = T.SmolLM3ForCausalLM(T.SmolLM3Config(**TEXT_CONFIG, no_rope_layer_interval=4))
    else:  # Phi-2: partial rotary and an output projection named dense
        model = hookkit.load("tiny-phi")[0]
    return model.eval()


@pytest.mark.parametrize("kind,reason", [
    ("interleaved", "rotates differently"), ("partial", "partial rotary"), ("phi", "partial rotary"),
    ("no_rope_layers", "apply no rotary embedding"),
])
def test_rope_variants_it_cannot_reproduce_are_refused_at_attach(kind: str, reason: str) -> None:
    model = _rope_variant(kind)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UnsupportedModelError, match=reason):
        hookkit.attach(model, LongHeads(fit_margin=0, chunk_size=4, atten_length=16))
    assert getattr(model, "_hookkit_session", None) is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_no_rope_layers_can_be_left_out() -> None:
    """SmolLM3-style models: the layers that do apply RoPE can still take LongHeads."""
    model = _rope_variant("no_rope_layers")
    rope_layers = [i for i, layer in enumerate(model.model.layers) if layer.self_attn.use_rope]
    assert 0 < len(rope_layers) < len(model.model.layers)
    with hookkit.attach(model, LongHeads(fit_margin=0, chunk_size=4, atten_length=16, layers=rope_layers)):
        pass


@pytest.mark.parametrize("name", ["tiny-mistral", "tiny-gemma3", "tiny-qwen2-vl"])
def test_unsupported_models_are_refused(name: str) -> None:
    model, _, _ = load_tiny(name)
    with pytest.raises(UnsupportedModelError):
        hookkit.attach(model, LongHeads(fit_margin=0, chunk_size=4, atten_length=16))


def test_registered_and_listed() -> None:
    from hookkit.methods.registry import get_method, method_parameters

    assert get_method("longheads") is LongHeads
    names = [p["name"] for p in method_parameters(LongHeads)]
    assert names[:7] == ["chunk_size", "atten_length", "begin_selective", "gqa_selection", "include_self",
                         "query_block", "layers"]
    assert dataclasses.is_dataclass(LongHeads)
