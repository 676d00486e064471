"""Why LongHeads' defaults score chunks differently from the official code: one passkey trial, five selection rules.

    python bench/longheads_scores.py                      # -> bench/results/longheads_scores.json

SmolLM2-135M-Instruct, fp32, passkey trial 2 at 8192 tokens (seeds as in ``hookkit eval passkey``: needle in chunk
7 of 32). ``begin_selective = 7936``: every prompt token but the last chunk attends normally, so only the last 256
prompt tokens and decoding select chunks, and any failure is the selection's. Rules (``--rules`` to pick):

* ``official``: the official summary score (``tail_selection="summary"``);
* ``fixed_with_needle``: one fixed set of 16 chunks, the needle's included, for every (layer, head);
* ``official_plus_needle``: the official selection, with the needle's chunk swapped in where a head missed it;
* ``raw_key_summaries``: summaries built from un-rotated keys (query and summary in the same space);
* ``max_key``: hookkit's default for the exact tail and decoding (largest un-rotated q·k in the chunk).

The two middle rules need the needle's position, so they are diagnostics (oracles), not methods.

A natural-text NIAH prompt instead of the passkey (``--niah HAYSTACK/NEEDLE/DEPTH``)::

    python bench/longheads_scores.py --length 16384 --niah pydoc/code/50 --rules defaults,defaults_plus_needle \
        --tail-selection max_key_bound --new-tokens 16 --out bench/results/longheads_scores_niah16k.json

Long prompts, with the method's own prefill (every prompt token past B selective)::

    python bench/longheads_scores.py --length 32768 --trial 1 --rules defaults,defaults_plus_needle \
        --prefill-selection block --tail-recent 0 --out bench/results/longheads_scores_32k.json

* ``defaults``: LongHeads as configured; records, per max-key selection call, how many query heads missed the
  needle's chunk for the call's last query;
* ``defaults_plus_needle``: the same, with the needle's chunk forced into every tail and decoding selection;
* ``recent_plus_needle``: tail and decoding keep chunk 0, the needle's chunk and the most recent chunks only (no
  score-selected chunk besides the needle's).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import hookkit  # noqa: E402
from hookkit.evals.decoding import greedy_generate  # noqa: E402
from hookkit.evals.passkey.task import PasskeyTask  # noqa: E402
from hookkit.methods.longheads import LongHeads, apply_rope  # noqa: E402

RULES = ("official", "fixed_with_needle", "official_plus_needle", "raw_key_summaries", "max_key")
# Rules for long prompts, run with the method's own prefill (``--begin-selective`` unset): hookkit's defaults, and
# the defaults with the needle's chunk forced into the exact tail's and decoding's selections where a head missed it.
# ``everywhere_plus_needle``: the needle's chunk also replaces the oldest chunk of every prompt token's selection once
# it is complete, so the whole recent part of the prompt sees it (as a stock model does on a short prompt made of
# the first chunk, the needle's span and the recent tokens: ``bench/longcontext.py niah --methods stock-cut-needle``).
LONG_RULES = ("defaults", "defaults_plus_needle", "recent_plus_needle", "everywhere_plus_needle", "pooled_tail")
# ``pooled_tail`` (a candidate score, SnapKV's observation window, Li et al. 2024): the exact tail's queries (the
# question) pool their attention over the whole context, position-free (softmax of q_raw·k_raw/sqrt(D) over the
# keys of chunks 1..c-2, summed per chunk and over the tail's queries, per query head); the tail and every decoding
# step then keep chunk 0, the local window and the best chunks by that pooled mass, fixed once the prompt is read.


class Diagnostic(LongHeads):
    """LongHeads with the tail's chunk selection replaced by one of the diagnostic rules."""

    rule: str = "official"
    needle_chunk: int = 0
    misses: list  # per tail/decoding selection: (layer-free) count of query heads whose selection missed the needle

    def bind(self, model):  # type: ignore[override]
        binding = super().bind(model)
        self.rotary = binding.resolved.rotary  # for the raw-key summaries below (a diagnostic, one model per run)
        return binding

    def _pooled_select(self, state, row, q_raw, c, key_b, n_pad):
        H, Qb, D = q_raw.shape
        cfg = state.cfg
        w, Hkv = cfg.w, cfg.num_kv
        if Qb > 1 or getattr(row, "pooled", None) is None:  # the prompt's exact tail: pool its queries' attention
            n = (c - 2) * w
            pos = torch.arange(w, w + n, device=key_b.device)
            cos, sin = state.rope_at(pos + row.pos0)
            k_raw = apply_rope(key_b[:, n_pad + w:n_pad + w + n].float(), cos, -sin)  # R(-p)·k_cache: raw keys
            q = q_raw.float().reshape(Hkv, -1, D)  # query heads of a KV group share its keys
            attn = torch.softmax(q @ k_raw.transpose(1, 2) / D ** 0.5, dim=-1)  # [Hkv, r*Qb, n]
            mass = attn.view(H, Qb, c - 2, w).sum(dim=(1, 3))  # [H, c-2]
            old = getattr(row, "pooled", None)
            if old is not None:
                mass[:, :old.shape[1]] += old
            row.pooled = mass
        pooled = row.pooled
        scores = pooled.new_zeros(H, c - 2)
        scores[:, :pooled.shape[1]] = pooled[:, :c - 2]
        scores = scores[:, None].expand(H, Qb, c - 2).clone()
        scores[..., max(0, c - 2 - cfg.tail_recent):] = float("inf")
        return torch.topk(scores, cfg.K - 3, dim=-1).indices.sort(dim=-1).values + 1

    def _select(self, state, row, q_raw, c, score, key_b, n_pad):  # type: ignore[override]
        if self.rule == "pooled_tail" and score in ("max_key", "max_key_bound"):
            top = self._pooled_select(state, row, q_raw, c, key_b, n_pad)
        else:
            top = super()._select(state, row, q_raw, c, score, key_b, n_pad)
        if score in ("max_key", "max_key_bound"):
            hit = (top == self.needle_chunk).any(-1)  # [G, Qb]
            self.misses.append([int((~hit[:, -1]).sum()), hit.shape[0]])
        if self.rule == "recent_plus_needle" and score in ("max_key", "max_key_bound"):
            K = state.cfg.K
            ids = sorted({self.needle_chunk, *range(c - K + 3, c - 1)})[-(K - 3):]
            return torch.tensor(ids, device=top.device).view(1, 1, -1).expand(top.shape[0], top.shape[1], -1)
        if self.rule == "fixed_with_needle":
            others = [x for x in range(1, c - 1) if x != self.needle_chunk][:: max(1, (c - 3) // 12)][:12]
            fixed = torch.tensor(sorted([self.needle_chunk, *others]), device=top.device)
            return fixed.view(1, 1, -1).expand_as(top).clone()
        if self.rule == "everywhere_plus_needle" and self.needle_chunk < c - 1:
            top = top.clone()  # the "recent" rule returns an expanded view
        if self.rule == "official_plus_needle" or self.rule == "everywhere_plus_needle" and self.needle_chunk < c - 1 \
                or (self.rule == "defaults_plus_needle" and score in ("max_key", "max_key_bound")):
            # the needle's chunk replaces the lowest chunk id where a selection missed it
            missing = ~(top == self.needle_chunk).any(-1, keepdim=True)
            swapped = top.clone()
            swapped[..., 0] = self.needle_chunk
            return torch.where(missing, swapped, top).sort(dim=-1).values
        return top

    def _summaries(self, q_loc, k_loc, value, scaling, out_dtype, w, batch_chunks=64):  # type: ignore[override]
        if self.rule != "raw_key_summaries":
            return super()._summaries(q_loc, k_loc, value, scaling, out_dtype, w, batch_chunks)
        H, n, D = q_loc.shape
        cos, sin = self.rotary(torch.zeros(1), torch.arange(w)[None])
        idx = torch.arange(n) % w
        k_raw = apply_rope(k_loc.float(), cos[0][idx].float(), -sin[0][idx].float())  # R(-j)·k_loc
        G = n // w

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(x.shape[0], G, w, D).transpose(0, 1).repeat_interleave(H // x.shape[0], dim=1)

        q, k, kr, v = split(q_loc), split(k_loc), split(k_raw), split(value)
        o = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), scale=scaling)
        s = o.mean(dim=2, keepdim=True)
        return F.scaled_dot_product_attention(s, k.float(), kr, scale=scaling)[:, :, 0].transpose(0, 1).to(out_dtype)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rules", default=",".join(RULES), help=f"from {RULES + LONG_RULES}")
    p.add_argument("--length", type=int, default=8192)
    p.add_argument("--trial", type=int, default=2)
    p.add_argument("--trial-seed", type=int, default=0,
                   help="passkey: base seed of the draws (hookkit eval passkey --trial-seed; 1000: the held-out set)")
    p.add_argument("--dtype", default="float32", help="float32 (default) | bfloat16 (the benchmark runs' dtype)")
    p.add_argument("--begin-selective", type=int, default=None,
                   help="default: length - 256 for the official-score rules; the method's default for LONG_RULES")
    p.add_argument("--prefill-selection", default=None,
                   help="LongHeads prefill_selection for LONG_RULES (default: the method's default)")
    p.add_argument("--tail-recent", type=int, default=None,
                   help="LongHeads tail_recent for LONG_RULES (default: the method's default)")
    p.add_argument("--tail-selection", default=None, help="long rules: max_key | max_key_bound | summary")
    p.add_argument("--niah", default=None, metavar="HAYSTACK/NEEDLE/DEPTH[/tK]",
                   help="a NIAH prompt instead of the passkey, e.g. pydoc/code/50 (hookkit eval niah's builder); "
                        "/tK: trial K of the --vary-start grid (its seeded haystack start)")
    p.add_argument("--new-tokens", type=int, default=7)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "longheads_scores.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    model, tok = hookkit.load("smollm2", dtype=args.dtype)
    if args.niah:
        from hookkit.evals.niah.task import NiahTask

        haystack, needle_name, depth, *trial = args.niah.split("/")
        k = int(trial[0].removeprefix("t")) if trial else 0
        niah = NiahTask(tok, [args.length], [float(depth)], haystack=haystack, needle=needle_name, trials=k + 1,
                        vary_start=bool(trial))
        prompt = niah.build_prompt(niah.samples()[k])
        answer = niah.needle.answer
    else:
        task = PasskeyTask(tok, [args.length], args.trial + 1, trial_seed=args.trial_seed)
        prompt = task.build_prompt(task.samples()[args.trial])
        answer = str(prompt.passkey)
    needle_chunk = prompt.needle_token_span[0] // 256
    rows = []
    for rule in args.rules.split(","):
        if rule not in RULES + LONG_RULES:
            p.error(f"--rules: unknown rule {rule!r}; allowed: {', '.join(RULES + LONG_RULES)}")
        if rule in LONG_RULES:
            chosen = {"prefill_selection": args.prefill_selection, "tail_recent": args.tail_recent,
                      "tail_selection": args.tail_selection}
            iv = Diagnostic(begin_selective=args.begin_selective, **{k: v for k, v in chosen.items() if v is not None})
        else:
            tail = "max_key" if rule == "max_key" else "summary"
            iv = Diagnostic(begin_selective=args.begin_selective or args.length - 256, prefill_selection="token",
                            tail_selection=tail, tail_recent=0)
        iv.rule, iv.needle_chunk, iv.misses = rule, needle_chunk, []
        t0 = time.perf_counter()
        with hookkit.attach(model, iv):
            out = greedy_generate(model, prompt.input_ids, args.new_tokens)
        text = tok.decode(out.new_ids)
        missed = [m for m, _ in iv.misses]
        rows.append({"rule": rule, "continuation": text, "correct": answer in text,
                     "seconds": round(time.perf_counter() - t0, 1),
                     # one entry per max-key selection call (layer by layer, prompt tail then decoding): query
                     # heads whose selection for the call's last query missed the needle's chunk
                     "max_key_calls": len(missed), "max_key_heads_missing_needle": missed,
                     "heads_per_call": iv.misses[0][1] if iv.misses else None})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "max_key_heads_missing_needle"}), flush=True)
    result = {"command": " ".join(["python", *sys.argv]), "length": args.length, "trial": args.trial,
              "trial_seed": args.trial_seed, "dtype": args.dtype,
              "answer": answer, "niah": args.niah, "needle_token_span": list(prompt.needle_token_span),
              "needle_chunk": needle_chunk, "begin_selective": args.begin_selective,
              "prefill_selection": args.prefill_selection, "tail_recent": args.tail_recent,
              "tail_selection": args.tail_selection, "torch": torch.__version__,
              "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
