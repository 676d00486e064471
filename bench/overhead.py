"""Registry overhead: stock sdpa vs attached-neutral vs each site, on tiny-llama and SmolLM2.

    python bench/overhead.py --models tiny-llama smollm2 --rounds 7 --out bench/results/overhead.json

Configurations (batch 1, greedy, fixed prompt and number of new tokens):

* ``stock``: the model on sdpa, nothing attached;
* ``attached_neutral``: a session attached with hookkit's per-forward bookkeeping (token regions, generate wrapper)
  and the hookkit attention function installed on *every* text layer, with no active edit (every layer takes the
  stock sdpa path) — the fixed cost of the registry;
* one row per site with an identity edit on every layer that forces that site's real write path
  (``noop`` with ``exercise=True``): heads × 1 before ``o_proj``, a zero score bias (sdpa with a float mask),
  an identity probability edit on every query row (fp32 eager rows), the layer input returned as is, linear
  outputs × 1, logits read; and ``all_sites`` with all of them at once.

Every round runs all configurations once, in a rotated order (interleaved, so drift and background load hit all
of them alike). Reported: medians over rounds of decode tokens/s (first → last generated token) and prefill time
(start → first token), plus ratios to stock computed from the medians and the median of per-round ratios.
Timings come from hookkit.generation.StepTimer (a logits processor stamping each step), never from tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import hookkit
from hookkit.generation import generate
from hookkit.methods.noop import Noop

SITES = ["head_output", "score_bias", "probs", "layer_input", "attn_input", "linear", "logits"]


def configs() -> dict[str, list]:
    table: dict[str, list] = {"stock": [], "attached_neutral": [Noop(sites=["score_bias"], exercise=False)]}
    for site in SITES:
        table[site] = [Noop(sites=[site], exercise=True)]
    table["all_sites"] = [Noop(sites=SITES, exercise=True)]
    return table


def prompt_of_length(tokenizer, n_tokens: int) -> str:
    """A prompt whose chat-formatted token count is close to ``n_tokens`` (KJV text, deterministic)."""
    from hookkit.evals.corpus import load_kjv_text

    words = load_kjv_text()[:20000].split()
    lo, hi = 1, len(words)
    while lo < hi:  # binary search on the number of words
        mid = (lo + hi + 1) // 2
        text = " ".join(words[:mid])
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


def run_model(name: str, rounds: int, prompt_tokens: int, new_tokens: int, dtype: str) -> dict:
    model, tokenizer = hookkit.load(name, dtype=dtype)
    prompt = prompt_of_length(tokenizer, prompt_tokens)
    gen = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    table = configs()
    names = list(table)
    samples: dict[str, list[dict]] = {n: [] for n in names}
    generate(model, tokenizer, [prompt], **gen)  # warm-up (allocator, kernels)
    reference_ids = None
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for cfg in order:
            if table[cfg]:
                with hookkit.attach(model, table[cfg]):
                    out = generate(model, tokenizer, [prompt], **gen)
            else:
                out = generate(model, tokenizer, [prompt], **gen)
            if reference_ids is None and cfg == "stock":
                reference_ids = out.new_token_ids[0]
            samples[cfg].append({"decode_tokens_per_s": out.timings["decode_tokens_per_s"],
                                 "prefill_s": out.timings["prefill_s"], "same_tokens": None})
            samples[cfg][-1]["same_tokens"] = out.new_token_ids[0] == reference_ids if reference_ids else None
        print(f"  {name} round {r + 1}/{rounds} done", file=sys.stderr)
    stock_tps = [s["decode_tokens_per_s"] for s in samples["stock"]]
    stock_prefill = [s["prefill_s"] for s in samples["stock"]]
    rows = {}
    for cfg in names:
        tps = [s["decode_tokens_per_s"] for s in samples[cfg]]
        prefill = [s["prefill_s"] for s in samples[cfg]]
        rows[cfg] = {
            "decode_tokens_per_s_median": statistics.median(tps),
            "prefill_s_median": statistics.median(prefill),
            "decode_ratio_vs_stock": statistics.median(tps) / statistics.median(stock_tps),
            "decode_ratio_median_of_rounds": statistics.median(a / b for a, b in zip(tps, stock_tps)),
            "prefill_time_ratio_vs_stock": statistics.median(prefill) / statistics.median(stock_prefill),
            "same_tokens_as_stock": all(s["same_tokens"] is not False for s in samples[cfg]),
            "runs": samples[cfg],
        }
    prompt_len = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    return {"model": name, "dtype": dtype, "prompt_tokens": prompt_len, "new_tokens": new_tokens,
            "rounds": rounds, "configs": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny-llama", "smollm2"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, nargs="+", default=None,
                        help="per model (default: 64 for tiny models, 32 otherwise)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="bench/results/overhead.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {"command": " ".join(["python", *sys.argv]), "machine": {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "torch_threads": args.threads, "torch": torch.__version__,
        "load_average_at_start": os.getloadavg(), "cuda": torch.cuda.is_available()},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "models": []}
    for i, name in enumerate(args.models):
        new = (args.new_tokens[i] if args.new_tokens else (64 if name.startswith("tiny") else 32))
        results["models"].append(run_model(name, args.rounds, args.prompt_tokens, new, args.dtype))
    results["machine"]["load_average_at_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    for m in results["models"]:
        print(f"\n{m['model']} ({m['dtype']}, prompt {m['prompt_tokens']} tokens, {m['new_tokens']} new, "
              f"{m['rounds']} rounds)")
        print(f"{'config':<18}{'decode tok/s':>14}{'ratio':>8}{'prefill s':>12}{'ratio':>8}  same tokens")
        for cfg, row in m["configs"].items():
            print(f"{cfg:<18}{row['decode_tokens_per_s_median']:>14.1f}{row['decode_ratio_vs_stock']:>8.3f}"
                  f"{row['prefill_s_median']:>12.4f}{row['prefill_time_ratio_vs_stock']:>8.3f}  "
                  f"{row['same_tokens_as_stock']}")


if __name__ == "__main__":
    main()
