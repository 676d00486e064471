"""Where natural-text retrieval breaks under LongHeads: the answer's start, or the retrieval while it is written.

    python bench/longheads_forced_answer.py --niah pydoc/code/50/t0    # -> bench/results/longheads_forced_answer.json

One NIAH prompt (``hookkit eval niah``'s builder, trial K of the ``--vary-start`` grid), SmolLM2-135M-Instruct, fp32.

1. **Which heads carry the needle**, from the stock model where it answers: the prompt cut to the first 256 tokens,
   the 256 around the needle and the last 3,584 (``bench/longcontext.py``'s ``stock-cut-needle``), followed by the
   needle's sentence as the answer (teacher forcing). Per (layer, head) and answer token: the attention mass on the
   needle's tokens, with RoPE at the true positions.
2. **LongHeads on the full prompt, the same answer forced**: for every answer token, the rank of that token under
   LongHeads' next-token distribution (0 = its greedy choice), and, per (layer, head), the rank of the needle's
   chunk among the older chunks (those outside the local window) under candidate chunk scores: max-key (``max``),
   log-sum-exp over the chunk (``lse``), each with the query at distance 0 (``zero``: hookkit's ``max_key``) or
   averaged over the window's distances (``window``: ``score_rope="window_mean"``).

A chunk is retrieved when its rank is below the scored slots (5 with the defaults). Reported per answer token: the
top-10 stock heads' hit rate, and the hit rate over all heads weighted by the stock attention mass on the needle.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import hookkit  # noqa: E402
from bench.longcontext import CUT_HEAD, cut_prompt, needle_window_start  # noqa: E402
from hookkit import compat  # noqa: E402
from hookkit.evals.niah.task import NiahTask  # noqa: E402
from hookkit.methods.longheads import LongHeads, apply_rope, rotate_half  # noqa: E402

SCORES = ("zero_max", "zero_lse", "window_max", "window_lse")


class RankProbe(LongHeads):
    """LongHeads (as configured) that records, at every decoding step, the needle chunk's rank under each score."""

    needle_chunk: int = 0
    recording: bool = False
    step: list

    def _select(self, state, row, q_raw, c, score, key_b, n_pad):  # type: ignore[override]
        top = super()._select(state, row, q_raw, c, score, key_b, n_pad)
        if not (self.recording and q_raw.shape[1] == 1):
            return top
        q = q_raw.float()
        H, _, D = q.shape
        Hkv, w, K = state.cfg.num_kv, state.cfg.w, state.cfg.K
        cached = key_b[:, n_pad:n_pad + c * w].float()
        cos, sin = state.rope_at(torch.arange(c * w, device=cached.device) + row.pos0)
        k_raw = cached * cos - rotate_half(cached) * sin  # R(-p)·k: the raw keys
        k_raw = k_raw.repeat_interleave(H // Hkv, 0).view(H, c, w, D)[:, 1:c - 1]
        older = c - 2 - state.cfg.tail_recent  # chunks 1..older compete for the scored slots
        ranks = {}
        for rope_name, distances in (("zero", torch.zeros(1)), ("window", torch.arange(K * w))):
            cd, sd = state.rope_at(distances)
            q_at = apply_rope(q, cd.mean(0), sd.mean(0))  # mean_d R(d)·q
            logits = torch.einsum("hqd,hcwd->hcw", q_at, k_raw)[:, :older]
            for agg in ("max", "lse"):
                s = logits.amax(-1) if agg == "max" else torch.logsumexp(logits / D ** 0.5, -1)
                ranks[f"{rope_name}_{agg}"] = (s > s[:, self.needle_chunk - 1:self.needle_chunk]).sum(-1).tolist()
        self.step.append(ranks)
        return top


def stock_needle_mass(model, ids: list[int], span: tuple[int, int], answer: list[int]) -> torch.Tensor:
    """``[layers, heads, answer tokens]``: stock attention mass on ``span`` from the position before each answer
    token (one forward of prompt + answer; queries and keys captured at q_proj / k_proj, RoPE at true positions)."""
    captured: dict[tuple[int, str], torch.Tensor] = {}
    layers = model.model.layers
    hooks = [getattr(layer.self_attn, name).register_forward_hook(
        lambda m, a, out, i=i, name=name: captured.__setitem__((i, name), out.detach()))
        for i, layer in enumerate(layers) for name in ("q_proj", "k_proj")]
    full = torch.tensor([ids + answer])
    try:
        with torch.no_grad():
            model(input_ids=full, logits_to_keep=1)
    finally:
        for h in hooks:
            h.remove()
    cfg = model.config
    H, Hkv = cfg.num_attention_heads, cfg.num_key_value_heads
    D = cfg.hidden_size // H
    n = full.shape[1]
    cos, sin = model.model.rotary_emb(torch.zeros(1), torch.arange(n)[None])
    queries = torch.arange(len(ids) - 1, n - 1)
    mass = []
    for i in range(len(layers)):
        q = apply_rope(captured[(i, "q_proj")][0].view(n, H, D).transpose(0, 1), cos[0], sin[0])[:, queries]
        k = apply_rope(captured[(i, "k_proj")][0].view(n, Hkv, D).transpose(0, 1), cos[0], sin[0])
        att = torch.einsum("hqd,hkd->hqk", q, k.repeat_interleave(H // Hkv, 0)) / D ** 0.5
        att = att.masked_fill(torch.arange(n)[None, None] > queries[None, :, None], float("-inf")).softmax(-1)
        mass.append(att[:, :, span[0]:span[1]].sum(-1))
    return torch.stack(mass)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--niah", default="pydoc/code/50/t0", help="HAYSTACK/NEEDLE/DEPTH/tK")
    p.add_argument("--length", type=int, default=16384)
    p.add_argument("--slots", type=int, default=5, help="scored slots: a rank below this is a retrieval")
    p.add_argument("--begin-selective", type=int, default=None, help="LongHeads begin_selective (default: the method's)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "longheads_forced_answer.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    model, tok = hookkit.load("smollm2", dtype="float32")
    haystack, needle_name, depth, trial = args.niah.split("/")
    k = int(trial.removeprefix("t"))
    task = NiahTask(tok, [args.length], [float(depth)], haystack=haystack, needle=needle_name, trials=k + 1,
                    vary_start=True)
    prompt = task.build_prompt(task.samples()[k])
    ids = list(prompt.input_ids)
    lo, hi = prompt.needle_token_span
    answer = tok(task.needle.needle.strip(), add_special_tokens=False)["input_ids"]
    pieces = [tok.decode([x]) for x in answer]
    t0 = time.perf_counter()
    cut = cut_prompt(ids, (lo, hi))  # bench/longcontext.py's stock-cut-needle prompt
    mid = needle_window_start(len(ids), (lo, hi))
    mass = stock_needle_mass(model, cut, (CUT_HEAD + lo - mid, CUT_HEAD + hi - mid), answer)  # [L, H, len(answer)]

    iv = RankProbe(begin_selective=args.begin_selective)
    iv.needle_chunk, iv.step = lo // 256, []
    steps = []
    with torch.no_grad(), hookkit.attach(model, iv):
        out = model(input_ids=torch.tensor([ids]), use_cache=True, logits_to_keep=1)
        free_first = tok.decode([int(out.logits[0, -1].argmax())])
        cache, logits = compat.cache_from_output(out), out.logits[0, -1]
        iv.recording = True
        for j, token in enumerate(answer):
            logp = logits.log_softmax(-1)
            steps.append({"token": pieces[j], "rank_under_longheads": int((logp > logp[token]).sum())})
            if j + 1 == len(answer):
                break
            iv.step = []
            out = model(input_ids=torch.tensor([[token]]), **compat.with_cache(model, cache), use_cache=True)
            cache, logits = compat.cache_from_output(out), out.logits[0, -1]
            ranks = {name: torch.tensor([layer[name] for layer in iv.step]) for name in SCORES}  # [L, H]
            m = mass[:, :, j + 1]  # stock mass when predicting the next answer token
            top10 = torch.topk(m.flatten(), 10).indices
            steps[-1].update({
                "next": pieces[j + 1], "stock_top_head": [int(top10[0]) // m.shape[1], int(top10[0]) % m.shape[1]],
                "stock_top10_mass": round(float(m.flatten()[top10].sum()), 3),
                "top10_heads_hit": {n: round(float((r.flatten()[top10] < args.slots).float().mean()), 2)
                                    for n, r in ranks.items()},
                "all_heads_hit": {n: round(float((r < args.slots).float().mean()), 3) for n, r in ranks.items()},
                "mass_weighted_hit": {n: round(float((m * (r < args.slots)).sum() / m.sum()), 3)
                                      for n, r in ranks.items()}})
    result = {"command": " ".join(["python", *sys.argv]), "niah": args.niah, "length": args.length,
              "needle_chunk": lo // 256, "slots": args.slots, "begin_selective": args.begin_selective, "free_first_token": free_first,
              "seconds": round(time.perf_counter() - t0, 1), "torch": torch.__version__, "steps": steps}
    Path(args.out).write_text(json.dumps(result, indent=1, ensure_ascii=False))
    for s in steps:
        print(json.dumps(s, ensure_ascii=False))


if __name__ == "__main__":
    main()
