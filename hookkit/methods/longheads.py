"""``longheads``: training-free long context by per-head chunk selection (LongHeads, arXiv 2402.10685).

The context is cut into chunks of ``chunk_size`` (w) tokens. For a query at position t ≥ ``begin_selective`` (B),
every (layer, query head) attends to at most K = ``atten_length`` / w chunks: chunk 0 (attention sink), the
K−3 chunks whose summary scores highest against the query, the previous chunk and the query's own (partial)
chunk. The selected chunks get contiguous positions 0…K·w−1, so every RoPE distance stays inside the trained
range. Algorithm as implemented in the official code (``LuLuLuyi/LongHeads``): ../shared/reference/methods-llm.md
§1.3–1.4.

How it sits on the registry (no forked model):

* ``LINEAR`` site on the query and key projections (``q_proj``/``k_proj``, or a fused ``qkv_proj`` split by the
  family adapter): captures the raw, un-rotated queries and keys of the forward (biases included, as the official
  code caches them; §1.10). Read only.
* ``ATTENTION`` site: computes the layer's attention. Keys and values come from the model's own KV cache: the
  *locally rotated* keys ``k_loc[j] = R(j mod w)·k_raw[j]`` are derived chunk by chunk from the cached keys
  ``R(j + p0)·k_raw[j]`` by rotating them back by ``c·w + p0`` (exact up to rounding), so LongHeads keeps no second
  copy of the keys and its memory stays at the stock model's.
* Per-layer, per-row state (``new_state``, fresh for every prompt), all per chunk: one summary per complete chunk
  and query head (only for the summary scores), the per-dimension max and min of each chunk's raw keys (only for
  ``tail_selection="max_key_bound"``), and the locally rotated queries of the incomplete chunk.

Chunk summaries (§1.3 a): local RoPE, bidirectional in-chunk attention ``o_j``, summary query ``s_c = mean_j o_j``,
then ``c_c = Σ_l softmax(s_c·k̃_l/√d)·k̃_l``. Score of chunk c for query t: ``q_raw[t]·c_c`` (un-rotated query,
no scale, §1.3 b).

Re-indexed RoPE without re-applying RoPE (the relative trick): with ``q_loc = R(t mod w)·q_raw``, a key in selected
chunk s scores ``(R(ρ_q·w + a)q)·(R(ρ_s·w + b)k) = q_locᵀ R((ρ_q−ρ_s)·w) k_loc``, where ρ are ranks in the sorted
selection. Only rotations by multiples of w (at most K distinct ones) are needed, all angles stay below K·w, and
nothing is rotated at a position outside the trained range.

Exactness: when every query of a forward sits below ``max(B, atten_length)`` the call goes straight to the
layer's stock attention with the call's own arguments (``AttnCall.stock``: bit-identical to the stock model).
A row whose prompt fits in the trained length stays on that path longer (``fit_margin``, difference 9 below).
Between B and ``atten_length`` every chunk fits in the budget, the selection is "everything" and the re-indexed positions are the
true ones, so those queries also take the ordinary causal path.

Vectorised prefill (no loop per token): queries are processed in blocks of one chunk (or ``query_block``). For a
block the exact per-token selection of every query is computed at once (top-k over the chunk scores); the
(chunk, displacement) pairs the block uses are de-duplicated per head; their keys are gathered once, rotated by
the displacement, and one fused SDPA call with an additive mask gives every query exactly its own keys (the mask
hides, per query, the pairs it did not select, plus the future inside the current chunk). A block whose queries
disagree a lot is split in halves. Memory per block is O(query_block · pairs · w), independent of the context, so
peak attention memory grows linearly with the context.

Differences from the official code (each one deliberate; the table and the measurements behind it are in
docs/methods/longheads.md, "Differences from the official code"):

1. **GQA** (the official code is MHA only): selection per *query head* (methods-llm.md §1.10 choice A);
   ``gqa_selection="kv_head"`` sums the group's chunk scores (choice B).
2. **The query sees its own key at prefill** (``include_self=False`` restores the official quirk, §1.8.2).
3. **Summaries are maintained below B**, so generation crossing B works (the official code raises, §1.8.3).
4. **Decode at a chunk-completing token** forces chunk 0, the previous and the current chunk, as prefill does.
5. **Relative RoPE trick** instead of re-rotating gathered raw keys at positions 0…n−1 (mathematically equal).
6. **Batches with left padding**, any subset of ``layers``, any Llama-style model with plain RoPE.
7. Queries between B and ``atten_length`` use ordinary attention (identical math, see above).
8. **Chunk selection** (the official rules are ``prefill_selection="token", tail_selection="summary",
   tail_recent=0, fit_margin=0``): the prompt before its last ``exact_tail`` tokens attends to chunk 0 and its
   last K−1 chunks (sink + sliding window, no scores); the exact tail and every decoding step keep chunk 0 and a
   local window of ``tail_recent`` chunks and fill the other slots, for every head alike, with the prompt chunks
   sharing the most rare token ids with the prompt's last ``exact_tail`` tokens (``tail_selection="lexical"``:
   BM25 idf over the prompt's own chunks, :mod:`hookkit.methods.chunk_scores`). The official summary score failed
   passkey trials inside the trained length; scored prompt chunks, or every answer chunk by score, failed needles
   far beyond B; on natural text no position-free ``q·k`` score (``max_key``, its bound ``max_key_bound``)
   singles out the chunk that answers a question, while the question's own rare words do when it repeats them.
9. **Prompts that fit in the trained length** run as the stock model until their answer passes it by
   ``fit_margin`` tokens (default ``chunk_size``).
10. **Retrieved chunks read on their own** (``isolate_retrieved``; on by default with the lexical tail and the
    recent prompt reading): the lexical ranking is fixed by the prompt's ids before the prompt is read, so the
    answer's best-ranked slot chunk (with the slot chunks adjacent to it) is known in advance; its tokens attend to
    chunk 0 and that run only, i.e. the passage is encoded as if it followed the sink, not after a window of other
    text (docs/benchmarks.md, sixteenth and seventeenth passes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from hookkit.core.intervention import AttnCall, Binding, HookContext, Intervention, SampleInfo
from hookkit.core.regions import Region
from hookkit.core.sites import Site
from hookkit.errors import ConfigError, UnsupportedModelError, check_bool, check_choice, check_int, check_int_list
from hookkit.methods.chunk_scores import (
    ChunkRanking,
    bound_scores,
    chunk_summaries,
    grow,
    lexical_chunk_scores,
    max_key_scores,
    update_key_bounds,
)
from hookkit.methods.rope_attention import (
    apply_rope,
    check_rotation,
    merge_by_lse,
    rotate_half,
    rotation_matrices,
    sdpa_with_lse,
)
from hookkit.models.base import ModelInfo, rotary_embedding

GQA_CHOICES = ("query_head", "kv_head")
PREFILL_CHOICES = ("token", "block", "recent")
TAIL_CHOICES = ("max_key", "max_key_bound", "summary", "lexical")
SCORE_ROPE_CHOICES = ("none", "window_mean")
DEFAULT_ATTEN_LENGTH = 4096


@dataclass
class _Row:
    """LongHeads state of one (layer, batch row). The keys themselves live only in the model's KV cache."""

    summ: torch.Tensor  # [H, cap_chunks, D] chunk summaries c_c (fp32 or wider), when a score reads them
    q_tail: torch.Tensor  # [H, length - n_summ*w, D] locally rotated queries of the incomplete chunk (summaries)
    kmax: torch.Tensor  # [Hkv, cap_chunks, D] per chunk, the elementwise max of its raw keys (bound scores)
    kmin: torch.Tensor  # [Hkv, cap_chunks, D] ... and the elementwise min
    length: int = 0
    n_summ: int = 0
    pos0: int | None = None  # RoPE position of the row's first real token in the cache (found at its first append)
    lexical: ChunkRanking | None = None  # tail_selection="lexical": the row's prompt chunks ranked (every layer's)
    isolated: range = range(0)  # isolate_retrieved: the run of chunks read after chunk 0 alone (empty: none)


@dataclass(frozen=True)
class LongHeadsSettings:
    """LongHeads' parameters resolved for one model by ``bind`` (handed to every sample's state)."""

    w: int  # chunk size
    atten: int  # tokens per head
    K: int  # chunks per head
    begin: int  # first position with selective attention (B)
    qb: int  # prefill queries per block
    tail_recent: int  # local-window chunks of the exact tail and decoding
    score_rope: str  # max-key scores: "none" (distance 0) or "window_mean" (averaged over the window's distances)
    stock_until: int  # queries below max(B, atten_length) use ordinary attention
    fit_until: int  # ... and below this in rows whose prompt fits in the trained length (0: off)
    trained: int  # the model's trained length (max_position_embeddings; 0 when unknown)
    uses_summaries: bool  # some score reads chunk summaries
    uses_bounds: bool  # the tail score reads per-chunk key bounds
    uses_lexical: bool  # the tail score reads the prompt's token ids (tail_selection="lexical")
    isolate: bool  # isolate_retrieved, resolved: the answer's best-ranked slot chunks are read after chunk 0 alone
    num_heads: int
    num_kv: int
    head_dim: int
    rotary: Any  # the text model's rotary embedding module
    qk_targets: tuple[str, ...]  # LINEAR targets whose outputs hold the raw queries and keys
    split_query_key: Any  # ModelInfo.split_query_key: raw q, k from the captured outputs


def _empty_row(call: AttnCall) -> _Row:
    H, Hkv, D, dev, dt = call.num_heads, call.num_kv_heads, call.query.shape[-1], call.query.device, call.query.dtype
    sdt = torch.promote_types(dt, torch.float32)
    return _Row(summ=torch.empty(H, 0, D, dtype=sdt, device=dev), q_tail=torch.empty(H, 0, D, dtype=dt, device=dev),
                kmax=torch.empty(Hkv, 0, D, dtype=dt, device=dev), kmin=torch.empty(Hkv, 0, D, dtype=dt, device=dev))


@dataclass
class LongHeadsState:
    """Per-sample state (``new_state``): per layer a list of per-row states, plus diagnostics."""

    cfg: LongHeadsSettings
    n_pad: list[int]  # left-padding slots per row
    stock_until: list[int]  # per row: queries below this use ordinary attention (cfg.stock_until or cfg.fit_until)
    rows: dict[int, list[_Row]] = field(default_factory=dict)
    pending: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    slots_seen: dict[int, int] = field(default_factory=dict)  # cache slots processed per layer
    rope_local: tuple[torch.Tensor, torch.Tensor] | None = None  # cos/sin [w, D] of positions 0..w-1 (fp32)
    rope_disp: tuple[torch.Tensor, torch.Tensor] | None = None  # cos/sin [K, D] of angles d*w, d = 0..K-1
    rope_window_mean: tuple[torch.Tensor, torch.Tensor] | None = None  # mean cos/sin [D] over angles 0..K*w-1
    lexical: list[ChunkRanking] | None = None  # per row: its prompt's chunks ranked (tail_selection="lexical")
    isolated: list[range] | None = None  # per row: the run of chunks read after chunk 0 alone (isolate_retrieved)
    trace: list[dict[str, Any]] | None = None  # selections, when tracing is on (tests)
    rotations: dict[torch.dtype, torch.Tensor] = field(default_factory=dict)
    count_pairs: bool = False

    def rope_at(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin ``[*positions.shape, D]`` (fp32) of the model's own RoPE at ``positions``."""
        flat = positions.reshape(1, -1)
        cos, sin = self.cfg.rotary(torch.zeros(1, dtype=torch.float32, device=flat.device), flat)
        return cos[0].float().view(*positions.shape, -1), sin[0].float().view(*positions.shape, -1)

    def local_keys(self, keys: torch.Tensor, chunks: torch.Tensor, pos0: int) -> torch.Tensor:
        """Locally rotated keys ``R(m)·k_raw`` of whole chunks, derived from the model's cached keys.

        ``keys [..., w, D]`` are the cache's keys of chunks ``chunks`` (shape ``[...]``), i.e. ``R(c·w + m +
        pos0)·k_raw``; rotating them back by ``c·w + pos0`` gives ``R(m)·k_raw`` exactly up to rounding (RoPE
        rotations compose), so no second copy of the keys is kept: memory stays at the stock model's.
        """
        cos, sin = self.rope_at(chunks * self.cfg.w + pos0)  # [..., D]
        acc = torch.promote_types(keys.dtype, torch.float32)
        k = keys.to(acc)
        cos, sin = cos.to(acc).unsqueeze(-2), sin.to(acc).unsqueeze(-2)
        return (k * cos - rotate_half(k) * sin).to(keys.dtype)  # R(-θ)·k

    def count_block(self, queries: int, chunks: int) -> None:
        """Diagnostics: one selective block of ``queries`` queries that read ``chunks`` chunks."""
        st = self.stats
        st["blocks"] += 1
        st["queries"] += queries
        st["chunks_sum"] += chunks
        st["chunks_max"] = max(st["chunks_max"], chunks)

    def rotation(self, dtype: torch.dtype) -> torch.Tensor:
        """``[D, K*D]``: the matrices of R(d·w), d = 0..K-1, side by side (``x @ M_d == R(d·w)·x``)."""
        if dtype not in self.rotations:
            self.rotations[dtype] = rotation_matrices(*self.rope_disp, dtype)
        return self.rotations[dtype]
    # Diagnostics per selective block (sums over blocks): distinct (chunk, displacement) pairs and distinct
    # chunks per selection group, the work of the block is queries x chunks x w.
    stats: dict[str, Any] = field(default_factory=lambda: {"blocks": 0, "queries": 0, "pairs_sum": 0.0,
                                                           "pairs_max": 0.0, "chunks_sum": 0,
                                                           "chunks_max": 0})


@dataclass(eq=False)
class LongHeads(Intervention):
    """LongHeads: each head attends to its own top-scoring context chunks (training-free long context)."""

    name = "longheads"

    chunk_size: int = field(default=256, metadata={"help": "chunk size w in tokens"})
    atten_length: int | None = field(default=None, metadata={
        "help": "tokens per head (K = atten_length / chunk_size chunks); default min(4096, trained length), "
                "a multiple of chunk_size"})
    begin_selective: int | None = field(default=None, metadata={
        "help": "positions below this use full attention (default: atten_length)"})
    gqa_selection: str = field(default="query_head", metadata={
        "help": "select chunks per 'query_head' (default) or per 'kv_head' (group scores summed)"})
    include_self: bool = field(default=True, metadata={
        "help": "a prefill query sees its own key (False = the official code's prefill quirk)"})
    query_block: int | None = field(default=None, metadata={
        "help": "prefill queries per block (default: chunk_size)"})
    layers: list[int] | None = field(default=None, metadata={"help": "layers (default: all)"})
    prefill_selection: str = field(default="recent", metadata={
        "help": "prompt tokens before the exact tail: 'recent' (default) attend to chunk 0 and the last K-1 "
                "chunks, no scores (sink + sliding window); 'block' shares one summary-scored selection per "
                "query block; 'token': per-query summary-scored selection (official)"})
    exact_tail: int = field(default=32, metadata={
        "help": "last prompt tokens that select per token with tail_selection (decoding always does)"})
    tail_selection: str = field(default="lexical", metadata={
        "help": "chunk score for the exact tail and every decoding step: 'lexical' (default) = the prompt chunks "
                "sharing the most rare token ids with the prompt's last exact_tail tokens (where a question sits; "
                "BM25 idf weights), the same chunks for every head, fixed once the prompt is read; "
                "'max_key_bound' = an upper bound of the chunk's largest un-rotated query-key product from "
                "per-chunk key max/min (reads 2 vectors per chunk); 'max_key' = that largest product itself "
                "(reads every key for every step and head); 'summary' = the official chunk-summary score"})
    tail_recent: int | None = field(default=None, metadata={
        "help": "chunks right before the previous one that the exact tail and decoding always keep (a local "
                "window, as InfLLM's local tokens); the other K-3-tail_recent slots go to the top-scored older "
                "chunks. Default: round(0.6 * (K-3)), i.e. 8 of 13 at K = 16; 0: all K-3 by score (official)"})
    score_rope: str = field(default="none", metadata={
        "help": "RoPE in the max-key scores: 'none' (default) = the position-free product q·k, i.e. the logit at "
                "distance 0; 'window_mean' = the logit averaged over the distances 0..atten_length-1 a selected key "
                "can sit at (q replaced by mean_d R(d)·q: high-frequency RoPE pairs average out, low-frequency "
                "ones keep their weight)"})
    fit_margin: int | None = field(default=None, metadata={
        "help": "a row whose prompt fits in the model's trained length uses ordinary attention until its position "
                "passes the trained length by fit_margin tokens: inside the trained length LongHeads is the stock "
                "model, the answer included (default: chunk_size; 0: selection from max(B, atten_length) on for "
                "every prompt, as the official code)"})
    isolate_retrieved: bool | None = field(default=None, metadata={
        "help": "the tokens of the answer's best-ranked scored chunk (with the scored chunks adjacent to it) attend to "
                "chunk 0 and those chunks only while the prompt is read, as if the retrieved passage followed the "
                "sink (a prompt that fits in the trained length is not changed). Needs tail_selection='lexical' and "
                "prefill_selection='recent'; default (None): on exactly then, off otherwise"})
    trace: bool = field(default=False, metadata={"help": "record every selection in the state (tests, analysis)"})
    pair_stats: bool = field(default=False, metadata={
        "help": "count distinct (chunk, displacement) pairs per block in the state's stats (a sort per block)"})

    # ------------------------------------------------------------------ bind
    def bind(self, model: ModelInfo) -> Binding:
        cfg = model.text_config
        trained = int(getattr(cfg, "max_position_embeddings", 0) or 0)
        w = check_int("longheads.chunk_size", self.chunk_size, low=1)
        atten = self.atten_length
        if atten is None:
            cap = min(DEFAULT_ATTEN_LENGTH, trained) if trained else DEFAULT_ATTEN_LENGTH
            atten = (cap // w) * w
        if isinstance(atten, bool) or not isinstance(atten, int) or atten < 3 * w or atten % w:
            raise ConfigError("longheads.atten_length", f"{atten!r} must be a multiple of chunk_size={w} with at "
                              "least 3 chunks (chunk 0, previous and current are always kept)",
                              f"{3 * w}, {4 * w}, ... (multiples of {w})")
        if trained and atten > trained:
            raise ConfigError("longheads.atten_length", f"{atten} exceeds the model's trained length {trained}: "
                              "re-indexed positions would leave the trained range", f"<= {trained}")
        # Default B = atten_length (the official code's). B = the trained length was measured and rejected: the
        # answer to a prompt of the trained length then sits past B and sees atten_length tokens of a context the
        # prompt saw whole (docs/methods/longheads.md, "Where selection starts").
        begin = atten if self.begin_selective is None else self.begin_selective
        if isinstance(begin, bool) or not isinstance(begin, int) or begin < 0 or (trained and begin > trained):
            raise ConfigError("longheads.begin_selective", f"{begin!r} must be an integer in [0, trained length]",
                              f"0..{trained}" if trained else ">= 0")
        check_choice("longheads.prefill_selection", self.prefill_selection, PREFILL_CHOICES)
        check_int("longheads.exact_tail", self.exact_tail, low=0)
        check_choice("longheads.tail_selection", self.tail_selection, TAIL_CHOICES)
        check_choice("longheads.gqa_selection", self.gqa_selection, GQA_CHOICES)
        check_choice("longheads.score_rope", self.score_rope, SCORE_ROPE_CHOICES)
        if self.score_rope != "none" and self.tail_selection in ("summary", "lexical"):
            raise ConfigError("longheads.score_rope", f"{self.score_rope!r} applies to the max-key scores only; "
                              f"tail_selection={self.tail_selection!r} reads no query-key products",
                              f"'none' with tail_selection={self.tail_selection!r}")
        if self.tail_selection == "lexical" and self.exact_tail < 1:
            raise ConfigError("longheads.exact_tail", "tail_selection='lexical' scores chunks against the prompt's "
                              "last exact_tail tokens; 0 leaves it no query", ">= 1 with tail_selection='lexical'")
        check_bool("longheads.include_self", self.include_self)
        check_bool("longheads.trace", self.trace)
        # The retrieved chunks are known before the prompt is read only with lexical scores, and only the "recent"
        # prompt reading has a window to shrink; None (the default) turns isolation on exactly then.
        isolable = self.tail_selection == "lexical" and self.prefill_selection == "recent"
        isolate = isolable if self.isolate_retrieved is None else check_bool("longheads.isolate_retrieved",
                                                                             self.isolate_retrieved)
        if isolate and not isolable:
            raise ConfigError("longheads.isolate_retrieved", "the retrieved chunks are known before the prompt is "
                              "read only with tail_selection='lexical', and only the 'recent' prompt reading has a "
                              f"window to shrink (got tail_selection={self.tail_selection!r}, prefill_selection="
                              f"{self.prefill_selection!r})", "None (default), False, or True with "
                              "tail_selection='lexical' and prefill_selection='recent'")
        check_bool("longheads.pair_stats", self.pair_stats)
        tr = round(0.6 * (atten // w - 3)) if self.tail_recent is None else self.tail_recent
        if isinstance(tr, bool) or not isinstance(tr, int) or not 0 <= tr <= atten // w - 3:
            raise ConfigError("longheads.tail_recent", f"{tr!r} must be an integer in [0, K-3] "
                              f"(K = atten_length / chunk_size = {atten // w})", f"0..{atten // w - 3}")
        qb = w if self.query_block is None else check_int("longheads.query_block", self.query_block, low=1)
        margin = w if self.fit_margin is None else check_int("longheads.fit_margin", self.fit_margin, low=0)
        layers = list(range(model.num_layers)) if self.layers is None else check_int_list(
            "longheads.layers", self.layers, low=0, high=model.num_layers - 1)
        self._check_model(model, layers)
        settings = LongHeadsSettings(
            w=w, atten=atten, K=atten // w, begin=begin, qb=qb, tail_recent=tr, score_rope=self.score_rope,
            # Queries below max(B, atten_length) select every chunk, i.e. ordinary attention (module docs).
            stock_until=max(begin, atten),
            # A prompt that fits runs as the stock model, and so does its answer for fit_margin tokens past the
            # trained length (a short extrapolation the stock model makes too): LongHeads is for going beyond it.
            fit_until=trained + margin if trained and margin else 0, trained=trained,
            uses_summaries=self.prefill_selection in ("token", "block") or self.tail_selection == "summary",
            uses_bounds=self.tail_selection == "max_key_bound", uses_lexical=self.tail_selection == "lexical",
            isolate=isolate,
            num_heads=model.num_heads, num_kv=model.num_kv_heads, head_dim=model.head_dim,
            rotary=rotary_embedding(model), qk_targets=tuple(model.query_key_targets()),
            split_query_key=model.split_query_key)
        return Binding({Site.LINEAR: frozenset(layers), Site.ATTENTION: frozenset(layers)},
                       linear_targets=settings.qk_targets, resolved=settings)

    @staticmethod
    def _check_model(model: ModelInfo, layers: list[int]) -> None:
        cfg = model.text_config
        rope = getattr(cfg, "rope_parameters", None) or {}
        rope_type = rope.get("rope_type") if isinstance(rope, dict) else None
        if rope_type != "default" or "mrope_section" in rope:
            raise UnsupportedModelError(
                f"longheads needs plain RoPE (rope_type 'default'), but {type(model.model).__name__} has "
                f"rope_parameters={rope!r}. Scaled, per-layer-type or multimodal (M-RoPE) rotary embeddings are not "
                "supported: the chunk re-indexing assumes one rotation per position.")
        rot = getattr(model.text_model, "rotary_emb", None)
        if rot is None or getattr(rot, "mrope_section", None) is not None:
            raise UnsupportedModelError("longheads needs a text model with a plain `rotary_emb` module")
        first = model.attentions[layers[0]]
        for attr in ("q_norm", "k_norm"):
            if getattr(first, attr, None) is not None:
                raise UnsupportedModelError(
                    f"longheads captures raw queries/keys at q_proj/k_proj, but this model applies `{attr}` "
                    "between the projection and RoPE (Gemma3/Qwen3 style); not supported")
        types = model.layer_types()
        sliding = [i for i in layers if types[i] != "full_attention"]
        if sliding:
            raise UnsupportedModelError(
                f"longheads needs every value in the cache, but layers {sliding} use sliding-window attention")
        no_rope = [i for i in layers if not getattr(model.attentions[i], "use_rope", True)]
        if no_rope:  # SmolLM3 style (config.no_rope_layers): re-indexing positions is meaningless there
            raise UnsupportedModelError(
                f"longheads re-indexes RoPE positions, but layers {no_rope} apply no rotary embedding "
                "(no_rope_layers); choose `layers` among the others or use another method")
        check_rotation(model, rot, first)


    # ------------------------------------------------------------------ state
    def new_state(self, sample: SampleInfo) -> LongHeadsState:
        regions = sample.regions
        pad = regions == int(Region.PADDING)
        n_pad = pad.sum(dim=1).tolist()
        for b, n in enumerate(n_pad):
            if n and not bool(pad[b, :n].all()):
                raise NotImplementedError("longheads supports left padding only (padding slots must come first)")
        cfg: LongHeadsSettings = sample.resolved
        prompt = [sample.prompt_length - int(n) for n in n_pad]
        stock_until = [max(cfg.stock_until, cfg.fit_until) if n <= cfg.trained else cfg.stock_until for n in prompt]
        state = LongHeadsState(cfg=cfg, n_pad=[int(n) for n in n_pad], stock_until=stock_until,
                               trace=[] if self.trace else None, count_pairs=self.trace or self.pair_stats)
        device = sample.input_ids.device
        w, K = cfg.w, cfg.K
        probe = torch.zeros(1, dtype=torch.float32, device=device)
        pos = torch.arange(w, device=device)[None]
        cos, sin = cfg.rotary(probe, pos)
        state.rope_local = (cos[0].float(), sin[0].float())
        cos, sin = cfg.rotary(probe, (torch.arange(K, device=device) * w)[None])
        state.rope_disp = (cos[0].float(), sin[0].float())
        if cfg.score_rope == "window_mean":
            cos, sin = cfg.rotary(probe, torch.arange(K * w, device=device)[None])
            state.rope_window_mean = (cos[0].double().mean(0).float(), sin[0].double().mean(0).float())
        if cfg.uses_lexical:
            state.lexical = [ChunkRanking(lexical_chunk_scores(sample.input_ids[b, n:].tolist(), w, self.exact_tail))
                             for b, n in enumerate(state.n_pad)]
            if cfg.isolate:
                state.isolated = [self._retrieved(cfg, ranking, n, fits=until > cfg.stock_until)
                                  for ranking, n, until in zip(state.lexical, prompt, stock_until)]
        return state

    @staticmethod
    def _retrieved(cfg: LongHeadsSettings, ranking: ChunkRanking, prompt_length: int, fits: bool) -> range:
        """The chunks isolate_retrieved reads on their own: the best-ranked chunk of the first answer token's scored
        slots, with the slot chunks adjacent to it (a passage that straddles a chunk boundary stays whole). The
        slots are the K−3−tail_recent best-ranked of chunks 1 .. c−2−tail_recent (c = the answer's chunk; later ones
        are its local window) that share a question id, ties to the newer chunk as in
        :class:`~.chunk_scores.ChunkRanking`. Empty for a prompt that fits."""
        slots = cfg.K - 3 - cfg.tail_recent
        if fits or slots <= 0:
            return range(0)
        return ranking.best_run(prompt_length // cfg.w - 2 - cfg.tail_recent, slots)

    def linear_output(self, ctx: HookContext, state: LongHeadsState, target: str, inputs: torch.Tensor,
                      output: torch.Tensor) -> None:
        state.pending.setdefault(ctx.layer, {})[target] = output.detach()
        return None

    # ------------------------------------------------------------------ attention
    def attention(self, call: AttnCall, state: LongHeadsState) -> torch.Tensor:
        layer, fwd = call.layer, call.forward
        cfg = state.cfg
        pending = state.pending.pop(layer, None)
        if pending is None or any(t not in pending for t in cfg.qk_targets):
            raise RuntimeError(f"longheads: the {list(cfg.qk_targets)} outputs of this forward were not captured")
        past, q_len = fwd.past_length, call.q_len
        seen = state.slots_seen.get(layer, 0)
        if past != seen:
            raise NotImplementedError(f"longheads: the cache went from {seen} to {past} slots (cropped or "
                                      "replayed cache: assisted decoding / beam search are not supported)")
        state.slots_seen[layer] = past + q_len
        if call.k_len != fwd.total_length:
            raise NotImplementedError("longheads needs a dynamic cache holding every slot of the layer")
        if past > 0:
            new_pad = fwd.tracker.regions[:, past:past + q_len] == int(Region.PADDING)
            if bool(new_pad.any()):
                raise NotImplementedError("longheads: padding inside a cached forward is not supported")

        B, H, D = call.batch_size, cfg.num_heads, cfg.head_dim
        q_flat, k_flat = cfg.split_query_key(pending)
        q_raw = q_flat.reshape(B, q_len, H, D)
        k_raw = k_flat.reshape(B, q_len, cfg.num_kv, D)
        rows = state.rows.get(layer)
        if rows is None:
            rows = state.rows[layer] = [_empty_row(call) for _ in range(B)]
            if state.lexical is not None:
                for b in range(B):
                    rows[b].lexical = state.lexical[b]
                    rows[b].isolated = state.isolated[b] if state.isolated is not None else range(0)

        # 1. Update every row's state (keys, query tail, summaries of chunks completed by this forward).
        first_real, first_pos = [], []
        for b in range(B):
            i0 = max(0, state.n_pad[b] - past)  # first real query of this forward in row b
            first_real.append(i0)
            first_pos.append(rows[b].length)
            self._append(call, state, rows[b], b, q_raw[b, i0:], k_raw[b, i0:])

        # 2. Exact pass-through when no query needs selection.
        last_pos = [first_pos[b] + (q_len - first_real[b]) - 1 for b in range(B)]
        if all(last < until and not self._isolated_in(rows[b], first_pos[b], last + 1, state.cfg.w)
               for b, (last, until) in enumerate(zip(last_pos, state.stock_until))):
            return call.stock()

        out = call.query.new_zeros(B, q_len, H, D)
        for b in range(B):
            i0 = first_real[b]
            n_new = q_len - i0
            if n_new <= 0:
                continue
            out[b, i0:] = self._row_attention(call, state, rows[b], b, q_raw[b, i0:], first_pos[b], n_new, i0)
        return out

    # ------------------------------------------------------------------ state updates
    def _local(self, state: LongHeadsState, x: torch.Tensor, start: int) -> torch.Tensor:
        """``R(j mod w)·x_j`` for x ``[S, heads, D]`` at positions start.., returned as ``[heads, S, D]``."""
        idx = torch.arange(start, start + x.shape[0], device=x.device) % state.cfg.w
        cos, sin = state.rope_local
        xt = x.transpose(0, 1).to(torch.promote_types(x.dtype, torch.float32))  # rotate in fp32 (or wider)
        out = apply_rope(xt, cos[idx].to(xt.dtype), sin[idx].to(xt.dtype))
        return out.to(x.dtype).contiguous()

    def _append(self, call: AttnCall, state: LongHeadsState, row: _Row, b: int, q_raw: torch.Tensor,
                k_raw: torch.Tensor) -> None:
        n = q_raw.shape[0]
        if n == 0:
            return
        cfg = state.cfg
        start, w = row.length, cfg.w
        if row.pos0 is None:
            row.pos0 = _position_offset(call, state, b, k_raw[0])
        need = start + n
        if cfg.uses_bounds:
            row.kmax, row.kmin = update_key_bounds(row.kmax, row.kmin, k_raw, start, w)
        row.length = need
        done = need // w - row.n_summ  # chunks completed by this forward
        if not cfg.uses_summaries:  # "recent" prompt selection with max-key scores never reads a summary
            row.n_summ += max(done, 0)
            return
        q_loc = self._local(state, q_raw, start)  # [H, n, D]
        tail = torch.cat([row.q_tail, q_loc], dim=1) if row.q_tail.shape[1] else q_loc
        if done > 0:
            c0 = row.n_summ
            n_tok = done * w
            first = state.n_pad[b] + c0 * w
            value = call.value[b, :, first:first + n_tok]
            chunks = torch.arange(c0, c0 + done, device=value.device)
            keys = call.key[b, :, first:first + n_tok].reshape(cfg.num_kv, done, w, -1)
            k_loc = state.local_keys(keys, chunks[None, :], row.pos0).reshape(cfg.num_kv, n_tok, -1)
            summ = self._summaries(tail[:, :n_tok], k_loc, value, call.scaling, row.summ.dtype, w)  # [H, done, D]
            row.summ = grow(row.summ, row.n_summ + done, 4)
            row.summ[:, row.n_summ:row.n_summ + done] = summ
            row.n_summ += done
            tail = tail[:, n_tok:]
        # Copy the short remainder: a view would keep the whole prefill's query tensor alive.
        row.q_tail = tail.clone() if done > 0 else tail

    def _summaries(self, q_loc: torch.Tensor, k_loc: torch.Tensor, value: torch.Tensor, scaling: float,
                   out_dtype: torch.dtype, w: int, batch_chunks: int = 64) -> torch.Tensor:
        """Chunk summaries of complete chunks (:func:`~hookkit.methods.chunk_scores.chunk_summaries`); a method so
        that a benchmark can swap the summary rule (bench/longheads_scores.py)."""
        return chunk_summaries(q_loc, k_loc, value, scaling, out_dtype, w, batch_chunks)

    # ------------------------------------------------------------------ attention of one row
    def _row_attention(self, call: AttnCall, state: LongHeadsState, row: _Row, b: int, q_raw: torch.Tensor,
                       first_pos: int, n_new: int, i0: int) -> torch.Tensor:
        """Output ``[n_new, H, D]`` for the real queries of row b (positions first_pos .. first_pos+n_new-1)."""
        H, D, w = state.cfg.num_heads, state.cfg.head_dim, state.cfg.w
        out = call.query.new_empty(n_new, H, D)
        n_pad = state.n_pad[b]
        positions_end = first_pos + n_new
        n_stock = max(0, min(positions_end, state.stock_until[b]) - first_pos)
        if n_stock:
            out[:n_stock] = self._stock_rows(call, b, i0, n_pad, first_pos, n_stock)
            if self._isolated_in(row, first_pos, first_pos + n_stock, w):
                self._isolate_stock_rows(call, row, b, i0, n_pad, first_pos, n_stock, w, out)
        exclude_self = (not self.include_self) and call.forward.is_prefill
        value_flat = call.value[b].reshape(-1, D)  # [Hkv * total, D]
        key_b = call.key[b]  # [Hkv, total, D]: the model's cached (RoPE-rotated) keys
        total = call.value.shape[2]
        # The exact tail (the last exact_tail prompt tokens, or the whole forward when decoding) selects per token
        # with tail_selection; the prompt before it with prefill_selection.
        tail_from = positions_end - self.exact_tail if n_new > 1 else first_pos
        p = first_pos + n_stock
        while p < positions_end:
            c = p // w
            p_end = min(positions_end, (c + 1) * w, p + state.cfg.qb)
            if p < tail_from < p_end:
                p_end = tail_from
            if p_end <= tail_from:
                score = {"block": "shared", "token": "prompt_summary", "recent": "recent"}[self.prefill_selection]
            else:
                score = self.tail_selection
            sl = slice(p - first_pos, p_end - first_pos)
            qr = q_raw[sl].transpose(0, 1)  # [H, Qb, D]
            ql = self._local(state, q_raw[sl], p)  # [H, Qb, D]
            offs = torch.arange(p, p_end, device=qr.device) - c * w
            out[sl] = self._selective_block(state, row, qr, ql, c, offs, key_b, value_flat, total, n_pad,
                                            call.scaling, exclude_self, b, call.layer, p, score)
            p = p_end
        return out

    def _stock_rows(self, call: AttnCall, b: int, i0: int, n_pad: int, first_pos: int, n: int) -> torch.Tensor:
        """Ordinary causal attention (true positions, the model's rotated q/k) for n queries from first_pos."""
        q = call.query[b:b + 1, :, i0:i0 + n]
        k_end = n_pad + first_pos + n
        k = call.key[b:b + 1, :, n_pad:k_end]
        v = call.value[b:b + 1, :, n_pad:k_end]
        if n == 1 or first_pos == 0:
            mask = None  # decode: every key; prefill from 0: q_len == k_len -> sdpa's causal path
        else:  # several queries after a cached prefix: lower-right aligned causal mask
            qpos = torch.arange(first_pos, first_pos + n, device=q.device)[:, None]
            mask = (torch.arange(k.shape[2], device=q.device)[None] <= qpos)[None, None]
        return call.sdpa(q, k, v, mask)[0]

    @staticmethod
    def _isolated_in(row: _Row, lo: int, hi: int, w: int) -> bool:
        """Whether positions lo .. hi−1 of the row hold a token of an isolated chunk."""
        run = row.isolated
        return bool(run) and run.start * w < hi and run.stop * w > lo

    @staticmethod
    def _isolate_stock_rows(call: AttnCall, row: _Row, b: int, i0: int, n_pad: int, first_pos: int, n: int, w: int,
                            out: torch.Tensor) -> None:
        """isolate_retrieved below B: the rows of the isolated run attend to chunk 0 and to the run up to themselves,
        at their true positions (inside the trained length), overwriting ``out [n, H, D]``. Called only when the
        rows overlap the run."""
        run = row.isolated
        lo, hi = max(first_pos, run.start * w), min(first_pos + n, run.stop * w)
        keys = torch.cat([torch.arange(n_pad, n_pad + w), torch.arange(n_pad + run.start * w, n_pad + hi)])
        keys = keys.to(call.key.device)
        q = call.query[b:b + 1, :, i0 + lo - first_pos:i0 + hi - first_pos]
        k, v = call.key[b:b + 1, :, keys], call.value[b:b + 1, :, keys]
        qpos = torch.arange(lo, hi, device=q.device)
        allowed = (keys - n_pad)[None] <= qpos[:, None]  # chunk 0 whole, the isolated run causally
        out[lo - first_pos:hi - first_pos] = call.sdpa(q, k, v, allowed[None, None])[0]

    def _select(self, state: LongHeadsState, row: _Row, q_raw: torch.Tensor, c: int, score: str,
                key_b: torch.Tensor, n_pad: int) -> torch.Tensor:
        """Top-(K−3) scored chunk ids among 1..c−2, sorted ascending, ``[G, Qb, K−3]`` (G = selection groups).

        ``score``: ``"summary"`` (exact tail, decoding) or ``"prompt_summary"`` (prompt before the tail): raw
        query · chunk summary, per query (official, §1.3 b); ``"recent"``: no score; ``"shared"``: the same
        with the block's mean raw query, one selection for the whole block; ``"max_key"``: per query, the chunk's
        largest un-rotated dot product ``q_raw · k_raw`` over its keys (:func:`~.chunk_scores.max_key_scores`);
        ``"max_key_bound"``: an upper bound of that maximum from the chunk's per-dimension key max and min
        (:func:`~.chunk_scores.bound_scores`), which reads two vectors per chunk instead of every key.
        """
        K, Qb = state.cfg.K, q_raw.shape[1]
        G = state.cfg.num_kv if self.gqa_selection == "kv_head" else state.cfg.num_heads  # selection groups
        if state.rope_window_mean is not None and score in ("max_key", "max_key_bound"):
            # score_rope="window_mean": (R(d)·q)·k averaged over the distances d = 0..K·w-1 of the re-indexed
            # layout is (mean_d R(d)·q)·k, since a rotation is linear: one transformed query, the same max-key
            # machinery. A RoPE pair of period p << K·w averages to ~0 (it says nothing about a key at an unknown
            # distance); pairs with periods beyond the window keep most of their weight.
            cos, sin = state.rope_window_mean
            acc = torch.promote_types(q_raw.dtype, torch.float32)
            q_raw = apply_rope(q_raw.to(acc), cos.to(acc), sin.to(acc))
        if score == "recent":  # the K-3 chunks before the previous one: no scores, chunk 0 + the last K-1 chunks
            recent = torch.arange(c - K + 2, c - 1, device=q_raw.device)
            return recent.view(1, 1, -1).expand(G, Qb, -1)
        if score == "lexical":  # one ranking for every head and query: no kv_head sum needed
            scores = row.lexical.rank(c, q_raw.device).view(1, 1, -1).expand(G, Qb, -1).clone()
        elif score == "max_key":
            scores = self._max_key_scores(state, row, q_raw, c, key_b, n_pad)
        elif score == "max_key_bound":
            scores = bound_scores(q_raw, row.kmax[:, 1:c - 1], row.kmin[:, 1:c - 1])
        else:
            cand = row.summ[:, 1:c - 1]  # [H, c-2, D]
            q = q_raw.to(cand.dtype)
            if score == "shared":
                q = q.mean(dim=1, keepdim=True)
            scores = torch.matmul(q, cand.transpose(1, 2))  # [H, Qb|1, c-2], raw query, no scale (§1.3 b)
        if self.gqa_selection == "kv_head" and score != "lexical":
            scores = scores.view(state.cfg.num_kv, -1, *scores.shape[1:]).sum(dim=1)
        if state.cfg.tail_recent and score == self.tail_selection:
            scores = self._keep_local_window(state, scores, c)
        top = torch.topk(scores, K - 3, dim=-1).indices.sort(dim=-1).values + 1
        return top.expand(-1, Qb, -1) if score == "shared" else top

    def _keep_local_window(self, state: LongHeadsState, scores: torch.Tensor, c: int) -> torch.Tensor:
        """Exact tail and decoding: the tail_recent chunks before the previous one are always kept (their score
        set to +inf; ``scores`` is a fresh tensor on every path), the remaining slots go to the best-scored older
        chunks (bench/longheads_gated.py overrides it)."""
        scores[..., max(0, c - 2 - state.cfg.tail_recent):] = float("inf")
        return scores

    def _max_key_scores(self, state: LongHeadsState, row: _Row, q_raw: torch.Tensor, c: int, key_b: torch.Tensor,
                        n_pad: int) -> torch.Tensor:
        """:func:`~hookkit.methods.chunk_scores.max_key_scores` of chunks 1..c−2, with the locally rotated keys
        derived from the cache (``key_b``) a few chunks at a time: no copy of the keys."""
        w, num_kv = state.cfg.w, state.cfg.num_kv

        def local_keys(lo: int, hi: int) -> torch.Tensor:
            cached = key_b[:, n_pad + lo * w:n_pad + hi * w].reshape(num_kv, hi - lo, w, -1)
            return state.local_keys(cached, torch.arange(lo, hi, device=key_b.device)[None, :], row.pos0)

        return max_key_scores(q_raw, state.rope_local, num_kv, c, local_keys)

    def _selective_block(self, state: LongHeadsState, row: _Row, q_raw: torch.Tensor, q_loc: torch.Tensor, c: int,
                         offs: torch.Tensor, key_b: torch.Tensor, value_flat: torch.Tensor, total: int, n_pad: int,
                         scaling: float, exclude_self: bool, b: int, layer: int, p0: int, score: str) -> torch.Tensor:
        """LongHeads attention for queries of chunk c (c ≥ K), per-query selections. Returns ``[Qb, H, D]``."""
        top = self._select(state, row, q_raw, c, score, key_b, n_pad)  # [G, Qb, K-3]
        G, Qb = top.shape[:2]
        sel = torch.cat([top.new_zeros(G, Qb, 1), top, top.new_full((G, Qb, 1), c - 1)], dim=-1)  # [G, Qb, K-1]
        if state.trace is not None:
            if score == "recent":  # what the block reads: chunk 0, the window (shorter for an isolated chunk), c
                window = torch.arange(self._window_start(state, row, c), c + 1, device=sel.device)
                chunks = torch.cat([sel.new_zeros(1), window]).expand(G, Qb, -1)
            else:
                chunks = torch.cat([sel, sel.new_full((G, Qb, 1), c)], dim=-1)
            state.trace.append({"layer": layer, "row": b, "positions": list(range(p0, p0 + Qb)), "chunks": chunks})
        if score == "recent":
            return self._attend_recent(state, row, q_loc, c, offs, key_b, value_flat, total, n_pad, scaling,
                                       exclude_self)
        return self._attend(state, row, q_loc, sel, c, offs, key_b, value_flat, total, n_pad, scaling, exclude_self)

    def _attend_recent(self, state: LongHeadsState, row: _Row, q_loc: torch.Tensor, c: int, offs: torch.Tensor,
                       key_b: torch.Tensor, value_flat: torch.Tensor, total: int, n_pad: int, scaling: float,
                       exclude_self: bool) -> torch.Tensor:
        """:meth:`_attend` for a block with ``prefill_selection="recent"``: a sink plus a sliding window.

        Every query of the block selects chunk 0 and chunks c−K+2 … c−1, plus its own chunk c. Ranked, chunk c' ≥
        c−K+2 sits at displacement d = c − c': its true distance. So the window is ordinary causal attention over
        one slice of the cache with the query at its true angle ``c·w + p₀`` on ``q_loc`` (relative trick of
        :meth:`_attend_one`): no gather, no rotated copy of the keys. Chunk 0 sits at d = K−1, i.e. the query at
        angle ``(K−1)·w + p₀`` against chunk 0's cached keys. Both parts go through the fused kernel in the cache's
        dtype and are merged by their log-sum-exps. Returns ``[Qb, H, D]``.
        """
        H, Qb, D = q_loc.shape
        w, Hkv, dev = state.cfg.w, state.cfg.num_kv, q_loc.device
        r = H // Hkv
        first = self._window_start(state, row, c)  # the window's first chunk (c-K+2: chunk 0 sits at d = K-1)
        acc = torch.promote_types(q_loc.dtype, torch.float32)
        cos, sin = state.rope_at(torch.tensor([c * w, (c - first + 1) * w], device=dev) + row.pos0)  # [2, D] fp32
        q = q_loc.to(acc)
        q_win, q_sink = (apply_rope(q, cos[i].to(acc), sin[i].to(acc)).to(q_loc.dtype).reshape(Hkv, 1, r * Qb, D)
                         for i in (0, 1))
        lo, hi = n_pad + first * w, n_pad + c * w + int(offs[-1]) + 1  # up to the block's last query
        values = value_flat.view(Hkv, total, D)
        kpos = torch.arange(hi - lo, device=dev) - (c - first) * w  # key offset from chunk c's start
        allowed = (kpos[None] < offs[:, None]) if exclude_self else (kpos[None] <= offs[:, None])  # [Qb, n]
        mask = torch.zeros(Qb, hi - lo, dtype=q_loc.dtype, device=dev).masked_fill(~allowed,
                                                                                   torch.finfo(q_loc.dtype).min)
        out_w, lse_w = sdpa_with_lse(q_win, key_b[:, lo:hi][:, None], values[:, lo:hi][:, None],
                                     mask.repeat(r, 1)[None, None], scaling)
        out_s, lse_s = sdpa_with_lse(q_sink, key_b[:, n_pad:n_pad + w][:, None],
                                     values[:, n_pad:n_pad + w][:, None], None, scaling)
        out = merge_by_lse(torch.stack([out_s, out_w]), torch.stack([lse_s, lse_w]), dim=0)  # [Hkv, 1, r*Qb, D]
        n = c - first + 2  # chunk 0, the window, the current chunk: K with the library's window
        state.count_block(Qb, n)
        if state.count_pairs:  # every selected chunk at one displacement, plus the current chunk
            state.stats["pairs_sum"] += n
            state.stats["pairs_max"] = max(state.stats["pairs_max"], n)
        return out.to(q_loc.dtype).view(H, Qb, D).transpose(0, 1)

    def _window_start(self, state: LongHeadsState, row: _Row, c: int) -> int:
        """First window chunk of a "recent" block in chunk c (bench/longheads_anchored.py overrides it): c−K+2, or
        the first isolated chunk for an isolated chunk (chunk 0 then sits right before the isolated run)."""
        return row.isolated.start if c in row.isolated else c - state.cfg.K + 2

    def _attend(self, state: LongHeadsState, row: _Row, q_loc: torch.Tensor, sel: torch.Tensor, c: int,
                offs: torch.Tensor, key_b: torch.Tensor, value_flat: torch.Tensor, total: int, n_pad: int,
                scaling: float, exclude_self: bool) -> torch.Tensor:
        """Attention of a block of queries of chunk c over their own selections, without a loop per query.

        ``sel [G, Qb, K-1]``: every query's selected complete chunks, sorted (chunk 0, scored chunks, chunk c-1);
        the current chunk c comes on top. The i-th selected chunk sits d = K-1-i chunks before the query's chunk
        in the re-indexed layout, so it scores ``(R(d·w)·q_loc)·k_loc`` (relative trick): each query needs at
        most K rotated variants, keys are never re-rotated.

        The block is computed chunk by chunk: for every chunk that at least one query of the block selected
        (queries of a block mostly agree on chunks but not on their ranks), one attention of all the block's
        queries, each with its own rotated variant, against that chunk's w keys — one batched fused SDPA call
        that also returns the log-sum-exp. Queries that did not select a chunk get weight 0, and the per-chunk
        results are merged exactly with their log-sum-exps (as flash attention merges key blocks). Work is
        Qb x (chunks used by the block) x w, memory O(Qb·chunks·(w + D)), independent of the context length.
        """
        if q_loc.shape[1] == 1:
            return self._attend_one(state, row, q_loc, sel, c, offs, key_b, value_flat, total, n_pad, scaling,
                                    exclude_self)
        H, Qb, D = q_loc.shape
        G, K, w, dev = sel.shape[0], state.cfg.K, state.cfg.w, q_loc.device
        r = H // G  # query heads per selection group (1 for per-query-head selection)
        R = r * Qb  # query rows per group
        # 1. Chunks used by each group in this block, and each query's displacement d for each of them.
        present = torch.zeros(G, c, dtype=torch.bool, device=dev)
        present.scatter_(1, sel.reshape(G, -1), True)
        counts = present.sum(dim=1)
        U = int(counts.max())
        order = torch.argsort((~present).to(torch.int8), dim=1, stable=True)[:, :U]  # used chunk ids first
        lookup = torch.zeros(G, c, dtype=torch.long, device=dev)
        lookup.scatter_(1, order, torch.arange(U, device=dev).expand(G, U))
        u_idx = lookup.gather(1, sel.reshape(G, -1)).view(G, Qb, K - 1)
        d_of_rank = (K - 1) - torch.arange(K - 1, device=dev)
        dq = torch.full((G, U, Qb), -1, dtype=torch.long, device=dev)  # -1: the query did not select the chunk
        dq.scatter_(1, u_idx.transpose(1, 2), d_of_rank[None, :, None].expand(G, K - 1, Qb))
        # 2. Rotated query variants R(d·w)·q_loc for d = 0..K-1, as one matmul with the stacked rotation matrices
        #    (a rotation is linear: far cheaper on CPU than elementwise RoPE over K variants), then the variant
        #    each (chunk, query) needs, gathered row by row.
        qrot = torch.matmul(q_loc.reshape(H * Qb, D), state.rotation(q_loc.dtype)).view(H * Qb * K, D)
        heads = torch.arange(G, device=dev)[:, None] * r + torch.arange(r, device=dev)  # [G, r]
        row_idx = ((heads[:, None, :, None] * Qb + torch.arange(Qb, device=dev)) * K
                   + dq.clamp_min(0)[:, :, None, :])  # [G, U, r, Qb]
        rows = qrot.index_select(0, row_idx.reshape(-1)).view(G * U, 1, R, D)
        # 3. Keys and values of the used chunks, from the model's cache; keys rotated back to local positions.
        kv_of_group = torch.arange(G, device=dev) // (G // state.cfg.num_kv)
        pos = order[:, :, None] * w + torch.arange(w, device=dev)  # [G, U, w], complete chunks only
        flat = (kv_of_group[:, None, None] * total + n_pad + pos).reshape(-1)
        cached = key_b.reshape(-1, D).index_select(0, flat).view(G, U, w, D)
        keys = state.local_keys(cached, order, row.pos0)
        vals = value_flat.index_select(0, flat)
        out_p, lse_p = sdpa_with_lse(rows, keys.view(G * U, 1, w, D), vals.view(G * U, 1, w, D), None, scaling)
        # 4. The current chunk (d = 0, causal; without the query itself when include_self=False at prefill).
        cpos = (c * w + torch.arange(w, device=dev)).clamp_max(row.length - 1)  # future slots: masked
        cur = state.local_keys(key_b.index_select(1, n_pad + cpos)[:, None], torch.tensor([c], device=dev),
                               row.pos0)[:, 0]  # [Hkv, w, D]
        ck = cur[kv_of_group]  # [G, w, D]
        cv = value_flat.view(state.cfg.num_kv, total, D).index_select(1, n_pad + cpos)[kv_of_group]
        kpos = torch.arange(w, device=dev)[None, :]
        allowed = (kpos < offs[:, None]) if exclude_self else (kpos <= offs[:, None])  # [Qb, w]
        cmask = torch.zeros(Qb, w, dtype=q_loc.dtype, device=dev).masked_fill(~allowed, torch.finfo(q_loc.dtype).min)
        out_c, lse_c = sdpa_with_lse(q_loc.view(G, 1, R, D), ck[:, None], cv[:, None],
                                     cmask.repeat(r, 1)[None, None], scaling)
        # 5. Exact merge of the partial attentions with their log-sum-exps (weight 0 where a query did not select
        #    the chunk), as flash attention merges key blocks.
        acc = torch.promote_types(q_loc.dtype, torch.float32)
        valid = (dq >= 0)[:, :, None, :].expand(G, U, r, Qb).reshape(G, U, R)
        lse_p = lse_p.view(G, U, R).to(acc).masked_fill(~valid, float("-inf"))
        lse_c = lse_c.view(G, R).to(acc)
        top = torch.maximum(lse_p.amax(dim=1), lse_c)  # [G, R]
        wp = torch.exp(lse_p - top[:, None])
        wc = torch.exp(lse_c - top)
        merged = torch.einsum("gur,gurd->grd", wp, out_p.view(G, U, R, D).to(acc))
        merged = (merged + wc[..., None] * out_c.view(G, R, D).to(acc)) / (wp.sum(dim=1) + wc)[..., None]
        state.count_block(Qb, U + 1)
        if state.count_pairs:  # distinct (chunk, displacement) pairs: diagnostics only (a sort per block)
            st = state.stats
            n_pairs = 1 + _distinct_per_row(dq)
            st["pairs_sum"] += n_pairs
            st["pairs_max"] = max(st["pairs_max"], n_pairs)
        return merged.to(q_loc.dtype).view(G, r, Qb, D).reshape(H, Qb, D).transpose(0, 1)

    def _attend_one(self, state: LongHeadsState, row: _Row, q_loc: torch.Tensor, sel: torch.Tensor, c: int,
                    offs: torch.Tensor, key_b: torch.Tensor, value_flat: torch.Tensor, total: int, n_pad: int,
                    scaling: float, exclude_self: bool) -> torch.Tensor:
        """:meth:`_attend` for a single query per head (every decoding step): rotate the query, not the keys.

        The score of a selected chunk c' at displacement d is ``(R(d·w)·q_loc)·k_loc`` with ``k_loc =
        R(-(c'·w + pos0))·k_cache`` (:meth:`LongHeadsState.local_keys`). Rotations compose, so it equals
        ``(R((c' + d)·w + pos0)·q_loc)·k_cache``: one rotated query per chunk instead of w rotated keys, and the
        cached keys are read as they are.

        The chunks every group keeps right before the current one (the previous chunk and the ``tail_recent``
        local window) sit at their true distance, d = c − c', so all of them and the current chunk share the one
        angle ``c·w + pos0``: they are read as one slice of the cache (no gather, no copy). Only chunk 0 and the
        scored chunks are gathered. Each part goes through the fused SDPA kernel in the cache's dtype (fp32
        accumulation inside, as the stock model's attention; no fp32 copy of the keys), and the parts are merged
        exactly with their log-sum-exps. Returns ``[1, H, D]``.
        """
        H, _, D = q_loc.shape
        G, K, w, dev = sel.shape[0], state.cfg.K, state.cfg.w, q_loc.device
        Hkv = state.cfg.num_kv
        r = H // G
        acc = torch.promote_types(q_loc.dtype, torch.float32)
        chunks = sel[:, 0]  # [G, K-1], ascending: the i-th sits d = K-1-i chunks before chunk c
        n_win = 1 + state.cfg.tail_recent  # the previous chunk + the local window, where every group kept them
        window = torch.arange(c - n_win, c, device=dev)
        if not bool((chunks[:, K - 1 - n_win:] == window).all()):
            n_win = 0
        n_far = K - 1 - n_win  # gathered: chunk 0 and the scored chunks
        far = chunks[:, :n_far]
        d = (K - 1) - torch.arange(n_far, device=dev)
        angles = torch.cat([(far + d) * w, far.new_full((G, 1), c * w)], dim=1) + row.pos0  # [G, n_far + 1]
        cos, sin = state.rope_at(angles)  # fp32; the last column is the angle of the window and current chunk
        qv = apply_rope(q_loc.reshape(G, 1, r, D).to(acc), cos[:, :, None].to(acc), sin[:, :, None].to(acc))
        qv = qv.to(q_loc.dtype)  # [G, n_far + 1, r, D]
        kv_of_group = torch.arange(G, device=dev) // (G // Hkv)
        pos = far[:, :, None] * w + torch.arange(w, device=dev)  # [G, n_far, w]
        flat = (kv_of_group[:, None, None] * total + n_pad + pos).reshape(-1)
        keys = key_b.reshape(-1, D).index_select(0, flat).view(G * n_far, 1, w, D)
        vals = value_flat.index_select(0, flat).view(G * n_far, 1, w, D)
        out_far, lse_far = sdpa_with_lse(qv[:, :n_far].reshape(G * n_far, 1, r, D), keys, vals, None, scaling)
        # window + current chunk up to the query itself (or before it, include_self=False at prefill): a view
        lo, hi = n_pad + (c - n_win) * w, n_pad + c * w + int(offs[0]) + (0 if exclude_self else 1)
        lse, outs = [lse_far.view(G, n_far, r)], [out_far.view(G, n_far, r, D)]
        if hi > lo:  # empty only for a lone prefill query at its chunk's start with include_self=False, no window
            k_win = key_b[:, lo:hi][:, None]  # [Hkv, 1, n, D]
            v_win = value_flat.view(Hkv, total, D)[:, lo:hi][:, None]
            out_win, lse_win = sdpa_with_lse(qv[:, n_far].reshape(Hkv, 1, (G // Hkv) * r, D), k_win, v_win,
                                             None, scaling)
            lse.append(lse_win.view(G, 1, r))
            outs.append(out_win.view(G, 1, r, D))
        out = merge_by_lse(torch.cat(outs, dim=1), torch.cat(lse, dim=1), dim=1)  # parts along dim 1 -> [G, r, D]
        state.count_block(1, K)
        return out.to(q_loc.dtype).reshape(H, 1, D).transpose(0, 1)


def _position_offset(call: AttnCall, state: LongHeadsState, b: int, k_first: torch.Tensor) -> int:
    """The RoPE position the model gave row ``b``'s first real token (0 when it counts positions from the first
    real token, as ``generate`` does; the number of left-padding slots when it counts cache slots).

    Read from the call's ``position_ids`` when the model passes them, and checked against the cache either way:
    the cached key must be the raw key rotated to that position, or locally rotated keys derived from the cache
    would be wrong.
    """
    n_pad = state.n_pad[b]
    i0 = max(0, n_pad - call.forward.past_length)
    candidates = []
    position_ids = call.kwargs.get("position_ids")
    if isinstance(position_ids, torch.Tensor) and position_ids.dim() == 2:
        candidates.append(int(position_ids[min(b, position_ids.shape[0] - 1), i0]))
    candidates += [0, n_pad]
    cached = call.key[b, :, call.forward.past_length + i0].float()  # [Hkv, D]
    acc = torch.promote_types(k_first.dtype, torch.float32)
    for p in dict.fromkeys(candidates):
        cos, sin = state.rope_at(torch.tensor([p], device=cached.device))
        rotated = apply_rope(k_first.to(acc), cos.to(acc), sin.to(acc)).float()
        if torch.allclose(rotated, cached, rtol=1e-2, atol=1e-2 * float(cached.abs().max()) + 1e-6):
            return p
    raise NotImplementedError("longheads: the cached keys are not the raw keys rotated at any position it can "
                              f"identify (tried {sorted(set(candidates))}); this model applies RoPE differently")


def _distinct_per_row(dq: torch.Tensor) -> float:
    """Mean over groups of the number of distinct (chunk, displacement) pairs used (dq: [G, U, Qb], -1 = unused)."""
    s = dq.sort(dim=2).values
    new = (s[:, :, 1:] != s[:, :, :-1]) & (s[:, :, 1:] >= 0)
    first = (s[:, :, :1] >= 0)
    return float((new.sum() + first.sum()).item()) / dq.shape[0]
